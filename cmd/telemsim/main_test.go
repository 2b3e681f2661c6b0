package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

func noEnv(string) (string, bool) { return "", false }

// writeConfig writes a daemon configuration for broker b whose registry,
// root key and audit log live in dir.
func writeConfig(t *testing.T, b *mosquittotest.Broker, dir string) string {
	t.Helper()
	if _, err := local.Create(filepath.Join(dir, "root-key.json"), "telemsim-test"); err != nil {
		t.Fatal(err)
	}
	client := b.ClientCert("telemsim")
	cfg := fmt.Sprintf(`mqtt:
  brokers: [%q]
  topics: ["iot-2/type/+/id/+/evt/+/fmt/+"]
  tls:
    ca_file: %q
    cert_file: %q
    key_file: %q
kms:
  provider: local
  local:
    root_key_file: root-key.json
registry:
  driver: file
  path: registry.json
sinks:
  - type: stdout
dead_letter:
  type: file
  path: dead.jsonl
audit:
  path: audit.jsonl
`, b.SSLURL, client.CA, client.Cert, client.Key)
	p := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type jsonSummary struct {
	Devices         int               `json:"devices"`
	Keys            int               `json:"keys"`
	Published       uint64            `json:"published"`
	Acked           uint64            `json:"acked"`
	Errors          uint64            `json:"publish_errors"`
	ByKind          map[string]uint64 `json:"by_kind"`
	Rate            float64           `json:"achieved_rate"`
	Seed            uint64            `json:"seed"`
	ExpectedReasons map[string]uint64 `json:"expected_reasons"`
}

func TestProvisionAndRun(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{})
	dir := t.TempDir()
	cfg := writeConfig(t, b, dir)
	creds := filepath.Join(dir, "fleet.jsonl")

	var stdout, stderr bytes.Buffer
	code := run([]string{"--config", cfg, "--provision", "40", "--group-size", "4", "--credentials", creds,
		"--count", "400", "--rate", "300", "--bad", "tampered=0.1,replay=0.05", "--seed", "5", "--json"}, &stdout, &stderr, noEnv, nil)
	if code != exitOK {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
	}
	var sum jsonSummary
	if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
		t.Fatalf("summary %q: %v", stdout.String(), err)
	}
	if sum.Devices != 40 || sum.Keys != 10 || sum.Acked != 400 || sum.Errors != 0 || sum.Seed != 5 {
		t.Fatalf("summary %+v", sum)
	}
	if sum.ByKind["tampered"] == 0 || sum.ExpectedReasons["auth_failed"] != sum.ByKind["tampered"] {
		t.Fatalf("summary by kind %v, expected reasons %v", sum.ByKind, sum.ExpectedReasons)
	}
	// 400 at 300/s lasts over a second: at least one progress line.
	if !strings.Contains(stderr.String(), "msg/s") {
		t.Fatalf("no progress line on stderr:\n%s", stderr.String())
	}
	if fi, err := os.Stat(creds); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v %v", fi, err)
	}
	audit, _ := os.ReadFile(filepath.Join(dir, "audit.jsonl"))
	if n := strings.Count(string(audit), `"action":"provision"`); n != 10 {
		t.Fatalf("%d provision audit events, want 10", n)
	}

	// Run again from the credentials, broker and TLS from flags, as a
	// backlog, text summary.
	client := b.ClientCert("telemsim-2")
	stdout.Reset()
	stderr.Reset()
	code = run([]string{"--credentials", creds, "--devices", "20", "--broker", b.SSLURL, "--ca", client.CA, "--cert", client.Cert, "--key", client.Key,
		"--backlog", "300", "--connections", "2"}, &stdout, &stderr, noEnv, nil)
	if code != exitOK {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
	}
	for _, want := range []string{"devices      20", "acked 300", "publish errors 0", "seed "} {
		if !strings.Contains(stdout.String(), want) {
			t.Fatalf("summary lacks %q:\n%s", want, stdout.String())
		}
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no fleet", []string{"--count", "1"}, "no fleet"},
		{"provision without config", []string{"--provision", "5"}, "needs --config"},
		{"backlog with count", []string{"--credentials", "x", "--backlog", "5", "--count", "1"}, "--backlog"},
		{"stray argument", []string{"--credentials", "x", "now"}, "unexpected argument"},
		{"negative", []string{"--credentials", "x", "--count", "-1"}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tt.args, &stdout, &stderr, noEnv, nil); code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitUsage, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("stderr %q lacks %q", stderr.String(), tt.want)
			}
		})
	}
}

// TestHelpVersionUsage: exit codes and streams of help, version and a
// mistake.
func TestHelpVersionUsage(t *testing.T) {
	for _, tc := range []struct {
		args        []string
		code        int
		out, errOut string
	}{
		{[]string{"--help"}, exitOK, "Usage:\n  telemsim --config", ""},
		{[]string{"-h"}, exitOK, "-rate-per-device float", ""},
		{[]string{"--version"}, exitOK, "telemsim ", ""},
		{[]string{"--bogus"}, exitUsage, "", "flag provided but not defined: -bogus"},
		{nil, exitUsage, "", "no fleet"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(tc.args, &out, &errOut, noEnv, nil)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", code, tc.code, out.String(), errOut.String())
			}
			for _, s := range []struct{ name, got, want string }{{"stdout", out.String(), tc.out}, {"stderr", errOut.String(), tc.errOut}} {
				if (s.want == "" && s.got != "") || !strings.Contains(s.got, s.want) {
					t.Errorf("%s %q, want %q", s.name, s.got, s.want)
				}
			}
		})
	}
}

func TestByReason(t *testing.T) {
	for _, tc := range []struct {
		in   map[string]int
		want string
	}{
		{nil, ""},
		{map[string]int{"rollback": 1}, " (rollback 1)"},
		{map[string]int{"rollback": 1, "auth_failed": 2}, " (auth_failed 2, rollback 1)"},
	} {
		if got := byReason(tc.in); got != tc.want {
			t.Errorf("byReason(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestUnknownVariable: telemsim, like decryptd and dekctl, refuses a
// DECRYPTD_* variable that sets no configuration key, before it provisions
// or sends anything.
func TestUnknownVariable(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{})
	dir := t.TempDir()
	cfg := writeConfig(t, b, dir)
	creds := filepath.Join(dir, "fleet.jsonl")
	for _, tc := range []struct {
		environ  []string
		wantCode int
		wantErr  string
	}{
		{[]string{"DECRYPTD_REGISTRY_PTH=x"}, exitFailed, "DECRYPTD_REGISTRY_PTH: sets no configuration key; did you mean DECRYPTD_REGISTRY_PATH?"},
		{[]string{"DECRYPTD_REGISTRY_PATH=registry.json", "DECRYPTD_TEST_PG_DSN=x", "HOME=/root"}, exitOK, ""},
	} {
		var out, errOut bytes.Buffer
		code := run([]string{"--config", cfg, "--provision", "2", "--credentials", creds, "--quiet"}, &out, &errOut, noEnv,
			func() []string { return tc.environ })
		if code != tc.wantCode || !strings.Contains(errOut.String(), tc.wantErr) {
			t.Fatalf("environ %q: exit %d, stderr %q", tc.environ, code, errOut.String())
		}
		if _, err := os.Stat(creds); (err == nil) != (tc.wantCode == exitOK) {
			t.Fatalf("environ %q: credentials written: %v", tc.environ, err == nil)
		}
	}
}
