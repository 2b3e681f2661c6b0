package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckEnv: a DECRYPTD_* variable that sets no key is refused, with
// the nearest name when one is close; the known ones, DECRYPTD_CONFIG, the
// variable api_key_env names and DECRYPTD_TEST_* pass; others are ignored.
func TestCheckEnv(t *testing.T) {
	c := Default()
	c.KMS.KeyProtect.APIKeyEnv = "DECRYPTD_KP_API_KEY"
	for _, tc := range []struct {
		env  []string
		want string // "" : no error
	}{
		{[]string{"DECRYPTD_MQTT_CLIENT_ID=x", "DECRYPTD_CONFIG=c.yaml", "DECRYPTD_KP_API_KEY=k", "DECRYPTD_TEST_PG_DSN=d", "HOME=/root"}, ""},
		{[]string{"DECRYPTD_MQTT_CLIENTID=x"}, "environment DECRYPTD_MQTT_CLIENTID: sets no configuration key; did you mean DECRYPTD_MQTT_CLIENT_ID?"},
		{[]string{"DECRYPTD_FROBNICATE=1"}, "environment DECRYPTD_FROBNICATE: sets no configuration key (config.example.yaml"},
		{[]string{"DECRYPTD_KP_API_KEY=k"}, ""},
	} {
		err := CheckEnv(tc.env, c)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%v: %v", tc.env, err)
			}
			continue
		}
		var ve *ValidationError
		if !errors.As(err, &ve) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.env, err, tc.want)
		}
	}
	// Without api_key_env the Key Protect variable is unknown.
	if err := CheckEnv([]string{"DECRYPTD_KP_API_KEY=k"}, Default()); err == nil {
		t.Error("DECRYPTD_KP_API_KEY passed without api_key_env naming it")
	}
}

// TestKeyPathErrors: decoding errors name the key path and the line.
func TestKeyPathErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"mqtt:\n  brokers: [ssl://h:8883]\n  bogus: 1\n", `mqtt.bogus (line 3): unknown key "bogus"`},
		{"sinks:\n  - type: file\n    path: x\n  - type: http\n    urll: https://h\n", `sinks[1].urll (line 5): unknown key "urll"`},
		{"sinks:\n  - {type: http, urll: x}\n", `sinks[0].urll (line 2): unknown key "urll"`},
		{"mqtt:\n  max_in_flight: many\n", "mqtt.max_in_flight (line 2): cannot unmarshal"},
		{"rotation:\n  tick: 10\n", "rotation.tick (line 2): cannot unmarshal !!int `10` into a duration"},
	} {
		_, err := Parse([]byte(tc.text), noEnv)
		var ve *ValidationError
		if !errors.As(err, &ve) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.text, err, tc.want)
		}
	}
}

// TestCheckFiles: each named file is checked by its role, and a problem
// names the key.
func TestCheckFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	text := fmt.Sprintf(`
mqtt:
  brokers: [ssl://127.0.0.1:8883]
  topics: [a/+]
  tls: {ca_file: %q, cert_file: %q, key_file: %q}
kms:
  provider: keyprotect
  keyprotect: {base_url: "https://kms.example", instance_id: i, root_key_id: r, api_key_file: %q}
registry: {driver: file, path: %q}
sinks:
  - {name: console, type: stdout}
  - {name: records, type: file, path: %q}
  - {name: ehr, type: http, url: "https://ehr.example/v1", auth_header_file: %q, ca_file: %q}
dead_letter: {type: file, path: %q}
audit: {path: %q}
`, write("ca.pem", 0o666), write("cert.pem", 0o644), write("key.pem", 0o440), write("api-key", 0o644),
		filepath.Join(dir, "new", "registry.json"), write("records.jsonl", 0o640), filepath.Join(dir, "missing"),
		write("ehr-ca.pem", 0o644), filepath.Join(dir, "dead-letter.jsonl"), write("audit.log", 0o600))
	c, err := Parse([]byte(text), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	err = c.CheckFiles()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("CheckFiles: %v", err)
	}
	got := map[string]string{}
	for _, p := range ve.Problems {
		got[p.Field] = p.Problem
	}
	want := map[string]string{
		"kms.keyprotect.api_key_file": "mode 0644 lets others access this secret",
		"mqtt.tls.ca_file":            "mode 0666 lets others write it",
		"sinks[1].path":               "mode 0640 lets its group access it",
		"sinks[2].auth_header_file":   "does not exist",
	}
	for f, w := range want {
		if !strings.Contains(got[f], w) {
			t.Errorf("%s: %q, want %q", f, got[f], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("problems %v, want only %v (key 0440, a new registry and dead-letter file, a 0600 audit log pass)", got, want)
	}
}

// TestReadSecretFileMode: a secret file readable by others is refused at
// run time too (the rule check-config applies); group-readable passes.
func TestReadSecretFileMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "api-key")
	if err := os.WriteFile(p, []byte("k\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o600, true}, {0o440, true}, {0o644, false}, {0o660, false}} {
		if err := os.Chmod(p, tc.mode); err != nil {
			t.Fatal(err)
		}
		s, err := ReadSecretFile(p)
		if (err == nil) != tc.ok || (err == nil && s.Reveal() != "k") {
			t.Errorf("mode %04o: %v, want ok %v", tc.mode, err, tc.ok)
		}
	}
}

// FuzzKeyPaths: for any document and any decoder message, naming key
// paths neither panics nor loses or invents a problem, and each problem
// keeps its line.
func FuzzKeyPaths(f *testing.F) {
	f.Add("mqtt:\n  bogus: 1\n", `line 2: unknown key "bogus"`)
	f.Add("sinks:\n  - {type: http, urll: x}\n", `line 2: unknown key "urll"; line 9: x`)
	f.Add("a: [1, {b: 2}]\n", "line 1: cannot unmarshal")
	f.Fuzz(func(t *testing.T, doc, msg string) {
		out := withKeyPaths(errors.New("yaml: "+msg), []byte(doc))
		var ve *ValidationError
		if !errors.As(out, &ve) {
			return // not every part starts with a line: left as it was
		}
		if n := len(strings.Split(msg, "; ")); len(ve.Problems) != n {
			t.Fatalf("%d problems from %d parts of %q", len(ve.Problems), n, msg)
		}
		for _, p := range ve.Problems {
			if !strings.Contains(p.Field, "line ") {
				t.Fatalf("problem %q lost its line", p.Field)
			}
		}
	})
}
