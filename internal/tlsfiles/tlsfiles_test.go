package tlsfiles

import (
	"crypto/tls"
	"path/filepath"
	"testing"

	"github.com/decryptd/decryptd/internal/pki"
)

func TestConfig(t *testing.T) {
	ca, err := pki.NewCA(t.TempDir(), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ca.IssueClient("c1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		c             Client
		reload, roots bool
		certs         int
	}{
		{"nothing: system roots", Client{}, false, false, 0},
		{"ca only", Client{CAFile: f.CA}, false, true, 0},
		{"mutual TLS: certificate re-read at each handshake", Client{CAFile: f.CA, CertFile: f.Cert, KeyFile: f.Key, ServerName: "b"}, true, true, 0},
		{"certificate, system roots", Client{CertFile: f.Cert, KeyFile: f.Key}, false, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.c.Config()
			if err != nil {
				t.Fatal(err)
			}
			if cfg.MinVersion != tls.VersionTLS12 || cfg.ServerName != tc.c.ServerName {
				t.Errorf("MinVersion %x, ServerName %q", cfg.MinVersion, cfg.ServerName)
			}
			if (cfg.GetClientCertificate != nil) != tc.reload || (cfg.RootCAs != nil) != tc.roots || len(cfg.Certificates) != tc.certs {
				t.Errorf("reload %v, roots %v, certificates %d", cfg.GetClientCertificate != nil, cfg.RootCAs != nil, len(cfg.Certificates))
			}
			if tc.reload {
				c, err := cfg.GetClientCertificate(nil)
				if err != nil || c == nil {
					t.Fatalf("GetClientCertificate: %v", err)
				}
			}
		})
	}
	if _, err := (Client{CAFile: filepath.Join(t.TempDir(), "missing")}).Config(); err == nil {
		t.Error("missing CA file: no error")
	}
}

func TestCheckAndResolve(t *testing.T) {
	if p := (Client{CertFile: "c"}).Check(); len(p) != 1 || p[0].Key != "key_file" {
		t.Errorf("cert without key: %v", p)
	}
	if p := (Client{KeyFile: "k"}).Check(); len(p) != 1 || p[0].Key != "cert_file" {
		t.Errorf("key without cert: %v", p)
	}
	c := Client{CAFile: "ca", CertFile: "/abs/c", KeyFile: "k"}
	c.ResolvePaths(func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join("/d", *p)
		}
	})
	if c.CAFile != "/d/ca" || c.CertFile != "/abs/c" || c.KeyFile != "/d/k" {
		t.Errorf("resolved %+v", c)
	}
}
