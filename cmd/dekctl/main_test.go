package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/testutil/pgtest"
)

const testConfig = `
mqtt:
  brokers: [ssl://127.0.0.1:8883]
  client_id: dekctl-test
  topics: [iot-2/type/+/id/+/evt/+/fmt/+]
kms:
  provider: local
  local: {root_key_file: var/root-key.json}
registry: {driver: file, path: var/registry.json}
sinks: [{type: stdout}]
dead_letter: {type: file, path: var/dl.jsonl}
audit: {path: var/audit.log}
`

// setup writes a config in a fresh directory and returns its path.
func setup(t *testing.T, extra string) (dir, cfg string) {
	t.Helper()
	dir = t.TempDir()
	cfg = filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(testConfig+extra), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, cfg
}

type result struct {
	code           int
	stdout, stderr string
}

func runT(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := runContext(context.Background(), args, &out, &errb, func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	return result{code, out.String(), errb.String()}
}

// must runs dekctl --config cfg args and fails the test unless it exits 0.
func must(t *testing.T, cfg string, args ...string) string {
	t.Helper()
	r := runT(t, nil, append([]string{"--config", cfg}, args...)...)
	if r.code != 0 {
		t.Fatalf("dekctl %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func TestUsageAndExitCodes(t *testing.T) {
	dir, cfg := setup(t, "")
	must(t, cfg, "root", "create", "--name", "test-root")
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`[{"key_id":"k","key_version":"v1","dek_hex":"abcd"}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no command", nil, exitUsage, "no command given"},
		{"unknown command", []string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{"unknown global flag", []string{"--verbose", "list"}, exitUsage, "flag provided but not defined: -verbose"},
		{"provision without device", []string{"provision"}, exitUsage, "provision: --device is required"},
		{"provision bad flag", []string{"provision", "--device", "d", "--bogus"}, exitUsage, "provision: flag provided but not defined: -bogus"},
		{"provision bad device", []string{"provision", "--device", "a b", "--out", "-"}, exitUsage, `device id "a b"`},
		{"provision bad group", []string{"provision", "--device", "d", "--group", "x y", "--out", "-"}, exitUsage, `group "x y"`},
		{"positional argument", []string{"list", "extra"}, exitUsage, `list: unexpected argument "extra"`},
		{"import without file", []string{"import"}, exitUsage, "import: --file is required"},
		{"import invalid entry", []string{"import", "--file", bad}, exitUsage, "keys[0].dek_hex: want 64 hex digits"},
		{"import missing file", []string{"import", "--file", filepath.Join(dir, "none.json")}, exitFailed, "no such file"},
		{"revoke nothing", []string{"revoke"}, exitUsage, "revoke: give --key-id and --version, or --device"},
		{"revoke key without version", []string{"revoke", "--key-id", "device/d"}, exitUsage, "--key-id needs --version"},
		{"revoke device and key", []string{"revoke", "--device", "d", "--key-id", "k", "--version", "v1"}, exitUsage, "cannot be combined"},
		{"revoke not found", []string{"revoke", "--key-id", "device/none", "--version", "v1"}, exitNotFound, "not found: device/none@v1"},
		{"revoke device not found", []string{"revoke", "--device", "none"}, exitNotFound, "no versions of device/none"},
		{"revoke bad version", []string{"revoke", "--key-id", "k", "--version", "v 1"}, exitUsage, `key version "v 1"`},
		{"shred nothing", []string{"shred"}, exitUsage, "shred: give --device"},
		{"shred not found", []string{"shred", "--device", "none"}, exitNotFound, "no versions of device/none"},
		{"shred version alone", []string{"shred", "--version", "v1"}, exitUsage, "shred: give --device"},
		{"root without subcommand", []string{"root"}, exitUsage, "root: want create, rotate or list"},
		{"root bad subcommand", []string{"root", "delete"}, exitUsage, `root: unknown subcommand "delete"`},
		{"root create twice", []string{"root", "create"}, exitFailed, "root key file"},
		{"audit without verify", []string{"audit"}, exitUsage, "audit: want verify"},
		{"audit verify missing file", []string{"audit", "verify", "--file", filepath.Join(dir, "none.log")}, exitFailed, "no such file"},
		{"rewrap argument", []string{"rewrap", "now"}, exitUsage, `rewrap: unexpected argument "now"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := runT(t, nil, append([]string{"--config", cfg}, tc.args...)...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, tc.code, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("stderr %q does not contain %q", r.stderr, tc.stderr)
			}
			if tc.code == exitUsage && !strings.Contains(r.stderr, "dekctl help") && tc.name != "no command" {
				t.Fatalf("usage error without a hint: %q", r.stderr)
			}
		})
	}
}

