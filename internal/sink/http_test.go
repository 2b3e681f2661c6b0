package sink_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/pki"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/sink/sinktest"
)

// receiver is an HTTP endpoint recording what it accepted. Each request is
// answered by the next scripted reply (status and Retry-After), then 200.
type receiver struct {
	mu       sync.Mutex
	accepted [][]byte // record lines of 2xx answers, in order
	requests []*http.Request
	bodies   [][]byte
	script   []reply
	gate     chan struct{} // when non-nil, requests wait for it to close
}

type reply struct {
	status     int
	retryAfter string
	location   string
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	gate := rc.gate
	rc.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.requests = append(rc.requests, r)
	rc.bodies = append(rc.bodies, body)
	rep := reply{status: http.StatusOK}
	if len(rc.script) > 0 {
		rep, rc.script = rc.script[0], rc.script[1:]
	}
	if rep.retryAfter != "" {
		w.Header().Set("Retry-After", rep.retryAfter)
	}
	if rep.location != "" {
		w.Header().Set("Location", rep.location)
	}
	if rep.status/100 == 2 {
		rc.accepted = append(rc.accepted, splitLines(body)...)
	}
	w.WriteHeader(rep.status)
	_, _ = io.WriteString(w, "echo of your data would be PHI\n")
}

func (rc *receiver) read(*testing.T) [][]byte {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([][]byte(nil), rc.accepted...)
}

func (rc *receiver) stall(*testing.T) func() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	g := make(chan struct{})
	rc.gate = g
	return func() {
		rc.mu.Lock()
		rc.gate = nil
		rc.mu.Unlock()
		close(g)
	}
}

func (rc *receiver) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.requests)
}

