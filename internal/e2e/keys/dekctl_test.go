package keys_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// dekctl is the real dekctl binary, built once per test that needs it, with
// a configuration file of its own (the daemon's format).
type dekctl struct {
	bin, config string
}

// buildDekctl builds cmd/dekctl into a temporary directory (a second or
// two with a warm build cache). A build failure fails the test.
func buildDekctl(t *testing.T) string {
	t.Helper()
	// go test puts its own toolchain's bin directory first in PATH.
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("build dekctl: no go command in PATH: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "dekctl")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "github.com/decryptd/decryptd/cmd/dekctl")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build dekctl: %v\n%s", err, out)
	}
	return bin
}

// kmsLocalYAML and kmsKeyProtectYAML are the kms section of the config.
func kmsLocalYAML(rootKeyFile string) string {
	return "kms:\n  provider: local\n  local:\n    root_key_file: " + rootKeyFile + "\n"
}

func kmsKeyProtectYAML(kp *kpEnv, apiKeyFile string) string {
	return "kms:\n  provider: keyprotect\n  keyprotect:\n" +
		"    base_url: " + kp.srv.URL + "\n" +
		"    token_url: " + kp.srv.TokenURL + "\n" +
		"    instance_id: " + kp.srv.InstanceID() + "\n" +
		"    root_key_id: " + kp.root + "\n" +
		"    api_key_file: " + apiKeyFile + "\n" +
		"    timeout: 10s\n"
}

// newDekctl writes a configuration (the given kms section, the PostgreSQL
// registry at dsn, the audit log at auditPath) for bin.
func newDekctl(t *testing.T, bin, kmsSection, dsn, auditPath string) *dekctl {
	t.Helper()
	dir := t.TempDir()
	cfg := "mqtt:\n  brokers: [ssl://127.0.0.1:8883]\n  client_id: e2e-keys\n  topics: [iot-2/type/+/id/+/evt/+/fmt/+]\n" +
		kmsSection +
		"registry:\n  driver: postgres\n  dsn: " + dsn + "\n" +
		"sinks:\n  - type: stdout\n" +
		"dead_letter:\n  type: file\n  path: " + filepath.Join(dir, "dead-letter.jsonl") + "\n" +
		"audit:\n  path: " + auditPath + "\n"
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return &dekctl{bin: bin, config: path}
}

// run runs dekctl with args and returns its output and exit code. The
// environment is the test's less every DECRYPTD_ variable, which would
// override the configuration.
func (d *dekctl) run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.bin, append([]string{"--config", d.config}, args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DECRYPTD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("run dekctl %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// must runs dekctl and fails the test unless it exits 0.
func (d *dekctl) must(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := d.run(t, args...)
	if code != 0 {
		t.Fatalf("dekctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}
