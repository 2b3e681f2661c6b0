// Package tlsfiles owns the TLS client settings the configuration names by
// file (the MQTT input's, an MQTT or HTTP sink's): which keys they have,
// how they are checked, and how they become a *tls.Config. It is a leaf
// (crypto/tls and pki's PEM loading only), so the configuration, the
// inputs and every sink package share one definition.
//
// Promises: Config requires TLS 1.2 or newer; with a client certificate
// and a CA both given, the certificate and key are re-read at every
// handshake, so a rotated client certificate is used on the next
// reconnect without a restart (if re-reading fails the last good pair is
// used). Nothing here logs or prints key material.
package tlsfiles

import (
	"crypto/tls"
	"fmt"
	"sync"

	"github.com/decryptd/decryptd/internal/pki"
)

// Client names the files of a TLS client: the CA bundle to trust (empty:
// the system roots) and the client certificate and key for mutual TLS
// (both or neither); ServerName is the name expected in the server's
// certificate (empty: the URL's host).
type Client struct {
	CAFile     string `yaml:"ca_file" json:"ca_file"`
	CertFile   string `yaml:"cert_file" json:"cert_file"`
	KeyFile    string `yaml:"key_file" json:"key_file"`
	ServerName string `yaml:"server_name" json:"server_name"`
}

// IsZero reports whether nothing is set.
func (c Client) IsZero() bool { return c == Client{} }

// Problem is one problem Check found: the key (relative to the TLS
// section, "cert_file") and what is wrong.
type Problem struct{ Key, Text string }

// Check returns what is wrong without opening the files: a certificate
// without its key or a key without its certificate.
func (c Client) Check() []Problem {
	switch {
	case c.CertFile == "" && c.KeyFile != "":
		return []Problem{{"cert_file", "required when key_file is set"}}
	case c.CertFile != "" && c.KeyFile == "":
		return []Problem{{"key_file", "required when cert_file is set"}}
	}
	return nil
}

// ResolvePaths applies abs (which makes a relative path absolute) to every
// file name.
func (c *Client) ResolvePaths(abs func(*string)) {
	abs(&c.CAFile)
	abs(&c.CertFile)
	abs(&c.KeyFile)
}

// Config loads the files and returns a client configuration (TLS 1.2
// minimum): the CA bundle as RootCAs (none: system roots), the client
// certificate (re-read at each handshake when the CA is given too).
func (c Client) Config() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if c.CAFile != "" {
		pool, err := pki.LoadPool(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		cfg.RootCAs = pool
	}
	if c.CertFile == "" {
		return cfg, nil
	}
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: load %s: %w", c.CertFile, err)
	}
	if c.CAFile == "" {
		cfg.Certificates = []tls.Certificate{pair}
		return cfg, nil
	}
	r := &reloader{certFile: c.CertFile, keyFile: c.KeyFile, last: &pair}
	cfg.GetClientCertificate = r.get
	return cfg, nil
}

type reloader struct {
	certFile, keyFile string
	mu                sync.Mutex
	last              *tls.Certificate
}

func (r *reloader) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		r.last = &c
	}
	return r.last, nil
}
