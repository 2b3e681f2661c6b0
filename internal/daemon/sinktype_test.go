package daemon_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/sinktypes"
	"github.com/decryptd/decryptd/internal/testutil/vectors"
)

// A sink type added by a test, exactly as a new sink package would be: its
// typed configuration with Defaults, Validate naming fields and New, and a
// sink.Type. Nothing else of decryptd changes; registering it is the one
// line in TestAddedSinkType.

// memoryConfig is the memory type's configuration: capacity records.
type memoryConfig struct {
	Capacity int `yaml:"capacity"`

	held *memoryHeld
}

func (c *memoryConfig) Defaults() {
	if c.Capacity == 0 {
		c.Capacity = 100
	}
}

func (c *memoryConfig) Validate(sink.Env) error {
	var p sink.Problems
	if c.Capacity < 1 {
		p.Add("capacity", "must be positive, got %d", c.Capacity)
	}
	return p.Err()
}

func (c *memoryConfig) New(_ context.Context, name string, _ sink.Env) (sink.Sink, error) {
	return &memorySink{name: name, capacity: c.Capacity, held: c.held}, nil
}

type memoryHeld struct {
	mu      sync.Mutex
	records []sink.Record
}

func (h *memoryHeld) snapshot() []sink.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]sink.Record(nil), h.records...)
}

type memorySink struct {
	name     string
	capacity int
	held     *memoryHeld
}

func (s *memorySink) Name() string { return s.name }

func (s *memorySink) Write(_ context.Context, batch []sink.Record) error {
	if err := sink.CheckBatch(batch); err != nil {
		return err
	}
	s.held.mu.Lock()
	defer s.held.mu.Unlock()
	if len(s.held.records)+len(batch) > s.capacity {
		return fmt.Errorf("memory sink %q: full", s.name)
	}
	for _, r := range batch {
		s.held.records = append(s.held.records, sink.Record{ID: r.ID, DeviceID: r.DeviceID, JSON: bytes.Clone(r.JSON)})
	}
	return nil
}

func (s *memorySink) Flush(context.Context) error { return nil }
func (s *memorySink) Close(context.Context) error { return nil }

func memoryType(held *memoryHeld) sink.Type {
	return sink.Type{Name: "memory", NewConfig: func() sink.Config { return &memoryConfig{held: held} }}
}

// TestAddedSinkType shows that a sink type is its own code plus one
// registration: the configuration decodes, defaults and validates its
// entry, and the daemon builds it and delivers records to it.
func TestAddedSinkType(t *testing.T) {
	dir := t.TempDir()
	v := vectors.Load(t)
	setupKeys(t, dir, v)
	held := &memoryHeld{}
	reg, err := sink.NewRegistry(append(sinktypes.Types(), memoryType(held))...) // the registration line
	if err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf(`
mqtt: {brokers: ["ssl://127.0.0.1:8883"], client_id: t, topics: ["iot-2/type/+/id/+/evt/+/fmt/+"]}
kms: {provider: local, local: {root_key_file: %[1]q}}
registry: {driver: file, path: %[2]q}
sinks:
  - {name: mem, type: memory}
  - {name: out, type: file, path: %[3]q}
dead_letter: {type: file, path: %[4]q}
audit: {path: %[5]q}
`, filepath.Join(dir, "root-key.json"), filepath.Join(dir, "registry.json"), filepath.Join(dir, "records.jsonl"),
		filepath.Join(dir, "dead-letter.jsonl"), filepath.Join(dir, "audit.log"))

	// Its own keys are checked by its Validate, named under its entry, and
	// a key of another type is refused as such.
	for _, bad := range []struct{ entry, want string }{
		{"{name: mem, type: memory, capacity: -1}", "sinks[0].capacity: must be positive, got -1"},
		{"{name: mem, type: memory, path: /x}", "sinks[0].path: not used by type memory"},
		{"{name: mem, type: memory, bogus: 1}", `unknown key "bogus"`},
	} {
		_, err := config.ParseWith([]byte(strings.Replace(yaml, "{name: mem, type: memory}", bad.entry, 1)), nil, reg)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: err %v, want %q", bad.entry, err, bad.want)
		}
	}
	if _, err := config.Parse([]byte(yaml), nil); err == nil || !strings.Contains(err.Error(), `sinks[0].type: must be file, stdout, mqtt, http, kafka or postgres, got "memory"`) {
		t.Errorf("without the registration: %v", err)
	}

	cfg, err := config.ParseWith([]byte(yaml), nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	if c := cfg.Sinks[0].Config.(*memoryConfig); c.Capacity != 100 {
		t.Fatalf("defaults not applied: capacity %d", c.Capacity)
	}

	// Replay runs the daemon's pipeline without MQTT: the vectors that
	// decrypt reach the memory sink beside the file sink.
	var in bytes.Buffer
	want := 0
	for _, c := range v.Cases {
		if !c.Expect.OK {
			continue
		}
		want++
		d := sink.DeadLetter{Reason: "unknown_key", Message: intake.Message{Topic: c.Topic, Payload: []byte(c.Message), ReceivedAt: time.Now()}}
		in.Write(d.Record().JSON)
		in.WriteByte('\n')
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sum, err := daemon.Replay(ctx, daemon.Options{Config: cfg}, &in)
	if err != nil {
		t.Fatal(err)
	}
	got := held.snapshot()
	if sum.Delivered == 0 || len(got) != sum.Delivered || len(readLines(t, filepath.Join(dir, "records.jsonl"))) != sum.Delivered {
		t.Fatalf("summary %+v; memory sink holds %d records", sum, len(got))
	}
	for _, r := range got {
		if r.ID == "" || !bytes.HasPrefix(r.JSON, []byte("{")) {
			t.Errorf("record %q: %s", r.ID, r.JSON)
		}
	}
	t.Logf("%d of %d decryptable vectors delivered to the added sink type", len(got), want)
}
