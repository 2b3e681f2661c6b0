package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/sink"
)

func noEnv(string) (string, bool) { return "", false }

func mapEnv(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestExampleConfigLoads(t *testing.T) {
	c, err := Load("../../config.example.yaml", noEnv)
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct{ name, got, want string }{
		{"kms.provider", c.KMS.Provider, "local"},
		{"kms.local.root_key_file", c.KMS.Local.RootKeyFile, filepath.Join(root, "var/root-key.json")},
		{"registry.driver", c.Registry.Driver, "file"},
		{"registry.path", c.Registry.Path, filepath.Join(root, "var/registry.json")},
		{"audit.path", c.Audit.Path, filepath.Join(root, "var/audit.log")},
		{"mqtt.topics[0]", c.MQTT.Topics[0], "iot-2/type/+/id/+/evt/+/fmt/+"},
		{"decrypt.topic_pattern", c.Decrypt.TopicPattern, DefaultTopicPattern},
		{"metrics.listen", c.Metrics.Listen, DefaultMetricsListen},
		{"sinks[0].path", c.Sinks[0].Config.(*sink.FileConfig).Path, filepath.Join(root, "var/records.jsonl")},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %q, want %q", ch.name, ch.got, ch.want)
		}
	}
}

// Every key the schema has must be documented in the example (the key
// name appears at least as a comment).
func TestExampleDocumentsEveryKey(t *testing.T) {
	data, err := os.ReadFile("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	keys := []string{}
	for _, n := range EnvNames() {
		keys = append(keys, n[strings.Index(n, "=")+1:])
	}
	keys = append(keys, "sinks.name", "sinks.type", "sinks.path", "sinks.max_bytes", "sinks.keep", "sinks.fsync",
		"sinks.format", "sinks.broker", "sinks.topic", "sinks.tls", "sinks.url", "sinks.auth_header_file",
		"sinks.ca_file", "sinks.batch_max", "sinks.timeout")
	for _, k := range keys {
		leaf := k[strings.LastIndex(k, ".")+1:]
		if !strings.Contains(text, leaf+":") {
			t.Errorf("config.example.yaml does not document %s", k)
		}
	}
}

// The commented Key Protect block of the example, uncommented, is valid.
func TestExampleKeyProtectBlock(t *testing.T) {
	data, err := os.ReadFile("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	in := false
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, "  # keyprotect:"):
			in = true
			out = append(out, "  keyprotect:")
			continue
		case in && strings.HasPrefix(line, "  #   #"):
			continue
		case in && strings.HasPrefix(line, "  #   "):
			if strings.Contains(line, "api_key_env") {
				continue
			}
			out = append(out, "    "+strings.TrimPrefix(line, "  #   "))
			continue
		case in:
			in = false
		}
		out = append(out, line)
	}
	text := strings.Join(out, "\n")
	text = strings.Replace(text, "provider: local", "provider: keyprotect", 1)
	text = strings.Replace(text, "  local:\n    # The root key file (mode 0600; `dekctl root create` makes it).\n    root_key_file: var/root-key.json\n", "", 1)
	c, err := Parse([]byte(text), noEnv)
	if err != nil {
		t.Fatalf("keyprotect variant: %v", err)
	}
	if c.KMS.KeyProtect.APIKeyFile != "/etc/decryptd/keyprotect-api-key" || c.KMS.KeyProtect.Timeout != 10*time.Second {
		t.Fatalf("keyprotect = %+v", c.KMS.KeyProtect)
	}
}

const base = `
mqtt:
  brokers: [ssl://127.0.0.1:8883]
  client_id: test-1
  topics: [iot-2/type/+/id/+/evt/+/fmt/+]
kms:
  provider: local
  local: {root_key_file: /k/root.json}
registry: {driver: file, path: /k/registry.json}
sinks:
  - {name: out, type: file, path: /k/out.jsonl}
dead_letter: {type: file, path: /k/dl.jsonl}
audit: {path: /k/audit.log}
`

