package kafkainput

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/sink"
)

// failOpener fails every message as the decryptor fails a forged one.
type failOpener struct{}

func (failOpener) Open(_ context.Context, m decrypt.Message) (decrypt.Record, error) {
	return decrypt.Record{}, fmt.Errorf("%w: test", decrypt.ErrAuthFailed)
}
func (o failOpener) TryOpen(m decrypt.Message) (decrypt.Record, error) {
	return o.Open(context.Background(), m)
}
func (failOpener) Forget(decrypt.Record) {}

// linesSink keeps what it is written as a dead-letter file would: one
// JSON line per record.
type linesSink struct {
	name  string
	mu    sync.Mutex
	buf   bytes.Buffer
	lines int
}

func (s *linesSink) Name() string { return s.name }
func (s *linesSink) Write(_ context.Context, batch []sink.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range batch {
		s.buf.Write(r.JSON)
		s.buf.WriteByte('\n')
		s.lines++
	}
	return nil
}
func (s *linesSink) Flush(context.Context) error { return nil }
func (s *linesSink) Close(context.Context) error { return nil }
func (s *linesSink) n() int                      { s.mu.Lock(); defer s.mu.Unlock(); return s.lines }

// TestDeadLetterNamesRecord: records of the Kafka input that cannot be
// decrypted reach the dead-letter file through the pipeline naming their
// input and record (topic, partition, offset), also a record whose MQTT
// topic could not be mapped (no header), and every such line reads back.
func TestDeadLetterNamesRecord(t *testing.T) {
	const parts, per = 3, 20
	c := fakeCluster(t, parts)
	produce(t, c, parts, per, 4)
	// One record on partition 2, offset per, that names no MQTT topic.
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.DefaultProduceTopic(testTopic))
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(context.Background(), &kgo.Record{Partition: 2, Value: []byte(fmt.Sprintf("2:%d", per))}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cl.Close()

	dl := &linesSink{name: "dead_letter"}
	p, err := pipeline.New(pipeline.Options{Opener: failOpener{}, Sinks: []sink.Sink{&linesSink{name: "a"}}, DeadLetter: dl, Linger: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	in := newInput(t, c, p, nil)
	go in.Run(context.Background())
	const total = parts*per + 1
	waitFor(t, 30*time.Second, "every record dead-lettered", func() bool { return dl.n() == total })
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := in.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := p.Close(sctx); err != nil {
		t.Fatalf("pipeline Close: %v", err)
	}

	seen := map[intake.LogPosition]bool{}
	dl.mu.Lock()
	defer dl.mu.Unlock()
	for d, err := range sink.ReadDeadLetters(bytes.NewReader(dl.buf.Bytes())) {
		if err != nil {
			t.Fatalf("a dead letter does not read back: %v", err)
		}
		part, seq := parseValue(t, d.Payload)
		want := intake.LogPosition{Topic: testTopic, Partition: int32(part), Offset: int64(seq)}
		if d.Source != Source || d.Position != want || d.Reason != "auth_failed" {
			t.Errorf("dead letter of %s: input %q, position %+v, reason %s; want kafka, %+v, auth_failed", d.Payload, d.Source, d.Position, d.Reason, want)
		}
		if unmapped := part == 2 && seq == per; unmapped != (d.Topic == "") {
			t.Errorf("dead letter of %s: topic %q", d.Payload, d.Topic)
		}
		seen[d.Position] = true
	}
	if len(seen) != total {
		t.Fatalf("%d distinct records dead-lettered, want %d", len(seen), total)
	}
}
