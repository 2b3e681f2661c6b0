package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

func TestFilesAndModes(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.IssueServer("server", "broker.example", "10.1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.IssueClient("ingest-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		mode os.FileMode
	}{
		{ca.CertFile, 0o644}, {ca.KeyFile, 0o600},
		{srv.Cert, 0o644}, {srv.Key, 0o600},
		{cli.Cert, 0o644}, {cli.Key, 0o600},
	} {
		t.Run(tc.path, func(t *testing.T) {
			st, err := os.Stat(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if got := st.Mode().Perm(); got != tc.mode {
				t.Errorf("mode %v, want %v", got, tc.mode)
			}
		})
	}
	if _, err := ca.IssueServer(".."); err == nil {
		t.Error("IssueServer(\"..\") accepted a name that escapes the directory")
	}
}

func TestServerNames(t *testing.T) {
	ca, err := NewCA(t.TempDir(), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.IssueServer("server", "broker.example", "10.1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	cert := readCert(t, srv.Cert)
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"127.0.0.1", true}, {"::1", true}, {"localhost", true},
		{"broker.example", true}, {"10.1.2.3", true},
		{"other.example", false}, {"192.0.2.1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cert.Verify(x509.VerifyOptions{DNSName: tc.name, Roots: ca.Pool()})
			if (err == nil) != tc.ok {
				t.Errorf("verify as %s: %v, want ok=%v", tc.name, err, tc.ok)
			}
		})
	}
	cli, err := ca.IssueClient("ingest-1")
	if err != nil {
		t.Fatal(err)
	}
	cc := readCert(t, cli.Cert)
	if cc.Subject.CommonName != "ingest-1" {
		t.Errorf("client CN %q", cc.Subject.CommonName)
	}
	if _, err := cc.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate does not verify for client auth: %v", err)
	}
}

func TestLoadCA(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadCA(dir); !errors.Is(err, ErrNoCA) {
		t.Fatalf("LoadCA(empty) = %v, want ErrNoCA", err)
	}
	ca, err := NewCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	again, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Certificate().Equal(ca.Certificate()) {
		t.Fatal("loaded CA differs from the one written")
	}
	// A certificate issued by the loaded CA verifies against the original.
	cli, err := again.IssueClient("x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readCert(t, cli.Cert).Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatal(err)
	}
}

// TestHandshake runs the two tls.Config helpers against each other over a
// real loopback socket: with a client certificate the handshake succeeds
// and the server sees the CN; without one the server refuses.
func TestHandshake(t *testing.T) {
	ca, err := NewCA(t.TempDir(), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	srvFiles, err := ca.IssueServer("server")
	if err != nil {
		t.Fatal(err)
	}
	cliFiles, err := ca.IssueClient("ingest-1")
	if err != nil {
		t.Fatal(err)
	}
	srvCfg, err := ServerConfig(srvFiles)
	if err != nil {
		t.Fatal(err)
	}
	good, err := ClientConfig(cliFiles, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	noCert := good.Clone()
	noCert.Certificates = nil

	for _, tc := range []struct {
		name    string
		cfg     *tls.Config
		wantErr string
	}{
		{"with client certificate", good, ""},
		{"without client certificate", noCert, "certificate required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			cn := make(chan string, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					cn <- ""
					return
				}
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					cn <- ""
					return
				}
				cn <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
				_, _ = tc.Write([]byte("x"))
			}()
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), tc.cfg)
			if err == nil {
				// TLS 1.3 reports a refused client certificate on the first read.
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, err = io.ReadFull(c, make([]byte, 1))
				c.Close()
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got := <-cn; got != "ingest-1" {
					t.Fatalf("server saw CN %q", got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(path, strings.TrimSuffix(path, ".crt")+".key")
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return c
}
