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

func TestCommands(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("mqtt:\n  brokers: [tcp://127.0.0.1:1883]\nsinks: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name        string
		args        []string
		code        int
		out, errOut string
	}{
		{"check example config", []string{"check-config", "--config", "../../config.example.yaml"}, exitOK, "OK", ""},
		{"check invalid config", []string{"check-config", "--config", bad}, exitUsage, "", "mqtt.brokers[0]: tcp://"},
		{"check missing config", []string{"check-config", "--config", filepath.Join(dir, "none.yaml")}, exitUsage, "", "no such file"},
		{"version", []string{"version"}, exitOK, "decryptd ", ""},
		{"help", []string{"help"}, exitOK, "Usage: decryptd", ""},
		{"unknown command", []string{"frobnicate"}, exitUsage, "", `unknown command "frobnicate"`},
		{"replay without --in", []string{"replay", "--config", bad}, exitUsage, "", "--in FILE is required"},
		{"run with invalid config", []string{"run", "--config", bad}, exitUsage, "", "sinks: at least one sink required"},
		{"demo negative duration", []string{"demo", "--duration", "-1s"}, exitUsage, "", "must not be negative"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(c.args, &out, &errOut)
			if code != c.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, c.code, out.String(), errOut.String())
			}
			if !strings.Contains(out.String(), c.out) {
				t.Errorf("stdout %q lacks %q", out.String(), c.out)
			}
			if !strings.Contains(errOut.String(), c.errOut) {
				t.Errorf("stderr %q lacks %q", errOut.String(), c.errOut)
			}
		})
	}
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
