package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTLSControlAndRateLimitFlags starts the command as a fault suite
// would: HTTPS from a CA made on the spot, a rate limit, an instance
// rotation policy and the runtime fault control; then switches a 503
// outage on and off through the control endpoint.
func TestTLSControlAndRateLimitFlags(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	out, err := startCommand(ctx, []string{"-addr", "127.0.0.1:0", "-tls", "-tls-ca-out", caFile,
		"-control-addr", "127.0.0.1:0", "-rate-limit", "1000", "-rotation-policy", "3", "-real-timing"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out["base_url"], "https://127.0.0.1:") || !strings.HasPrefix(out["ca_file"], caFile) {
		t.Fatalf("output %v: want an https base_url and ca_file %s", out, caFile)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("ca_file holds no certificate")
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	policy := func() int {
		resp, err := hc.Get(out["base_url"] + "/api/v2/instance/policies?policy=rotation")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := policy(); st != http.StatusUnauthorized {
		t.Fatalf("unauthenticated request over the CA: %d, want 401 (TLS worked, auth refused)", st)
	}

	ctl, _, _ := strings.Cut(out["control_url"], " ")
	if !strings.HasPrefix(ctl, "http://127.0.0.1:") {
		t.Fatalf("control_url %q", out["control_url"])
	}
	post := func(path string) string {
		resp, err := http.Post(ctl+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
		}
		return string(b)
	}
	if got := post("/faults/503"); !strings.Contains(got, `"fail_status":503`) {
		t.Fatalf("503 preset: %s", got)
	}
	if st := policy(); st != http.StatusServiceUnavailable {
		t.Fatalf("during the 503 outage: %d", st)
	}
	post("/faults/none")
	if st := policy(); st != http.StatusUnauthorized {
		t.Fatalf("after the outage: %d, want 401 again", st)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-rotation-policy", "13"},
		{"-rate-limit", "-1"},
		{"-tls", "-tls-cert", "c.pem", "-tls-key", "k.pem"},
		{"-tls-cert", "/nonexistent/c.pem", "-tls-key", "/nonexistent/k.pem"},
	} {
		var stderr bytes.Buffer
		if code := run(context.Background(), append([]string{"-addr", "127.0.0.1:0"}, args...), io.Discard, &stderr); code != 2 {
			t.Fatalf("%v: exit %d, want 2 (%s)", args, code, stderr.String())
		}
	}
}
