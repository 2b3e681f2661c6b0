package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/kpemu"
	"github.com/decryptd/decryptd/internal/testutil/pgtest"
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

// shred --complete with Key Protect (the emulator): the old key is deleted,
// the DEKs live on under the replacement, which the configuration then names.
func TestShredCompleteKeyProtect(t *testing.T) {
	srv, err := kpemu.Start(context.Background(), kpemu.Options{APIKeys: []string{"test-api-key"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	text := strings.Replace(testConfig, "  provider: local\n  local: {root_key_file: var/root-key.json}\n",
		"  provider: keyprotect\n  keyprotect:\n    base_url: "+srv.URL+"\n    token_url: "+srv.TokenURL+
			"\n    instance_id: "+srv.InstanceID()+"\n    api_key_env: DEKCTL_TEST_KP_KEY\n    timeout: 5s\n", 1)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DECRYPTD_CONFIG": cfg, "DEKCTL_TEST_KP_KEY": "test-api-key"}
	r := runT(t, env, "root", "create", "--name", "decryptd-test")
	id := regexp.MustCompile(`created root key (\S+)`).FindStringSubmatch(r.stdout)[1]
	env["DECRYPTD_KMS_KEYPROTECT_ROOT_KEY_ID"] = id
	for _, d := range []string{"d1", "d2"} {
		if r := runT(t, env, "provision", "--device", d, "--out", filepath.Join(dir, d+".json")); r.code != 0 {
			t.Fatalf("provision: %+v", r)
		}
	}
	if r := runT(t, env, "root", "retire", "--version", id); r.code != exitFailed || !strings.Contains(r.stderr, "cannot delete one version") {
		t.Fatalf("retire a version of the configured key: %+v", r)
	}
	r = runT(t, env, "shred", "--complete", "--device", "d1")
	if r.code != 0 || !strings.Contains(r.stdout, "moved DEKs to the replacement root key") || !strings.Contains(r.stdout, "set kms.keyprotect.root_key_id") {
		t.Fatalf("shred --complete: %+v", r)
	}
	repl := regexp.MustCompile(`replacement root key (\S+)`).FindStringSubmatch(r.stdout)[1]
	if state, ok := srv.KeyState(id); !ok || state != kpemu.StateDestroyed {
		t.Fatalf("old key state %d, want destroyed", state)
	}
	env["DECRYPTD_KMS_KEYPROTECT_ROOT_KEY_ID"] = repl
	for _, args := range [][]string{
		{"provision", "--device", "d3", "--out", filepath.Join(dir, "d3.json")},
		{"audit", "verify"},
	} {
		if r := runT(t, env, args...); r.code != 0 {
			t.Fatalf("dekctl %v after the switch: %+v", args, r)
		}
	}
	r = runT(t, env, "list", "--json")
	var infos []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &infos); err != nil {
		t.Fatal(err)
	}
	for _, in := range infos {
		if in["state"] != "shredded" && in["root_key_id"] != repl {
			t.Fatalf("not under the replacement: %v", in)
		}
	}
}

// shred --complete with the PostgreSQL registry: the run ends with the
// purge (VACUUM FULL) and the audit chain verifies.
func TestShredCompletePostgres(t *testing.T) {
	_, cfg := setup(t, "")
	env := map[string]string{
		"DECRYPTD_CONFIG":          cfg,
		"DECRYPTD_REGISTRY_DRIVER": "postgres",
		"DECRYPTD_REGISTRY_PATH":   "",
		"DECRYPTD_REGISTRY_DSN":    pgtest.New(t),
	}
	for _, args := range [][]string{
		{"root", "create"},
		{"provision", "--device", "d1", "--out", "-"},
		{"provision", "--device", "d2", "--out", "-"},
	} {
		if r := runT(t, env, args...); r.code != 0 {
			t.Fatalf("dekctl %v: %+v", args, r)
		}
	}
	r := runT(t, env, "shred", "--complete", "--device", "d1")
	if r.code != 0 || !strings.Contains(r.stdout, "registry purged: VACUUM (FULL, ANALYZE) decryptd_registry_entries") ||
		!strings.Contains(r.stdout, "retired root key") {
		t.Fatalf("shred --complete: %+v", r)
	}
	if r := runT(t, env, "audit", "verify"); r.code != 0 {
		t.Fatalf("audit verify: %+v", r)
	}
}
