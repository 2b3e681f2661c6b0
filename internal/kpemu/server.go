package kpemu

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Server serves an Emulator on a TCP listener, over plain HTTP (Listen,
// Start) or HTTPS (ListenTLS, as the real service). Mind that the client's
// IAM token fetch ignores the transport it is given and uses
// http.DefaultTransport, so an HTTPS token endpoint needs the CA in the
// system trust store (SSL_CERT_FILE); a test that trusts the CA through a
// transport only serves the same Emulator's token endpoint on a second,
// plain Server (Serve).
type Server struct {
	*Emulator
	// URL is the base URL for kp.ClientConfig.BaseURL (no trailing slash).
	URL string
	// TokenURL is the IAM endpoint for kp.ClientConfig.TokenURL.
	TokenURL string

	srv      *http.Server
	tls      *tls.Config // nil: plain HTTP
	addr     string
	newConns atomic.Int64

	mu       sync.Mutex
	ln       net.Listener
	conns    map[net.Conn]struct{}
	refusing bool
	closed   bool
}

// Start serves a new emulator on 127.0.0.1 at an ephemeral port. The server
// closes when ctx ends or Close is called.
func Start(ctx context.Context, opts Options) (*Server, error) {
	return Listen(ctx, "127.0.0.1:0", opts)
}

// Listen serves a new emulator on addr over plain HTTP.
func Listen(ctx context.Context, addr string, opts Options) (*Server, error) {
	return Serve(ctx, New(opts), addr, nil)
}

// ListenTLS serves a new emulator on addr over HTTPS with cfg (for
// example CA.ServerConfig).
func ListenTLS(ctx context.Context, addr string, opts Options, cfg *tls.Config) (*Server, error) {
	if cfg == nil {
		return nil, errors.New("kpemu: ListenTLS needs a TLS configuration")
	}
	return Serve(ctx, New(opts), addr, cfg)
}

// Serve serves e on addr, over HTTPS when cfg is non-nil. Several Servers
// may serve one Emulator (one key store, one token set); closing any of
// them closes the Emulator's held requests.
func Serve(ctx context.Context, e *Emulator, addr string, cfg *tls.Config) (*Server, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("kpemu: listen %s: %w", addr, err)
	}
	s := &Server{
		Emulator: e,
		tls:      cfg,
		addr:     ln.Addr().String(),
		conns:    map[net.Conn]struct{}{},
	}
	s.ln = s.wrap(ln)
	s.URL = "http://" + s.addr
	if cfg != nil {
		s.URL = "https://" + s.addr
	}
	s.TokenURL = s.URL + TokenPath
	s.srv = &http.Server{
		Handler:           s.Emulator,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // resets and hangs are deliberate
		ConnState:         s.connState,
	}
	go s.srv.Serve(s.ln)
	context.AfterFunc(ctx, func() { s.Close() })
	return s, nil
}

func (s *Server) connState(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch st {
	case http.StateNew:
		s.newConns.Add(1)
		s.conns[c] = struct{}{}
	case http.StateClosed, http.StateHijacked:
		delete(s.conns, c)
	}
}

// Connections is the number of TCP connections accepted so far (IAM and
// API alike). With keep-alives, sequential calls reuse one.
func (s *Server) Connections() int64 { return s.newConns.Load() }

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.addr }

// SetRefuse closes the listener and every open connection, so new
// connections are refused (ECONNREFUSED), or reopens the listener on the
// same address.
func (s *Server) SetRefuse(on bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("kpemu: server closed")
	}
	if on == s.refusing {
		return nil
	}
	if on {
		s.refusing = true
		s.ln.Close()
		for c := range s.conns {
			c.Close()
		}
		return nil
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("kpemu: relisten %s: %w", s.addr, err)
	}
	s.ln, s.refusing = s.wrap(ln), false
	go s.srv.Serve(s.ln)
	return nil
}

func (s *Server) wrap(ln net.Listener) net.Listener {
	if s.tls == nil {
		return ln
	}
	return tls.NewListener(ln, s.tls)
}

// Close stops the server, drops every connection and frees held requests.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.Emulator.Close()
	return s.srv.Close()
}