func TestBaseIsValidWithDefaults(t *testing.T) {
	c, err := Parse([]byte(base), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.Cache.TTL != DefaultCacheTTL || c.MQTT.Workers != DefaultWorkers || c.ShutdownTimeout != DefaultShutdownTimeout ||
		c.Sinks[0].Config.(*sink.FileConfig).Keep != DefaultSinkKeep || !c.Sinks[0].Config.(*sink.FileConfig).FsyncEnabled() || c.Log.Level != "info" ||
		c.Decrypt.MaxMessageBytes != 262144 || c.Metrics.Listen != "127.0.0.1:9464" ||
		c.MQTT.MaxInFlightBytes != 64<<20 || c.Batch.MaxBytes != 4<<20 {
		t.Fatalf("defaults not applied: %+v", c)
	}
}

func TestInvalid(t *testing.T) {
	cases := []struct {
		name string
		edit func(string) string
		want []string // each must appear in the error
	}{
		{"tcp without plaintext", rep("ssl://127.0.0.1:8883", "tcp://127.0.0.1:1883"),
			[]string{"mqtt.brokers[0]: tcp:// sends readings in the clear"}},
		{"broker bad scheme", rep("ssl://127.0.0.1:8883", "http://127.0.0.1:8883"), []string{`mqtt.brokers[0]: scheme "http"`}},
		{"broker without port", rep("ssl://127.0.0.1:8883", "ssl://broker"), []string{"mqtt.brokers[0]: want scheme://host:port"}},
		{"broker with credentials", rep("ssl://127.0.0.1:8883", "ssl://u:p@h:8883"), []string{"mqtt.brokers[0]: must not carry credentials"}},
		{"no brokers", rep("brokers: [ssl://127.0.0.1:8883]", "brokers: []"), []string{"mqtt.brokers: at least one"}},
		{"no topics", rep("topics: [iot-2/type/+/id/+/evt/+/fmt/+]", "topics: []"), []string{"mqtt.topics: at least one"}},
		{"bad filter", rep("topics: [iot-2/type/+/id/+/evt/+/fmt/+]", "topics: [a/b#, ok/#]"), []string{"mqtt.topics[0]: '#' must be"}},
		{"share in filter", rep("topics: [iot-2/type/+/id/+/evt/+/fmt/+]", "topics: [$share/g/a]"), []string{"mqtt.topics[0]: write the plain filter"}},
		{"shared group slash", add("  shared_group: a/b", "mqtt"), []string{"mqtt.shared_group:"}},
		{"cert without key", add("  tls: {cert_file: /c.pem}", "mqtt"), []string{"mqtt.tls.key_file: required when cert_file is set"}},
		{"workers negative", add("  workers: -1", "mqtt"), []string{"mqtt.workers: want 1-1024, got -1"}},
		{"max in flight huge", add("  max_in_flight: 70000", "mqtt"), []string{"mqtt.max_in_flight: want 1-65535"}},
		{"connections negative", add("  connections: -2", "mqtt"), []string{"mqtt.connections: want 1-64, or 0 for the default"}},
		{"connections too many", add("  connections: 65", "mqtt"), []string{"mqtt.connections: want 1-64"}},
		{"in-flight bytes below two messages", add("  max_in_flight_bytes: 300000", "mqtt"), []string{"mqtt.max_in_flight_bytes: want 524288 (twice decrypt.max_message_bytes)"}},
		{"in-flight bytes negative", add("  max_in_flight_bytes: -1", "mqtt"), []string{"mqtt.max_in_flight_bytes: want 524288"}},
		{"batch bytes tiny", add("batch: {max_bytes: 100}", ""), []string{"batch.max_bytes: want 4096-1073741824, got 100"}},
		{"http batch bytes", add("  - {type: http, url: 'https://x/y', batch_max_bytes: 10}", "sinks"), []string{"sinks[1].batch_max_bytes: want 4096-"}},
		{"no provider", rep("provider: local", "provider: \"\""), []string{"kms.provider: required"}},
		{"bad provider", rep("provider: local", "provider: vault"), []string{`kms.provider: must be local or keyprotect, got "vault"`}},
		{"local without file", rep("local: {root_key_file: /k/root.json}", "local: {}"), []string{"kms.local.root_key_file: required for provider local"}},
		{"keyprotect incomplete", rep("provider: local\n  local: {root_key_file: /k/root.json}", "provider: keyprotect"),
			[]string{"kms.keyprotect.base_url: required", "kms.keyprotect.instance_id: required", "kms.keyprotect.root_key_id: required", "kms.keyprotect.api_key_file: set api_key_file or api_key_env"}},
		{"keyprotect both key sources", rep("provider: local\n  local: {root_key_file: /k/root.json}",
			"provider: keyprotect\n  keyprotect: {base_url: 'http://example.com', instance_id: i, root_key_id: r, api_key_file: /f, api_key_env: E}"),
			[]string{"kms.keyprotect.api_key_env: set api_key_file or api_key_env, not both", "kms.keyprotect.base_url: must be https"}},
		{"keyprotect while local", add("  keyprotect: {instance_id: x}", "kms"), []string{"kms.keyprotect: set, but kms.provider is local"}},
		{"registry driver", rep("driver: file", "driver: mysql"), []string{`registry.driver: must be file or postgres, got "mysql"`}},
		{"registry file no path", rep("registry: {driver: file, path: /k/registry.json}", "registry: {driver: file}"), []string{"registry.path: required for driver file"}},
		{"registry pg no dsn", rep("registry: {driver: file, path: /k/registry.json}", "registry: {driver: postgres}"), []string{"registry.dsn: required for driver postgres"}},
		{"cache refresh too long", add("cache: {ttl: 10m, refresh_ahead: 9m}", ""), []string{"cache.refresh_ahead: must be shorter than 90% of cache.ttl"}},
		{"cache negative ttl", add("cache: {ttl: -1s}", ""), []string{"cache.ttl: must be positive, got -1s"}},
		{"cache entries", add("cache: {max_entries: -5}", ""), []string{"cache.max_entries: must be positive, got -5"}},
		{"decrypt pattern", add("decrypt: {topic_pattern: 'a/+/b'}", ""), []string{"decrypt.topic_pattern: want exactly one level {device_id}"}},
		{"decrypt size", add("decrypt: {max_message_bytes: 10}", ""), []string{"decrypt.max_message_bytes: want 64-268435455"}},
		{"decrypt skew", add("decrypt: {clock_skew: -1m}", ""), []string{"decrypt.clock_skew: must not be negative"}},
		{"no sinks", rep("  - {name: out, type: file, path: /k/out.jsonl}\n", "  []\n"), []string{"sinks: at least one sink required"}},
		{"second sink file without path", add("  - {name: two, type: file}", "sinks"), []string{"sinks[1].path: required for type file"}},
		{"sink type", add("  - {name: two, type: pulsar}", "sinks"), []string{`sinks[1].type: must be file, stdout, mqtt, http, kafka or postgres, got "pulsar"`}},
		{"kafka sink needs its keys", add("  - {name: two, type: kafka}", "sinks"), []string{`sinks[1].brokers: at least one host:port required`, `sinks[1].topic: required`}},
		{"kafka sink keys checked", add("  - {name: two, type: kafka, brokers: [b:9093], topic: t, sasl: {mechanism: plain, username: token}}", "sinks"),
			[]string{`sinks[1].sasl: exactly one of secret_file and secret_env`}},
		{"postgres sink keys checked", add("  - {name: two, type: postgres, dsn: 'postgres://u:pw@db/x'}", "sinks"),
			[]string{`sinks[1].dsn: holds a password`}},
		{"policy pointer", add("  - {name: two, type: stdout, policy: {rules: [{pointer: data/x, action: drop}]}}", "sinks"),
			[]string{`sinks[1].policy: field policy: rules[0].pointer: bad JSON pointer`}},
		{"policy action", add("  - {name: two, type: stdout, policy: {rules: [{pointer: /data/x, action: redact}]}}", "sinks"),
			[]string{`sinks[1].policy: field policy: rules[0].action: "redact": want keep, drop, mask or pseudonymize`}},
		{"kafka keys on a stdout sink", add("  - {name: two, type: stdout, brokers: [b:9093]}", "sinks"), []string{`sinks[1].brokers: not used by type stdout`}},
		{"sink no type", add("  - {name: two}", "sinks"), []string{"sinks[1].type: required"}},
		{"sink duplicate name", add("  - {name: out, type: stdout}", "sinks"), []string{`sinks[1].name: "out" already names sinks[0]`}},
		{"sink default names clash", add("  - {type: stdout}\n  - {type: stdout}", "sinks"), []string{`sinks[2].name: "stdout" already names sinks[1]`}},
		{"sink bad name", add("  - {name: 'Bad Name', type: stdout}", "sinks"), []string{"sinks[1].name: want 1-32 of a-z 0-9 _ -"}},
		{"stdout format", add("  - {type: stdout, format: xml}", "sinks"), []string{`sinks[1].format: must be json or pretty, got "xml"`}},
		{"field of other type", add("  - {type: stdout, url: 'https://x'}", "sinks"), []string{"sinks[1].url: not used by type stdout"}},
		{"http plain", add("  - {type: http, url: 'http://example.com/x'}", "sinks"), []string{"sinks[1].url: must be https (http only to a loopback host)"}},
		{"http no url", add("  - {type: http}", "sinks"), []string{"sinks[1].url: required for type http"}},
		{"http batch", add("  - {type: http, url: 'https://x/y', batch_max: -1}", "sinks"), []string{"sinks[1].batch_max: want 1-10000"}},
		{"mqtt sink", add("  - {type: mqtt, broker: 'tcp://h:1883', topic: 'a/+'}", "sinks"),
			[]string{"sinks[1].broker: tcp:// sends plaintext", "sinks[1].topic: wildcards not allowed"}},
		{"dead letter missing", rep("dead_letter: {type: file, path: /k/dl.jsonl}\n", ""), []string{"dead_letter.type: required"}},
		{"dead letter file no path", rep("dead_letter: {type: file, path: /k/dl.jsonl}", "dead_letter: {type: file}"), []string{"dead_letter.path: required for type file"}},
		{"dead letter mqtt no topic", rep("dead_letter: {type: file, path: /k/dl.jsonl}", "dead_letter: {type: mqtt}"), []string{"dead_letter.topic: required for type mqtt"}},
		{"dead letter mqtt with path", rep("dead_letter: {type: file, path: /k/dl.jsonl}", "dead_letter: {type: mqtt, topic: dl, path: /x}"), []string{"dead_letter.path: not used by type mqtt"}},
		{"metrics listen", add("metrics: {listen: 'nonsense'}", ""), []string{"metrics.listen: want host:port"}},
		{"audit path", rep("audit: {path: /k/audit.log}\n", ""), []string{"audit.path: required"}},
		{"log level", add("log: {level: verbose}", ""), []string{`log.level: must be debug, info, warn or error, got "verbose"`}},
		{"shutdown", add("shutdown_timeout: -1s", ""), []string{"shutdown_timeout: must be positive"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			text := tc.edit(base)
			_, err := Parse([]byte(text), noEnv)
			if err == nil {
				t.Fatalf("accepted:\n%s", text)
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error is not a *ValidationError: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

// rep replaces old (which must occur) by new.
func rep(old, new string) func(string) string {
	return func(s string) string {
		if !strings.Contains(s, old) {
			panic("test edit: " + old + " not in base")
		}
		return strings.Replace(s, old, new, 1)
	}
}

// add appends line to the section named (a top-level key), or at the end
// when section is empty.
func add(line, section string) func(string) string {
	return func(s string) string {
		if section == "" {
			return s + line + "\n"
		}
		lines := strings.Split(s, "\n")
		for i, l := range lines {
			if l == section+":" {
				// Insert after the section's last indented line.
				j := i + 1
				for j < len(lines) && strings.HasPrefix(lines[j], "  ") {
					j++
				}
				out := append([]string{}, lines[:j]...)
				out = append(out, line)
				return strings.Join(append(out, lines[j:]...), "\n")
			}
		}
		panic("test edit: no section " + section)
	}
}

func TestUnknownKeyRejected(t *testing.T) {
	cases := []struct{ name, text, want string }{
		{"top level", base + "bogus: 1\n", `bogus (line 14): unknown key "bogus"`},
		{"nested", strings.Replace(base, "client_id: test-1", "client_id: test-1\n  clientid: x", 1), `mqtt.clientid (line `},
		{"in a sink", strings.Replace(base, "path: /k/out.jsonl}", "path: /k/out.jsonl, pth: x}", 1), `sinks[0].pth (line `},
		{"in a sink's policy", strings.Replace(base, "path: /k/out.jsonl}", "path: /k/out.jsonl, policy: {rulez: []}}", 1), `unknown key "rulez"`},
		{"secret in file", strings.Replace(base, "local: {root_key_file: /k/root.json}", "local: {root_key_file: /k/root.json}\n  keyprotect: {api_key: abc}", 1), `kms.keyprotect.api_key (line `},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.text), noEnv)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "abc") {
				t.Fatalf("error quotes a value: %v", err)
			}
		})
	}
}

func TestSyntaxErrors(t *testing.T) {
	cases := []struct{ name, text, want string }{
		{"two documents", base + "---\nlog: {level: info}\n", "more than one document"},
		{"duration as integer", base + "shutdown_timeout: 30\n", "shutdown_timeout (line 14): cannot unmarshal !!int `30` into a duration"},
		{"wrong shape", base + "sinks: {a: 1}\n", "line"},
		{"password in dsn", strings.Replace(base, "registry: {driver: file, path: /k/registry.json}", "registry: {driver: postgres, dsn: 'postgres://u:hunter2@h/db'}", 1), "registry.dsn: holds a password"},
		{"password kv dsn", strings.Replace(base, "registry: {driver: file, path: /k/registry.json}", "registry: {driver: postgres, dsn: 'host=h password=hunter2'}", 1), "registry.dsn: holds a password"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.text), noEnv)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error leaks the password: %v", err)
			}
		})
	}
}

