package e2etest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

// TopicFilter is what the MQTT daemons subscribe to (Watson IoT's layout).
const TopicFilter = "iot-2/type/+/id/+/evt/+/fmt/+"

// Files are the files one daemon's configuration names, in a folder of
// its own.
type Files struct {
	Dir        string // the daemon's folder
	Config     string // config.yaml
	Records    string // records.jsonl, the default file sink
	DeadLetter string // dead-letter.jsonl
	Log        string // decryptd.log, where the test writes the daemon's output
}

// NewFiles makes the folder parent/name and names the files in it.
func NewFiles(tb testing.TB, parent, name string) Files {
	tb.Helper()
	dir := filepath.Join(parent, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	return Files{
		Dir:        dir,
		Config:     filepath.Join(dir, "config.yaml"),
		Records:    filepath.Join(dir, "records.jsonl"),
		DeadLetter: filepath.Join(dir, "dead-letter.jsonl"),
		Log:        filepath.Join(dir, "decryptd.log"),
	}
}

// FileSink is a sinks list item (indented two spaces): an fsynced file
// sink called name writing path.
func FileSink(name, path string) string {
	return fmt.Sprintf("  - name: %s\n    type: file\n    path: %q\n    fsync: true\n", name, path)
}

// LocalKMS is the kms section for a local root key file.
func LocalKMS(rootKey string) string {
	return fmt.Sprintf("kms:\n  provider: local\n  local:\n    root_key_file: %q\n", rootKey)
}

// MQTT is one daemon's MQTT input: a client certificate of its own (CN
// decryptd-ClientID) for the broker's mutual TLS, TopicFilter.
type MQTT struct {
	Broker      *mosquittotest.Broker
	ClientID    string
	SharedGroup string // "": a plain subscription
	MaxInFlight int
	Workers     int
	Connections int    // 0: the daemon's default (it follows GOMAXPROCS)
	KeepAlive   string // "": the daemon's default (30s)
}

// MQTTInput is the mqtt section for m.
func MQTTInput(m MQTT) string {
	cert := m.Broker.ClientCert("decryptd-" + m.ClientID)
	var b strings.Builder
	fmt.Fprintf(&b, "mqtt:\n  brokers: [%q]\n  client_id: %q\n  topics: [%q]\n  shared_group: %q\n", m.Broker.SSLURL, m.ClientID, TopicFilter, m.SharedGroup)
	fmt.Fprintf(&b, "  tls:\n    ca_file: %q\n    cert_file: %q\n    key_file: %q\n", cert.CA, cert.Cert, cert.Key)
	fmt.Fprintf(&b, "  max_in_flight: %d\n  workers: %d\n", m.MaxInFlight, m.Workers)
	if m.Connections > 0 {
		fmt.Fprintf(&b, "  connections: %d\n", m.Connections)
	}
	if m.KeepAlive != "" {
		fmt.Fprintf(&b, "  keep_alive: %s\n", m.KeepAlive)
	}
	b.WriteString("  connect_timeout: 5s\n")
	return b.String()
}

// Config is a daemon's configuration file but for what every one has.
type Config struct {
	Input    string // the input sections (MQTTInput's, or input: and kafka:)
	KMS      string // the kms section (LocalKMS's, or another provider's)
	Registry string // the file registry's path
	Sinks    string // sinks list items (indented two spaces); "": FileSink("records", Files.Records)
	Sections string // top-level sections written after log (e.g. decrypt)
	Shutdown string // shutdown_timeout; "": 15s
	Extra    string // top-level YAML appended verbatim, last
	// ShowLog is how many bytes of the log's end the test logs when it
	// failed; 0: 8 KiB.
	ShowLog int
}

// WriteConfig writes c as f.Config with f's dead letter and audit log in
// f.Dir, metrics on 127.0.0.1:0 and JSON logs at level info, and returns
// the YAML. It registers, before any daemon can run on the file, a cleanup
// that logs the end of f.Log if the test failed: it runs after they
// stopped, so the log is complete, and shown once.
func WriteConfig(tb testing.TB, f Files, c Config) string {
	tb.Helper()
	if c.Sinks == "" {
		c.Sinks = FileSink("records", f.Records)
	}
	if c.Shutdown == "" {
		c.Shutdown = "15s"
	}
	if c.ShowLog == 0 {
		c.ShowLog = 8 << 10
	}
	var b strings.Builder
	b.WriteString(c.Input)
	b.WriteString(c.KMS)
	fmt.Fprintf(&b, "registry:\n  driver: file\n  path: %q\n", c.Registry)
	fmt.Fprintf(&b, "sinks:\n%s", c.Sinks)
	fmt.Fprintf(&b, "dead_letter:\n  type: file\n  path: %q\n", f.DeadLetter)
	b.WriteString("metrics:\n  listen: 127.0.0.1:0\n")
	fmt.Fprintf(&b, "audit:\n  path: %q\n", filepath.Join(f.Dir, "audit.log"))
	b.WriteString("log:\n  level: info\n  format: json\n")
	b.WriteString(c.Sections)
	fmt.Fprintf(&b, "shutdown_timeout: %s\n", c.Shutdown)
	b.WriteString(c.Extra)
	if err := os.WriteFile(f.Config, []byte(b.String()), 0o600); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("decryptd log %s:\n%s", f.Log, mosquittotest.Tail(f.Log, c.ShowLog))
		}
	})
	return b.String()
}

// Counts counts each id's occurrences.
func Counts(ids []string) map[string]int {
	m := make(map[string]int, len(ids))
	for _, id := range ids {
		m[id]++
	}
	return m
}
