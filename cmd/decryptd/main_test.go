package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/sink"
)

// exampleWithFiles copies config.example.yaml into a folder and makes the
// files it names (certificates 0644, keys 0600), so that check-config
// passes; mode, when set, replaces the mode of the file at rel.
func exampleWithFiles(t *testing.T, rel string, mode os.FileMode) string {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "var", "tls"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]os.FileMode{"var/tls/ca.pem": 0o644, "var/tls/decryptd.pem": 0o644, "var/tls/decryptd-key.pem": 0o600} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := local.Create(filepath.Join(dir, "var", "root-key.json"), "test-root"); err != nil {
		t.Fatal(err)
	}
	if rel != "" {
		p := filepath.Join(dir, rel)
		if _, err := os.Stat(p); err != nil {
			if err := os.WriteFile(p, nil, mode); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	return cfg
}

// TestCommands runs each command line in process and checks its exit
// status and what goes to stdout and to stderr: help and version on
// stdout (exit 0), mistakes and problems on stderr (exit 2), an empty
// stream where nothing is expected.
func TestCommands(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("mqtt:\n  brokers: [tcp://127.0.0.1:1883]\nsinks: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badKey := filepath.Join(dir, "badkey.yaml")
	if err := os.WriteFile(badKey, []byte("mqtt:\n  brokers: [ssl://127.0.0.1:8883]\nsinks:\n  - type: file\n    pth: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := exampleWithFiles(t, "", 0)
	cases := []struct {
		name        string
		args        []string
		env         map[string]string
		code        int
		out, errOut string // "" : that stream must be empty
	}{
		{"check example config with its files", []string{"check-config", "--config", good}, nil, exitOK, "OK", ""},
		{"check example config without its files", []string{"check-config", "--config", "../../config.example.yaml"}, nil, exitUsage, "",
			"kms.local.root_key_file: " + filepath.Join(mustAbs(t, "../.."), "var/root-key.json") + " does not exist"},
		{"key file readable by others", []string{"check-config", "--config", exampleWithFiles(t, "var/tls/decryptd-key.pem", 0o644)}, nil, exitUsage, "",
			"mqtt.tls.key_file: "},
		{"key file readable by its group (Kubernetes fsGroup)", []string{"check-config", "--config", exampleWithFiles(t, "var/tls/decryptd-key.pem", 0o440)}, nil, exitOK, "OK", ""},
		{"certificate writable by others", []string{"check-config", "--config", exampleWithFiles(t, "var/tls/ca.pem", 0o666)}, nil, exitUsage, "",
			"mqtt.tls.ca_file: "},
		{"existing sink file readable by others", []string{"check-config", "--config", exampleWithFiles(t, "var/records.jsonl", 0o644)}, nil, exitUsage, "",
			"sinks[0].path: "},
		{"existing audit log readable by its group", []string{"check-config", "--config", exampleWithFiles(t, "var/audit.log", 0o640)}, nil, exitUsage, "",
			"audit.path: "},
		{"misspelt variable", []string{"check-config", "--config", good}, map[string]string{"DECRYPTD_ROTATON_ENABLED": "true"}, exitUsage, "",
			"DECRYPTD_ROTATON_ENABLED: sets no configuration key; did you mean DECRYPTD_ROTATION_ENABLED?"},
		{"test harness variable", []string{"check-config", "--config", good}, map[string]string{"DECRYPTD_TEST_X": "1"}, exitOK, "OK", ""},
		{"check invalid config", []string{"check-config", "--config", bad}, nil, exitUsage, "", "mqtt.brokers[0]: tcp://"},
		{"unknown key named by path", []string{"check-config", "--config", badKey}, nil, exitUsage, "", `sinks[0].pth (line 5): unknown key "pth"`},
		{"check missing config", []string{"check-config", "--config", filepath.Join(dir, "none.yaml")}, nil, exitUsage, "", "no such file"},
		{"version", []string{"version"}, nil, exitOK, "decryptd ", ""},
		{"--version", []string{"--version"}, nil, exitOK, "decryptd ", ""},
		{"help", []string{"help"}, nil, exitOK, "Commands:\n  run --config FILE", ""},
		{"--help", []string{"--help"}, nil, exitOK, "Commands:\n  run --config FILE", ""},
		{"-h", []string{"-h"}, nil, exitOK, "Commands:\n  run --config FILE", ""},
		{"run --help", []string{"run", "--help"}, nil, exitOK, "decryptd run [--config FILE]", ""},
		{"check-config -h", []string{"check-config", "-h"}, nil, exitOK, "decryptd check-config [--config FILE]", ""},
		{"replay --help", []string{"replay", "--help"}, nil, exitOK, "-in string", ""},
		{"demo --help", []string{"demo", "--help"}, nil, exitOK, "-duration duration", ""},
		{"unknown flag", []string{"run", "--bogus"}, nil, exitUsage, "", "flag provided but not defined: -bogus"},
		{"unknown command", []string{"frobnicate"}, nil, exitUsage, "", `unknown command "frobnicate"`},
		{"replay without --in", []string{"replay", "--config", bad}, nil, exitUsage, "", "--in FILE is required"},
		{"run with invalid config", []string{"run", "--config", bad}, nil, exitUsage, "", "sinks: at least one sink required"},
		{"demo negative duration", []string{"demo", "--duration", "-1s"}, nil, exitUsage, "", "must not be negative"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			var out, errOut bytes.Buffer
			code := run(c.args, &out, &errOut)
			if code != c.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, c.code, out.String(), errOut.String())
			}
			for _, s := range []struct{ name, got, want string }{{"stdout", out.String(), c.out}, {"stderr", errOut.String(), c.errOut}} {
				switch {
				case s.want == "" && s.got != "":
					t.Errorf("%s should be empty, got %q", s.name, s.got)
				case !strings.Contains(s.got, s.want):
					t.Errorf("%s %q lacks %q", s.name, s.got, s.want)
				}
			}
			if strings.HasSuffix(c.name, "help") || c.name == "-h" || strings.Contains(c.name, " -h") {
				if !strings.Contains(out.String(), "Commands:") {
					t.Errorf("help without the command list: %q", out.String())
				}
			}
		})
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestReplayCommand replays dead letters through a local KMS and an empty
// registry: without keys they are dead-lettered again, by reason, and the
// last line of stdout is the JSON summary.
func TestReplayCommand(t *testing.T) {
	dir := t.TempDir()
	if _, err := local.Create(filepath.Join(dir, "root-key.json"), "test-root"); err != nil {
		t.Fatal(err)
	}
	cfg := `
mqtt:
  brokers: [ssl://127.0.0.1:8883]
  topics: ["iot-2/type/+/id/+/evt/+/fmt/+"]
kms:
  provider: local
  local: {root_key_file: root-key.json}
registry: {driver: file, path: registry.json}
sinks:
  - {name: records, type: file, path: records.jsonl}
dead_letter: {type: file, path: dead-letter.jsonl}
audit: {path: audit.log}
log: {level: error}
`
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var in bytes.Buffer
	for _, d := range []sink.DeadLetter{
		{Reason: "malformed", Message: intake.Message{Topic: "iot-2/type/m/id/dev-1/evt/t/fmt/json", Payload: []byte("not json")}},
		{Reason: "unknown_key", Message: intake.Message{Topic: "iot-2/type/m/id/dev-1/evt/t/fmt/json",
			Payload: []byte(`{"encrypted_data":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","key_version":"v1","metadata":{"device_id":"dev-1","timestamp":1}}`)}},
	} {
		in.Write(d.Record().JSON)
		in.WriteByte('\n')
	}
	in.WriteString("garbage line\n")
	inPath := filepath.Join(dir, "old-dead-letters.jsonl")
	if err := os.WriteFile(inPath, in.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	last, sum := runReplay(t, cfgPath, inPath)
	var out, errOut bytes.Buffer
	if sum.Processed != 2 || sum.Delivered != 0 || sum.DeadLettered != 2 || sum.Duplicates != 0 ||
		len(sum.ByCause) != 2 || sum.ByCause["redelivery"] != 0 || sum.ByCause["repeat"] != 0 ||
		sum.Reasons["malformed"] != 1 || sum.Reasons["unknown_key"] != 1 || sum.KMSUnwraps == nil || *sum.KMSUnwraps != 0 {
		t.Fatalf("summary %s", last)
	}

	// Replaying the configured dead-letter file itself is refused.
	if code := run([]string{"replay", "--config", cfgPath, "--in", filepath.Join(dir, "dead-letter.jsonl")}, &out, &errOut); code != exitFailed {
		t.Fatalf("replay of the dead-letter file: exit %d, stderr %s", code, errOut.String())
	}
}