func TestEmptyFileListsRequired(t *testing.T) {
	_, err := Parse(nil, noEnv)
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("err = %v", err)
	}
	for _, f := range []string{"mqtt.brokers", "mqtt.topics", "kms.provider", "registry.driver", "sinks", "dead_letter.type", "audit.path"} {
		found := false
		for _, p := range ve.Problems {
			found = found || p.Field == f
		}
		if !found {
			t.Errorf("no problem for %s in %v", f, err)
		}
	}
	if ve.Without("mqtt.brokers") == nil {
		t.Error("Without dropped everything")
	}
}

func TestEnvOverride(t *testing.T) {
	env := mapEnv(map[string]string{
		"DECRYPTD_MQTT_CLIENT_ID":          "from-env",
		"DECRYPTD_MQTT_BROKERS":            "ssl://a:8883, ssl://b:8883",
		"DECRYPTD_MQTT_WORKERS":            "9",
		"DECRYPTD_MQTT_ALLOW_PLAINTEXT":    "true",
		"DECRYPTD_METRICS_LISTEN":          ":9999",
		"DECRYPTD_CACHE_TTL":               "2h",
		"DECRYPTD_REGISTRY_DRIVER":         "postgres",
		"DECRYPTD_REGISTRY_PATH":           "",
		"DECRYPTD_REGISTRY_DSN":            "postgres://decryptd:hunter2@db/decryptd",
		"DECRYPTD_DEAD_LETTER_FSYNC":       "false",
		"DECRYPTD_KMS_LOCAL_ROOT_KEY_FILE": "/env/root.json",
	})
	c, err := Parse([]byte(base), env)
	if err != nil {
		t.Fatal(err)
	}
	if c.MQTT.ClientID != "from-env" || len(c.MQTT.Brokers) != 2 || c.MQTT.Brokers[1] != "ssl://b:8883" ||
		c.MQTT.Workers != 9 || !c.MQTT.AllowPlaintext || c.Metrics.Listen != ":9999" || c.Cache.TTL != 2*time.Hour ||
		c.Registry.Driver != "postgres" || c.Registry.DSN.Reveal() != "postgres://decryptd:hunter2@db/decryptd" ||
		c.DeadLetter.FsyncEnabled() || c.KMS.Local.RootKeyFile != "/env/root.json" {
		t.Fatalf("overrides not applied: %+v", c)
	}
	// The DSN, holding a password, never prints.
	for _, s := range []string{fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprintf("%s %q %x", c.Registry.DSN, c.Registry.DSN, c.Registry.DSN)} {
		if strings.Contains(s, "hunter2") {
			t.Fatalf("secret printed: %s", s)
		}
	}
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(js), "hunter2") || !strings.Contains(string(js), `"dsn":"\u003csecret\u003e"`) {
		t.Fatalf("json: %s", js)
	}
}

