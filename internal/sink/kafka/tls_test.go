package kafka

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/decryptd/decryptd/internal/pki"
	"github.com/decryptd/decryptd/internal/sink/sinktest"
)

// TestMutualTLS: the sink reaches a broker that requires a client
// certificate, trusting only the configured CA; without its certificate
// it cannot produce.
func TestMutualTLS(t *testing.T) {
	ca, err := pki.NewCA(filepath.Join(t.TempDir(), "pki"), "kafka test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.IssueServer("broker")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.IssueClient("decryptd")
	if err != nil {
		t.Fatal(err)
	}
	stc, err := pki.ServerConfig(srv)
	if err != nil {
		t.Fatal(err)
	}
	c := fakeCluster(t, "records", 1, kfake.TLS(stc))
	// The broker advertises 127.0.0.1, in the certificate's names.
	cfg := Config{Name: "secure", Brokers: c.ListenAddrs(), Topic: "records",
		TLS: TLS{CAFile: cli.CA, CertFile: cli.Cert, KeyFile: cli.Key}}
	s, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	recs := sinktest.Records("tls", 5)
	if err := s.Write(t.Context(), recs); err != nil {
		t.Fatalf("Write over mutual TLS: %v", err)
	}
	ctc, err := pki.ClientConfig(cli, "")
	if err != nil {
		t.Fatal(err)
	}
	got := readTopic(t, c.ListenAddrs(), "records", kgo.DialTLSConfig(ctc.Clone()))
	if len(got) != 5 || string(got[0].Value) != string(recs[0].JSON) {
		t.Fatalf("read back %d records", len(got))
	}

	// No client certificate: refused, the Write gives up with its context.
	cfg.TLS = TLS{CAFile: cli.CA}
	bad, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close(context.Background())
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if err := bad.Write(ctx, sinktest.Records("x", 1)); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("Write without a client certificate: %v", err)
	}
}