// mtlsServer starts a TLS server for h that requires a client certificate
// from a throwaway CA, and returns it with a client config for the sink.
func mtlsServer(t *testing.T, h http.Handler) (*httptest.Server, *tls.Config, pki.Files) {
	t.Helper()
	ca, err := pki.NewCA(filepath.Join(t.TempDir(), "pki"), "sink test CA")
	if err != nil {
		t.Fatal(err)
	}
	srvFiles, err := ca.IssueServer("server")
	if err != nil {
		t.Fatal(err)
	}
	cliFiles, err := ca.IssueClient("decryptd")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	if srv.TLS, err = pki.ServerConfig(srvFiles); err != nil {
		t.Fatal(err)
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	cli, err := pki.ClientConfig(cliFiles, "")
	if err != nil {
		t.Fatal(err)
	}
	return srv, cli, srvFiles
}

func writeSecret(t *testing.T, v string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHTTPContract(t *testing.T) {
	sinktest.Run(t, func(t *testing.T) sinktest.Subject {
		rc := &receiver{}
		srv, cli, _ := mtlsServer(t, rc)
		s, err := sink.NewHTTP(sink.HTTPOptions{
			Name: "http", URL: srv.URL + "/ingest", TLS: cli,
			AuthFile: writeSecret(t, "tok\n"), MaxAttempts: 2, MinBackoff: time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		return sinktest.Subject{Sink: s, Read: rc.read, Stall: rc.stall}
	})
}

// newPlain starts a plain HTTP receiver and a sink on it whose waits are
// recorded instead of spent.
func newPlain(t *testing.T, rc *receiver, opts sink.HTTPOptions) (*sink.HTTP, *[]time.Duration) {
	t.Helper()
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	opts.Name, opts.URL, opts.AllowPlainHTTP = "http", srv.URL+"/in", true
	s, err := sink.NewHTTP(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	var waits []time.Duration
	sink.SetHTTPSleep(s, func(ctx context.Context, d time.Duration) error {
		waits = append(waits, d)
		return ctx.Err()
	})
	return s, &waits
}

func TestHTTPRequest(t *testing.T) {
	rc := &receiver{}
	s, _ := newPlain(t, rc, sink.HTTPOptions{AuthFile: writeSecret(t, "  s3cr3t-token \n")})
	batch := sinktest.Records("req", 3)
	if err := s.Write(t.Context(), batch); err != nil {
		t.Fatal(err)
	}
	if rc.count() != 1 {
		t.Fatalf("%d requests, want 1", rc.count())
	}
	r, body := rc.requests[0], rc.bodies[0]
	var want bytes.Buffer
	h := sha256.New()
	for _, rec := range batch {
		want.Write(rec.JSON)
		want.WriteByte('\n')
		io.WriteString(h, rec.ID+"\n")
	}
	for _, c := range []struct{ name, got, want string }{
		{"method", r.Method, http.MethodPost},
		{"path", r.URL.Path, "/in"},
		{"content type", r.Header.Get("Content-Type"), "application/x-ndjson"},
		{"authorization", r.Header.Get("Authorization"), "Bearer s3cr3t-token"},
		{"idempotency key", r.Header.Get("Idempotency-Key"), hex.EncodeToString(h.Sum(nil))},
		{"body", string(body), want.String()},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
		}
	}
}

func TestHTTPAuthHeaderOptions(t *testing.T) {
	tests := []struct {
		name           string
		header, scheme string
		wantHeader     string
		wantValue      string
	}{
		{"default bearer", "", "", "Authorization", "Bearer k1"},
		{"api key header is raw", "X-Api-Key", "", "X-Api-Key", "k1"},
		{"explicit scheme", "Authorization", "Token", "Authorization", "Token k1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc := &receiver{}
			s, _ := newPlain(t, rc, sink.HTTPOptions{AuthFile: writeSecret(t, "k1"), AuthHeader: tc.header, AuthScheme: tc.scheme})
			if err := s.Write(t.Context(), sinktest.Records("a", 1)); err != nil {
				t.Fatal(err)
			}
			if got := rc.requests[0].Header.Get(tc.wantHeader); got != tc.wantValue {
				t.Fatalf("%s: got %q, want %q", tc.wantHeader, got, tc.wantValue)
			}
		})
	}
}

func TestHTTPAuthFileRotation(t *testing.T) {
	rc := &receiver{}
	path := writeSecret(t, "old")
	s, _ := newPlain(t, rc, sink.HTTPOptions{AuthFile: path})
	if err := s.Write(t.Context(), sinktest.Records("a", 1)); err != nil {
		t.Fatal(err)
	}
	// A new token of another length (so the change shows even on a file
	// system with coarse modification times).
	if err := os.WriteFile(path, []byte("newer-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(t.Context(), sinktest.Records("b", 1)); err != nil {
		t.Fatal(err)
	}
	if got := rc.requests[1].Header.Get("Authorization"); got != "Bearer newer-token" {
		t.Fatalf("after rotation: %q", got)
	}
}

func TestHTTPRetries(t *testing.T) {
	tests := []struct {
		name      string
		script    []reply
		maxRA     time.Duration
		wantErr   bool
		rejected  bool
		wantReqs  int
		wantWaits []time.Duration // exact waits; nil = only count them
		nWaits    int
	}{
		{name: "success", wantReqs: 1},
		{name: "503 then success", script: []reply{{status: 503}}, wantReqs: 2, nWaits: 1},
		{name: "503 with retry-after", script: []reply{{status: 503, retryAfter: "3"}}, wantReqs: 2, wantWaits: []time.Duration{3 * time.Second}},
		{name: "429 with retry-after", script: []reply{{status: 429, retryAfter: "2"}}, wantReqs: 2, wantWaits: []time.Duration{2 * time.Second}},
		{name: "429 retry-after too long", script: []reply{{status: 429, retryAfter: "120"}}, maxRA: time.Minute, wantErr: true, wantReqs: 1},
		{name: "408 retried", script: []reply{{status: 408}}, wantReqs: 2, nWaits: 1},
		{name: "500 until give up", script: []reply{{status: 500}, {status: 502}, {status: 500}, {status: 504}}, wantErr: true, wantReqs: 4, nWaits: 3},
		{name: "401 rejected", script: []reply{{status: 401}}, wantErr: true, rejected: true, wantReqs: 1},
		{name: "400 rejected", script: []reply{{status: 400}}, wantErr: true, rejected: true, wantReqs: 1},
		{name: "413 rejected", script: []reply{{status: 413}}, wantErr: true, rejected: true, wantReqs: 1},
		{name: "redirect not followed", script: []reply{{status: 307, location: "/elsewhere"}}, wantErr: true, rejected: true, wantReqs: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc := &receiver{script: tc.script}
			s, waits := newPlain(t, rc, sink.HTTPOptions{AuthFile: writeSecret(t, "SECRET-TOKEN"), MaxRetryAfter: tc.maxRA})
			err := s.Write(t.Context(), sinktest.Records("r", 2))
			if (err != nil) != tc.wantErr {
				t.Fatalf("Write: %v, want error %v", err, tc.wantErr)
			}
			if errors.Is(err, sink.ErrRejected) != tc.rejected {
				t.Fatalf("Write: %v; ErrRejected %v, want %v", err, errors.Is(err, sink.ErrRejected), tc.rejected)
			}
			if err != nil {
				var se *sink.HTTPStatusError
				if !errors.As(err, &se) {
					t.Fatalf("no HTTPStatusError in %v", err)
				}
				if strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "PHI") {
					t.Fatalf("error leaks the secret or the response: %v", err)
				}
			}
			if rc.count() != tc.wantReqs {
				t.Fatalf("%d requests, want %d", rc.count(), tc.wantReqs)
			}
			keys := map[string]bool{}
			for _, r := range rc.requests {
				keys[r.Header.Get("Idempotency-Key")] = true
				if r.URL.Path != "/in" {
					t.Fatalf("request to %s: the redirect was followed", r.URL.Path)
				}
			}
			if len(keys) != 1 {
				t.Fatalf("retries used %d idempotency keys, want 1", len(keys))
			}
			if tc.wantWaits != nil {
				if len(*waits) != len(tc.wantWaits) || (*waits)[0] != tc.wantWaits[0] {
					t.Fatalf("waits %v, want %v", *waits, tc.wantWaits)
				}
			} else if len(*waits) != tc.nWaits {
				t.Fatalf("waits %v, want %d", *waits, tc.nWaits)
			}
			for _, w := range *waits {
				if w <= 0 || w > 5*time.Second {
					t.Fatalf("wait %v outside (0, max_backoff or retry-after]", w)
				}
			}
		})
	}
}

func TestHTTPNetworkErrorRetried(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	s, err := sink.NewHTTP(sink.HTTPOptions{Name: "h", URL: "http://" + addr + "/", AllowPlainHTTP: true, MaxAttempts: 3})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	sink.SetHTTPSleep(s, func(ctx context.Context, d time.Duration) error { n++; return nil })
	err = s.Write(t.Context(), sinktest.Records("n", 1))
	if err == nil || errors.Is(err, sink.ErrRejected) || n != 2 {
		t.Fatalf("Write: %v after %d waits; want a retryable error after 2 waits", err, n)
	}
}

func TestHTTPCancelDuringBackoff(t *testing.T) {
	rc := &receiver{script: []reply{{status: 503, retryAfter: "20"}}}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	s, err := sink.NewHTTP(sink.HTTPOptions{Name: "h", URL: srv.URL, AllowPlainHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Write(ctx, sinktest.Records("c", 1)) }()
	// Cancel once the first attempt was answered: the sink is then waiting
	// out the 20 s Retry-After.
	for deadline := time.Now().Add(10 * time.Second); rc.count() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no request within 10 s")
		}
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Write: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Write kept waiting after its context was cancelled")
	}
	if rc.count() != 1 {
		t.Fatalf("%d requests, want 1", rc.count())
	}
}

func TestHTTPTLS(t *testing.T) {
	rc := &receiver{}
	srv, cli, files := mtlsServer(t, rc)
	t.Run("ca_file_and_client_cert", func(t *testing.T) {
		onlyCert := &tls.Config{Certificates: cli.Certificates, MinVersion: tls.VersionTLS12}
		s, err := sink.NewHTTP(sink.HTTPOptions{Name: "h", URL: srv.URL, TLS: onlyCert, CAFile: files.CA})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(context.Background())
		if err := s.Write(t.Context(), sinktest.Records("tls", 1)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unknown_ca", func(t *testing.T) {
		s, err := sink.NewHTTP(sink.HTTPOptions{Name: "h", URL: srv.URL, MaxAttempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(context.Background())
		err = s.Write(t.Context(), sinktest.Records("tls", 1))
		if err == nil || errors.Is(err, sink.ErrRejected) {
			t.Fatalf("Write to a server of an unknown CA: %v", err)
		}
	})
	t.Run("no_client_cert", func(t *testing.T) {
		s, err := sink.NewHTTP(sink.HTTPOptions{Name: "h", URL: srv.URL, CAFile: files.CA, MaxAttempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(context.Background())
		if err := s.Write(t.Context(), sinktest.Records("tls", 1)); err == nil {
			t.Fatal("Write without a client certificate succeeded")
		}
	})
}

func TestHTTPOptionsValidation(t *testing.T) {
	secret := writeSecret(t, "x")
	empty := writeSecret(t, " \n")
	tests := []struct {
		name string
		opts sink.HTTPOptions
		want string
	}{
		{"no name", sink.HTTPOptions{URL: "https://h/"}, "name:"},
		{"no url", sink.HTTPOptions{Name: "h"}, "url:"},
		{"plain http", sink.HTTPOptions{Name: "h", URL: "http://h/"}, "url: must be https"},
		{"ftp", sink.HTTPOptions{Name: "h", URL: "ftp://h/"}, "url:"},
		{"credentials in url", sink.HTTPOptions{Name: "h", URL: "https://u:p@h/"}, "url: must not carry credentials"},
		{"no host", sink.HTTPOptions{Name: "h", URL: "https:///x"}, "url: no host"},
		{"negative timeout", sink.HTTPOptions{Name: "h", URL: "https://h/", RequestTimeout: -1}, "request_timeout:"},
		{"backoff order", sink.HTTPOptions{Name: "h", URL: "https://h/", MinBackoff: time.Second, MaxBackoff: time.Millisecond}, "max_backoff:"},
		{"negative attempts", sink.HTTPOptions{Name: "h", URL: "https://h/", MaxAttempts: -1}, "max_attempts:"},
		{"header without file", sink.HTTPOptions{Name: "h", URL: "https://h/", AuthHeader: "X-Key"}, "auth_header:"},
		{"bad header", sink.HTTPOptions{Name: "h", URL: "https://h/", AuthFile: secret, AuthHeader: "X Key"}, "auth_header:"},
		{"missing auth file", sink.HTTPOptions{Name: "h", URL: "https://h/", AuthFile: "/nonexistent/tok"}, "auth_file:"},
		{"empty auth file", sink.HTTPOptions{Name: "h", URL: "https://h/", AuthFile: empty}, "auth_file:"},
		{"missing ca file", sink.HTTPOptions{Name: "h", URL: "https://h/", CAFile: "/nonexistent/ca"}, "ca_file:"},
		{"ca file not pem", sink.HTTPOptions{Name: "h", URL: "https://h/", CAFile: secret}, "ca_file:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sink.NewHTTP(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"7", 7 * time.Second},
		{" 7 ", 7 * time.Second},
		{"-3", 0},
		{"1.5", 0},
		{"99999999999999999999", 1 << 20 * time.Second},
		{"Fri, 02 Jan 2026 03:04:35 GMT", 30 * time.Second},
		{"Fri, 02 Jan 2026 03:00:00 GMT", 0},
		{"soon", 0},
	} {
		if got := sink.ParseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("ParseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestAuthSchemeNotDoubled(t *testing.T) {
	for _, tc := range []struct{ scheme, secret, want string }{
		{"Bearer", "abc", "Bearer abc"},
		{"Bearer", "Bearer abc", "Bearer abc"},
		{"Bearer", "bearer abc", "bearer abc"},
		{"Bearer", "Bearerabc", "Bearer Bearerabc"},
		{"", "Token xyz", "Token xyz"},
	} {
		if got := sink.WithScheme(tc.scheme, tc.secret); got != tc.want {
			t.Errorf("WithScheme(%q, %q) = %q, want %q", tc.scheme, tc.secret, got, tc.want)
		}
	}
}
