package kafka

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/sink/sinktest"
)

func newSink(t testing.TB, c *kfake.Cluster, topic string, mod func(*Config)) *Sink {
	t.Helper()
	cfg := Config{Name: "analytics", Brokers: c.ListenAddrs(), Topic: topic, AllowPlaintext: true}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func TestContract(t *testing.T) {
	sinktest.Run(t, func(t *testing.T) sinktest.Subject {
		// One partition: the suite checks order across the whole batch.
		c := fakeCluster(t, "records", 1)
		s := newSink(t, c, "records", nil)
		return sinktest.Subject{
			Sink: s,
			Read: func(t *testing.T) [][]byte {
				var out [][]byte
				for _, h := range readTopic(t, c.ListenAddrs(), "records") {
					out = append(out, h.Value)
				}
				return out
			},
			Async: true,
			Stall: func(t *testing.T) func() {
				release := make(chan struct{})
				var once sync.Once
				c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
					c.KeepControl()
					select {
					case <-release:
						c.DropControl()
					default:
						c.SleepControl(func() { <-release })
					}
					return nil, nil, false
				})
				return func() { once.Do(func() { close(release) }) }
			},
		}
	})
}

// withKeys gives sinktest's records key names, as the pipeline does.
func withKeys(recs []sink.Record) []sink.Record {
	for i := range recs {
		recs[i].KeyID, recs[i].KeyVersion = "device/"+recs[i].DeviceID, fmt.Sprintf("v%d", i%2+1)
	}
	return recs
}

// checkHeld checks that the topic holds every record once, each device's
// records in the order written, keyed by device, with the headers.
func checkHeld(t *testing.T, got []held, want []sink.Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("topic holds %d records, want %d", len(got), len(want))
	}
	byID := map[string]sink.Record{}
	perDevice := map[string][]string{}
	for _, r := range want {
		byID[r.ID] = r
		perDevice[r.DeviceID] = append(perDevice[r.DeviceID], r.ID)
	}
	seen := map[string][]string{}
	partOf := map[string]int32{}
	for _, h := range got {
		id := h.Headers[HeaderRecordID]
		r, ok := byID[id]
		if !ok {
			t.Fatalf("record_id header %q names no record written", id)
		}
		if h.Key != r.DeviceID || string(h.Value) != string(r.JSON) {
			t.Fatalf("record %s: key %q value %.80q; want key %q and the record's JSON", id, h.Key, h.Value, r.DeviceID)
		}
		if h.Headers[HeaderKeyID] != r.KeyID || h.Headers[HeaderKeyVersion] != r.KeyVersion {
			t.Fatalf("record %s: headers %v, want key_id %q key_version %q", id, h.Headers, r.KeyID, r.KeyVersion)
		}
		if p, ok := partOf[r.DeviceID]; ok && p != h.Partition {
			t.Fatalf("device %s on partitions %d and %d", r.DeviceID, p, h.Partition)
		}
		partOf[r.DeviceID] = h.Partition
		seen[r.DeviceID] = append(seen[r.DeviceID], id)
	}
	for dev, ids := range perDevice {
		if strings.Join(seen[dev], ",") != strings.Join(ids, ",") {
			t.Fatalf("device %s: records out of order or missing", dev)
		}
	}
}

func TestKeysHeadersPerDeviceOrder(t *testing.T) {
	c := fakeCluster(t, "telemetry", 6)
	s := newSink(t, c, "telemetry", nil)
	var all []sink.Record
	for b := range 5 {
		batch := withKeys(sinktest.Records(fmt.Sprintf("b%d", b), 40))
		if err := s.Write(t.Context(), batch); err != nil {
			t.Fatalf("Write: %v", err)
		}
		all = append(all, batch...)
	}
	// A record no key opened carries no key headers.
	plain := sinktest.Records("plain", 1)
	if err := s.Write(t.Context(), plain); err != nil {
		t.Fatalf("Write: %v", err)
	}
	got := readTopic(t, c.ListenAddrs(), "telemetry")
	last := got[len(got)-1]
	for _, h := range got {
		if h.Headers[HeaderRecordID] == plain[0].ID {
			last = h
		}
	}
	if strings.Join(last.HeaderSeq, ",") != HeaderRecordID {
		t.Fatalf("record without key: headers %v, want only %s", last.HeaderSeq, HeaderRecordID)
	}
	checkHeld(t, got, append(all, plain...))
	parts := map[int32]bool{}
	for _, h := range got {
		parts[h.Partition] = true
	}
	if len(parts) < 2 {
		t.Fatalf("three devices over 6 partitions all landed on %v: keying is not by device", parts)
	}
}