func TestHelpAndConfigErrors(t *testing.T) {
	r := runT(t, nil, "help")
	if r.code != 0 || !strings.Contains(r.stdout, "Exit codes:") || !strings.Contains(r.stdout, "IN THE CLEAR") {
		t.Fatalf("help: %d %q", r.code, r.stdout)
	}
	if r := runT(t, nil, "--help"); r.code != 0 || !strings.Contains(r.stdout, "Usage: dekctl") {
		t.Fatalf("--help: %+v", r)
	}
	dir := t.TempDir()
	if r := runT(t, nil, "--config", filepath.Join(dir, "none.yaml"), "list"); r.code != exitFailed || !strings.Contains(r.stderr, "none.yaml") {
		t.Fatalf("missing config: %+v", r)
	}
	_, cfg := setup(t, "bogus: 1\n")
	if r := runT(t, nil, "--config", cfg, "list"); r.code != exitFailed || !strings.Contains(r.stderr, `unknown key "bogus"`) {
		t.Fatalf("bad config: %+v", r)
	}
	// DECRYPTD_CONFIG names the file; --config after the command works too.
	dir2, cfg2 := setup(t, "")
	r = runT(t, map[string]string{"DECRYPTD_CONFIG": cfg2}, "root", "create")
	if r.code != 0 {
		t.Fatalf("DECRYPTD_CONFIG: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(dir2, "var/root-key.json")); err != nil {
		t.Fatal(err)
	}
	if r := runT(t, nil, "list", "--config", cfg2); r.code != 0 || !strings.Contains(r.stdout, "KEY ID") {
		t.Fatalf("--config after the command: %+v", r)
	}
	// Key operations before a root key exists say what to do.
	_, cfg3 := setup(t, "")
	if r := runT(t, nil, "--config", cfg3, "provision", "--device", "d", "--out", "-"); r.code != exitFailed || !strings.Contains(r.stderr, "dekctl root create") {
		t.Fatalf("no root key: %+v", r)
	}
}

func TestFlow(t *testing.T) {
	dir, cfg := setup(t, "")
	out := must(t, cfg, "root", "create", "--name", "main")
	if !strings.Contains(out, "created root key main") {
		t.Fatal(out)
	}
	fi, err := os.Stat(filepath.Join(dir, "var/root-key.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("root key file: %v %v", fi, err)
	}

	cred := filepath.Join(dir, "cred.json")
	out = must(t, cfg, "provision", "--device", "sensor-9", "--out", cred)
	if !strings.Contains(out, "provisioned device/sensor-9@v1") {
		t.Fatal(out)
	}
	var c map[string]string
	data, _ := os.ReadFile(cred)
	if err := json.Unmarshal(data, &c); err != nil || c["key_version"] != "v1" || c["dek_b64"] == "" {
		t.Fatalf("credential: %s %v", data, err)
	}
	if r := runT(t, nil, "--config", cfg, "provision", "--device", "sensor-9", "--out", cred); r.code != exitFailed || !strings.Contains(r.stderr, "never overwritten") {
		t.Fatalf("overwrite: %+v", r)
	}
	out = must(t, cfg, "provision", "--device", "sensor-9", "--out", "-")
	if !strings.Contains(out, `"key_version": "v2"`) {
		t.Fatal(out)
	}
	must(t, cfg, "provision", "--device", "gw-1", "--group", "ward-7", "--out", filepath.Join(dir, "gw.json"))

	out = must(t, cfg, "import", "--file", "../../testdata/envelope-v1.json")
	if !strings.Contains(out, "imported 4 key versions") {
		t.Fatal(out)
	}
	if r := runT(t, nil, "--config", cfg, "import", "--file", "../../testdata/envelope-v1.json"); r.code != exitFailed || !strings.Contains(r.stderr, "already in the registry") {
		t.Fatalf("re-import: %+v", r)
	}
	out = must(t, cfg, "import", "--file", "../../testdata/envelope-v1.json", "--skip-existing")
	if !strings.Contains(out, "imported 0 key versions, skipped 4") {
		t.Fatal(out)
	}

	out = must(t, cfg, "list")
	for _, want := range []string{"device/sensor-9", "decrypt_only", "group/ward-7", "group/icu-monitors", "2026-q4", "main/1"} {
		if !strings.Contains(out, want) {
			t.Fatalf("list lacks %s:\n%s", want, out)
		}
	}
	var infos []map[string]any
	if err := json.Unmarshal([]byte(must(t, cfg, "list", "--json")), &infos); err != nil || len(infos) != 7 {
		t.Fatalf("list --json: %v %d", err, len(infos))
	}

	out = must(t, cfg, "revoke", "--key-id", "device/sensor-9", "--version", "v1")
	if !strings.Contains(out, "revoked device/sensor-9@v1 (was decrypt_only)") {
		t.Fatal(out)
	}
	out = must(t, cfg, "shred", "--device", "sensor-001")
	if strings.Count(out, "shredded device/sensor-001@") != 2 || !strings.Contains(out, "sha256 ") {
		t.Fatal(out)
	}

	out = must(t, cfg, "root", "rotate")
	if !strings.Contains(out, "version 2") {
		t.Fatal(out)
	}
	r := runT(t, nil, "--config", cfg, "rewrap")
	if r.code != 0 || !strings.Contains(r.stdout, "5 entries, 5 under an older root version: 5 rewrapped") || !strings.Contains(r.stderr, "rewrap: 5/5 (100%), 0 failed") {
		t.Fatalf("rewrap: %+v", r)
	}
	if out := must(t, cfg, "rewrap"); !strings.Contains(out, "0 under an older root version") {
		t.Fatal(out)
	}
	out = must(t, cfg, "root", "list")
	if !strings.Contains(out, "main") || !strings.Contains(out, "2") {
		t.Fatal(out)
	}

	out = must(t, cfg, "audit", "verify")
	if !strings.Contains(out, "ok,") {
		t.Fatal(out)
	}
	// Tamper with one line: verification fails, naming it.
	ap := filepath.Join(dir, "var/audit.log")
	data, _ = os.ReadFile(ap)
	lines := strings.Split(string(data), "\n")
	lines[2] = strings.Replace(lines[2], `"result":"ok"`, `"result":"error"`, 1)
	if err := os.WriteFile(ap, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runT(t, nil, "--config", cfg, "audit", "verify", "--file", ap)
	if r.code != exitFailed || !strings.Contains(r.stderr, "broken at line 3") {
		t.Fatalf("tampered audit: %+v", r)
	}
}

// The PostgreSQL registry, chosen through the environment overrides as an
// operator would (DECRYPTD_REGISTRY_DSN carries what the file may not).
func TestFlowPostgres(t *testing.T) {
	_, cfg := setup(t, "")
	env := map[string]string{
		"DECRYPTD_CONFIG":          cfg,
		"DECRYPTD_REGISTRY_DRIVER": "postgres",
		"DECRYPTD_REGISTRY_PATH":   "",
		"DECRYPTD_REGISTRY_DSN":    pgtest.New(t),
	}
	for _, args := range [][]string{
		{"root", "create"},
		{"import", "--file", "../../testdata/envelope-v1.json"},
		{"provision", "--device", "sensor-002", "--out", "-"},
		{"revoke", "--device", "sensor-002"},
		{"root", "rotate"},
		{"rewrap"},
		{"audit", "verify"},
	} {
		if r := runT(t, env, args...); r.code != 0 {
			t.Fatalf("dekctl %v: %+v", args, r)
		}
	}
	r := runT(t, env, "list", "--json")
	var infos []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &infos); err != nil || len(infos) != 5 {
		t.Fatalf("list: %v %s", err, r.stdout)
	}
	for _, in := range infos {
		if in["state"] != "shredded" && in["root_key_version"] != "2" {
			t.Fatalf("not rewrapped: %v", in)
		}
		if in["key_id"] == "device/sensor-002" && in["state"] != "revoked" {
			t.Fatalf("not revoked: %v", in)
		}
	}
}

// TestHelpAndVersion: help and version, for the tool and for every
// command, exit 0 with their text on stdout (the command list included)
// and nothing on stderr.
func TestHelpAndVersion(t *testing.T) {
	for _, tc := range []struct {
		args []string
		out  string
	}{
		{[]string{"help"}, "Commands:"},
		{[]string{"--help"}, "Commands:"},
		{[]string{"-h"}, "Commands:"},
		{[]string{"--version"}, "dekctl "},
		{[]string{"version"}, "dekctl "},
		{[]string{"root", "--help"}, "root create [--name NAME]"},
		{[]string{"root", "create", "--help"}, "Usage: dekctl root create [flags]"},
		{[]string{"root", "rotate", "-h"}, "-id string"},
		{[]string{"root", "list", "--help"}, "-json"},
		{[]string{"provision", "--help"}, "-device string"},
		{[]string{"import", "-h"}, "-skip-existing"},
		{[]string{"list", "--help"}, "Usage: dekctl list [flags]"},
		{[]string{"revoke", "--help"}, "-key-id string"},
		{[]string{"shred", "--help"}, "Usage: dekctl shred [flags]"},
		{[]string{"rewrap", "--help"}, "Usage: dekctl rewrap [flags]"},
		{[]string{"rotate", "--help"}, "-all"},
		{[]string{"rotation", "--help"}, "rotation status [--json]"},
		{[]string{"rotation", "status", "--help"}, "-chart string"},
		{[]string{"audit", "-h"}, "audit verify [--file FILE]"},
		{[]string{"audit", "verify", "--help"}, "-file string"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := runT(t, nil, tc.args...)
			if r.code != exitOK || r.stderr != "" {
				t.Fatalf("exit %d, stderr %q; want 0 and nothing", r.code, r.stderr)
			}
			if !strings.Contains(r.stdout, tc.out) {
				t.Fatalf("stdout %q lacks %q", r.stdout, tc.out)
			}
			if tc.out != "dekctl " && !strings.Contains(r.stdout, "Commands:") {
				t.Fatalf("help without the command list: %q", r.stdout)
			}
		})
	}
}

// TestUnknownVariable: dekctl, like the daemon, refuses a DECRYPTD_*
// variable that sets no key, naming the nearest one.
func TestUnknownVariable(t *testing.T) {
	_, cfg := setup(t, "")
	var out, errOut bytes.Buffer
	environ := func() []string { return []string{"DECRYPTD_REGISTRY_PTH=x"} }
	code := runEnviron(context.Background(), []string{"--config", cfg, "list"}, &out, &errOut, func(string) (string, bool) { return "", false }, environ)
	if code != exitFailed || !strings.Contains(errOut.String(), "DECRYPTD_REGISTRY_PTH: sets no configuration key; did you mean DECRYPTD_REGISTRY_PATH?") {
		t.Fatalf("exit %d, stderr %q", code, errOut.String())
	}
}