func TestEnvOverrideErrors(t *testing.T) {
	cases := []struct{ name, val, want string }{
		{"DECRYPTD_MQTT_WORKERS", "many", `DECRYPTD_MQTT_WORKERS (mqtt.workers): want an integer, got "many"`},
		{"DECRYPTD_CACHE_TTL", "forever", `DECRYPTD_CACHE_TTL (cache.ttl): want a duration`},
		{"DECRYPTD_MQTT_ALLOW_PLAINTEXT", "perhaps", `DECRYPTD_MQTT_ALLOW_PLAINTEXT (mqtt.allow_plaintext): want true or false`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(base), mapEnv(map[string]string{tc.name: tc.val}))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestEnvNames(t *testing.T) {
	names := EnvNames()
	seen := map[string]bool{}
	for _, n := range names {
		v := n[:strings.Index(n, "=")]
		if seen[v] {
			t.Errorf("two keys share %s", v)
		}
		seen[v] = true
	}
	for _, want := range []string{
		"DECRYPTD_MQTT_CLIENT_ID=mqtt.client_id", "DECRYPTD_REGISTRY_DSN=registry.dsn",
		"DECRYPTD_METRICS_LISTEN=metrics.listen", "DECRYPTD_MQTT_TLS_CA_FILE=mqtt.tls.ca_file",
		"DECRYPTD_KMS_KEYPROTECT_API_KEY_ENV=kms.keyprotect.api_key_env", "DECRYPTD_SHUTDOWN_TIMEOUT=shutdown_timeout",
	} {
		if !seen[want[:strings.Index(want, "=")]] || !contains(names, want) {
			t.Errorf("EnvNames lacks %s", want)
		}
	}
}

func TestSecret(t *testing.T) {
	s := NewSecret("hunter2")
	for _, out := range []string{s.String(), fmt.Sprint(s), fmt.Sprintf("%v|%+v|%#v|%s|%q|%x|%d", s, s, s, s, s, s, s)} {
		if strings.Contains(out, "hunter2") {
			t.Fatalf("printed: %s", out)
		}
	}
	if s.Reveal() != "hunter2" || s.String() != Redacted || NewSecret("").String() != "" {
		t.Fatal("Reveal/String")
	}
}

func TestAPIKeyAndAuthHeader(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "key")
	if err := os.WriteFile(f, []byte("  abc123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := KeyProtect{APIKeyFile: f}.APIKey(noEnv)
	if err != nil || k.Reveal() != "abc123" {
		t.Fatalf("file: %v %q", err, k.Reveal())
	}
	k, err = KeyProtect{APIKeyEnv: "KP"}.APIKey(mapEnv(map[string]string{"KP": "xyz"}))
	if err != nil || k.Reveal() != "xyz" {
		t.Fatalf("env: %v", err)
	}
	if _, err := (KeyProtect{APIKeyEnv: "KP"}).APIKey(noEnv); err == nil || !strings.Contains(err.Error(), "KP is not set") {
		t.Fatalf("missing env: %v", err)
	}
	if _, err := (KeyProtect{APIKeyFile: filepath.Join(dir, "none")}).APIKey(noEnv); err == nil {
		t.Fatal("missing file accepted")
	}
	h, err := ReadSecretFile(f) // an http sink's auth_header_file
	if err != nil || h.Reveal() != "abc123" {
		t.Fatalf("auth header: %v", err)
	}
}

func TestLoadResolvesRelativePaths(t *testing.T) {
	dir := t.TempDir()
	text := strings.NewReplacer("/k/root.json", "keys/root.json", "/k/registry.json", "registry.json").Replace(base)
	p := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.KMS.Local.RootKeyFile != filepath.Join(dir, "keys/root.json") || c.Registry.Path != filepath.Join(dir, "registry.json") || c.Audit.Path != "/k/audit.log" {
		t.Fatalf("paths: %s %s %s", c.KMS.Local.RootKeyFile, c.Registry.Path, c.Audit.Path)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml"), nil); err == nil {
		t.Fatal("missing file loaded")
	}
}

func FuzzLoad(f *testing.F) {
	// Small seeds only: the fuzzer minimises every new input it finds, and
	// minimising copies of the 8 KB example stalls short runs.
	f.Add([]byte(base))
	f.Add([]byte("kms: {provider: keyprotect, keyprotect: {base_url: 'https://kp', instance_id: i, root_key_id: r, api_key_env: K, timeout: 5s}}\n" +
		"registry: {driver: postgres, dsn: 'postgres://u@h/db'}\nsinks: [{type: mqtt, broker: 'ssl://h:8883', topic: t, tls: {ca_file: c}}]\n" +
		"dead_letter: {type: mqtt, topic: dl}\ndecrypt: {topic_pattern: 'a/{device_id}/#', clock_skew: 1m}\n"))
	f.Add([]byte("sinks: [{type: file}, {type: http, url: 'http://[::1]:80/x'}]\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte("mqtt: {brokers: ['ssl://h:1']}\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, mapEnv(map[string]string{"DECRYPTD_MQTT_WORKERS": "3", "DECRYPTD_MQTT_CLIENT_ID": "fuzz"}))
		if err == nil {
			// A config that passed must pass again (Validate is pure).
			if err := c.Validate(); err != nil {
				t.Fatalf("valid config fails revalidation: %v", err)
			}
		}
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestInputType(t *testing.T) {
	c, err := Parse([]byte(base), noEnv)
	if err != nil || c.Input.Type != InputMQTT {
		t.Fatalf("default input: %+v, %v", c.Input, err)
	}
	if _, err := Parse([]byte(base+"input: {type: mqtt}\n"), noEnv); err != nil {
		t.Fatalf("input.type mqtt: %v", err)
	}
	_, err = Parse([]byte(base+"input: {type: amqp}\n"), noEnv)
	if err == nil || !strings.Contains(err.Error(), `input.type: must be mqtt or kafka, got "amqp"`) {
		t.Fatalf("unknown input type: %v", err)
	}
	_, err = Parse([]byte(base+"input: {type: kafka}\n"), noEnv)
	if err == nil || !strings.Contains(err.Error(), "kafka.brokers: at least one host:port required; kafka.topics: at least one topic required") {
		t.Fatalf("kafka without a kafka section: %v", err)
	}
}

// The kafka input's section: defaults, and each rule naming its key.
func TestKafkaInput(t *testing.T) {
	const k = base + "input: {type: kafka}\nkafka:\n  brokers: [127.0.0.1:9092]\n  topics: [device-events]\n"
	c, err := Parse([]byte(k), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	got := c.Kafka
	if got.Group != "decryptd" || got.TopicFrom != "header" || got.TopicHeader != "mqtt_topic" || got.ClientID != "test-1" ||
		got.MaxInFlight != DefaultKafkaMaxInFlight || got.CommitInterval != time.Second || got.ReplayLookback != 100000 {
		t.Fatalf("defaults: %+v", got)
	}
	for _, tc := range []struct{ extra, want string }{
		{"  brokers: [nohost]\n", "kafka.brokers[0]: want host:port"},
		{"  topics: [\"a b\"]\n", "kafka.topics[0]: want 1-249"},
		{"  topic_from: value\n", "kafka.topic_from: must be header or key"},
		{"  topic_from: key\n", "kafka.topic_template: required for topic_from key"},
		{"  topic_from: key\n  topic_template: devices/{key}/{key}\n", "kafka.topic_template: want {key} exactly once"},
		{"  topic_from: key\n  topic_template: devices/+/{key}\n", "kafka.topic_template: "},
		{"  topic_template: devices/{key}\n", "kafka.topic_template: used only with topic_from key"},
		{"  max_in_flight: -1\n", "kafka.max_in_flight: want 1-1048576"},
		{"  sasl: {mechanism: plain, username: token}\n", "kafka.sasl: exactly one of secret_file and secret_env"},
		{"  sasl: {mechanism: gssapi}\n", "kafka.sasl.mechanism: \"gssapi\""},
		{"  allow_plaintext: true\n  tls: {ca_file: /k/ca.pem}\n", "kafka.allow_plaintext: set together with tls"},
	} {
		text := strings.Replace(k, "  brokers: [127.0.0.1:9092]\n", "", 1)
		if !strings.Contains(tc.extra, "brokers") {
			text += "  brokers: [127.0.0.1:9092]\n"
		}
		text = strings.Replace(text, "  topics: [device-events]\n", "", 1)
		if !strings.Contains(tc.extra, "topics") {
			text += "  topics: [device-events]\n"
		}
		_, err := Parse([]byte(text+tc.extra), noEnv)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.extra, err, tc.want)
		}
	}
	c, err = Parse([]byte(k+"  topic_from: key\n  topic_template: iot-2/type/monitor/id/{key}/evt/telemetry/fmt/json\n"), noEnv)
	if err != nil || c.Kafka.TopicTemplate == "" {
		t.Fatalf("topic_from key: %v", err)
	}
	// The section's keys take environment overrides like any other.
	c, err = Parse([]byte(k), func(n string) (string, bool) {
		if n == "DECRYPTD_KAFKA_GROUP" {
			return "other", true
		}
		return "", false
	})
	if err != nil || c.Kafka.Group != "other" {
		t.Fatalf("DECRYPTD_KAFKA_GROUP: %v, %q", err, c.Kafka.Group)
	}
}

// The commented kafka block of the example, uncommented with input.type
// kafka, is valid.
func TestExampleKafkaBlock(t *testing.T) {
	data, err := os.ReadFile("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	in := false
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case line == "# kafka:":
			in = true
			out = append(out, "kafka:")
			continue
		case in && strings.HasPrefix(line, "#   #"), in && strings.HasPrefix(line, "#     #"):
			continue
		case in && strings.HasPrefix(line, "#   "):
			out = append(out, "  "+strings.TrimPrefix(line, "#   "))
			continue
		case in:
			in = false
		}
		out = append(out, line)
	}
	text := strings.Replace(strings.Join(out, "\n"), "  type: mqtt\n", "  type: kafka\n", 1)
	c, err := Parse([]byte(text), noEnv)
	if err != nil {
		t.Fatalf("kafka variant: %v", err)
	}
	if c.Input.Type != InputKafka || c.Kafka.SASL.Username != "token" || c.Kafka.Topics[0] != "device-events" {
		t.Fatalf("kafka = %+v", c.Kafka)
	}
}

// A sinks entry written as a YAML alias is the entry it names.
func TestSinkAlias(t *testing.T) {
	text := strings.Replace(base, "  - {name: out, type: file, path: /k/out.jsonl}\n", "  - &out {name: out, type: file, path: /k/out.jsonl}\n  - *out\n", 1)
	_, err := Parse([]byte(text), noEnv)
	if err == nil || !strings.Contains(err.Error(), `sinks[1].name: "out" already names sinks[0]`) {
		t.Fatalf("err = %v", err)
	}
}