// TestReadByKcat reads the topic back with Debian's kcat (librdkafka), an
// independent client: every record, per-device order, headers.
func TestReadByKcat(t *testing.T) {
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatalf("kcat not found (scripts/test-deps.sh installs it: apt-get install kcat): %v", err)
	}
	c := fakeCluster(t, "telemetry", 3)
	s := newSink(t, c, "telemetry", nil)
	var all []sink.Record
	for b := range 3 {
		batch := withKeys(sinktest.Records(fmt.Sprintf("k%d", b), 30))
		if err := s.Write(t.Context(), batch); err != nil {
			t.Fatalf("Write: %v", err)
		}
		all = append(all, batch...)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, kcat, "-b", strings.Join(c.ListenAddrs(), ","), "-C", "-t", "telemetry",
		"-o", "beginning", "-e", "-q", "-J", "-X", "broker.address.family=v4")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kcat: %v\n%s", err, stderr.String())
	}
	var got []held
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var m struct {
			Partition int32    `json:"partition"`
			Key       string   `json:"key"`
			Payload   string   `json:"payload"`
			Headers   []string `json:"headers"`
		}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("kcat line %.200q: %v", line, err)
		}
		h := held{Partition: m.Partition, Key: m.Key, Value: []byte(m.Payload), Headers: map[string]string{}}
		for i := 0; i+1 < len(m.Headers); i += 2 {
			h.Headers[m.Headers[i]] = m.Headers[i+1]
		}
		got = append(got, h)
	}
	checkHeld(t, got, all)
}

func TestSASL(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "apikey")
	if err := os.WriteFile(secret, []byte("s3cret-api-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, method, mech string
		env                bool
	}{
		{"event_streams_plain_file", "PLAIN", MechPlain, false},
		{"scram_sha512_env", "SCRAM-SHA-512", MechScramSHA512, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fakeCluster(t, "records", 1, kfake.EnableSASL(), kfake.Superuser(tc.method, "token", "s3cret-api-key"))
			sasl := SASL{Mechanism: tc.mech, Username: "token", SecretFile: secret}
			var opts []Option
			if tc.env {
				sasl.SecretFile, sasl.SecretEnv = "", "KAFKA_PASSWORD"
				opts = append(opts, WithGetenv(func(k string) (string, bool) { return "s3cret-api-key", k == "KAFKA_PASSWORD" }))
			}
			cfg := Config{Name: "es", Brokers: c.ListenAddrs(), Topic: "records", AllowPlaintext: true, SASL: sasl}
			s, err := New(t.Context(), cfg, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(context.Background())
			recs := sinktest.Records("sasl", 3)
			if err := s.Write(t.Context(), recs); err != nil {
				t.Fatalf("Write: %v", err)
			}
			// A wrong password is refused, and the error does not show it.
			cfg.SASL = SASL{Mechanism: tc.mech, Username: "token", SecretEnv: "WRONG"}
			bad, err := New(t.Context(), cfg, WithGetenv(func(string) (string, bool) { return "not-the-key", true }))
			if err != nil {
				t.Fatal(err)
			}
			defer bad.Close(context.Background())
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			defer cancel()
			err = bad.Write(ctx, sinktest.Records("bad", 1))
			if err == nil {
				t.Fatal("Write with a wrong password succeeded")
			}
			if strings.Contains(err.Error(), "not-the-key") || strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("error shows the secret: %v", err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	ok := Config{Name: "k", Brokers: []string{"broker-0.example:9093"}, Topic: "telemetry.analytics",
		SASL: SASL{Mechanism: MechPlain, Username: "token", SecretEnv: "ES_API_KEY"}}
	if err := ok.Validate(sink.Env{}); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for _, tc := range []struct {
		field string
		mod   func(*Config)
	}{
		{"brokers", func(c *Config) { c.Brokers = nil }},
		{"brokers[0]", func(c *Config) { c.Brokers = []string{"no-port"} }},
		{"topic", func(c *Config) { c.Topic = "" }},
		{"topic", func(c *Config) { c.Topic = "bad topic" }},
		{"tls", func(c *Config) { c.TLS.CertFile = "c.pem" }},
		{"allow_plaintext", func(c *Config) { c.AllowPlaintext = true; c.TLS.CAFile = "ca.pem" }},
		{"sasl.mechanism", func(c *Config) { c.SASL.Mechanism = "gssapi" }},
		{"sasl.mechanism", func(c *Config) { c.SASL.Mechanism = "" }},
		{"sasl.username", func(c *Config) { c.SASL.Username = "" }},
		{"sasl", func(c *Config) { c.SASL.SecretFile = "/run/secrets/key" }},
		{"sasl", func(c *Config) { c.SASL.SecretEnv = "" }},
		{"sasl.username", func(c *Config) { c.SASL.Mechanism = MechOAuthBearer }},
	} {
		c := ok
		c.Brokers = append([]string(nil), ok.Brokers...)
		tc.mod(&c)
		err := c.Validate(sink.Env{})
		if err == nil || !strings.Contains(err.Error(), tc.field+":") {
			t.Errorf("%s: got %v, want an error naming %s", tc.field, err, tc.field)
		}
	}
}
