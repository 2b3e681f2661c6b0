package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// dekctl root retire and shred --complete with the local provider and the
// file registry, end to end through the command line.
func TestShredCompleteLocal(t *testing.T) {
	dir, cfg := setup(t, "")
	must(t, cfg, "root", "create", "--name", "test-root")
	for _, d := range []string{"d1", "d2"} {
		must(t, cfg, "provision", "--device", d, "--out", filepath.Join(dir, d+".json"))
	}
	cases := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"retire without version", []string{"root", "retire"}, exitUsage, "--version is required"},
		{"retire the newest", []string{"root", "retire", "--version", "1"}, exitFailed, "still wraps new DEKs"},
		{"retire unknown", []string{"root", "retire", "--version", "9"}, exitFailed, "unknown root key version"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := runT(t, nil, append([]string{"--config", cfg}, tc.args...)...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", r.code, r.stderr, tc.code, tc.stderr)
			}
		})
	}
	must(t, cfg, "root", "rotate")
	if r := runT(t, nil, "--config", cfg, "root", "retire", "--version", "1"); r.code != exitFailed || !strings.Contains(r.stderr, "still wraps DEKs") {
		t.Fatalf("retire before rewrap: %+v", r)
	}

	out := must(t, cfg, "shred", "--complete", "--device", "d1")
	for _, want := range []string{"shredded device/d1@v1", "rewrap: 1 entries, 1 to move: 1 rewrapped", "retired root key test-root version 1", "take a new registry backup"} {
		if !strings.Contains(out, want) {
			t.Fatalf("shred --complete output lacks %q:\n%s", want, out)
		}
	}
	key, err := os.ReadFile(filepath.Join(dir, "var", "root-key.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(key), `"version": "1"`) {
		t.Fatalf("version 1 still in the root key file:\n%s", key)
	}
	// Resumable: the same command again has nothing left to do.
	out = must(t, cfg, "shred", "--complete", "--device", "d1")
	if !strings.Contains(out, "device/d1@v1 already shredded") || strings.Contains(out, "retired root key") {
		t.Fatalf("rerun: %s", out)
	}
	audit := must(t, cfg, "audit", "verify")
	if !strings.Contains(audit, "ok") {
		t.Fatalf("audit verify: %s", audit)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "var", "audit.log"))
	for _, action := range []string{`"action":"root_retire"`, `"action":"shred_complete"`, `"action":"shred"`} {
		if !strings.Contains(string(log), action) {
			t.Fatalf("audit log lacks %s", action)
		}
	}
}
