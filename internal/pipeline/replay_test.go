package pipeline_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/sink"
)

func deadLetterLine(t *testing.T, reason, topic, payload string, dup bool) string {
	t.Helper()
	d := sink.DeadLetter{Reason: reason, Error: "x", Message: intake.Message{Topic: topic, ReceivedAt: received, Redelivered: dup, Payload: []byte(payload)}}
	return string(d.Record().JSON)
}

func TestReplay(t *testing.T) {
	// Every Open stands for one KMS unwrap here, so the summary's count is
	// known: seven messages, one opened twice more after transient faults,
	// each of the two duplicates once more after waiting for earlier
	// deliveries.
	var unwraps atomic.Uint64
	e := newEnv(t, func(o *pipeline.Options) {
		o.Opener = countingOpener{o.Opener, &unwraps}
		o.KMSUnwraps = unwraps.Load
	})
	// r9 was delivered already: its DUP copy in the input is a duplicate
	// (redelivery), and so is its copy without DUP (a device's repeat).
	process(t, e, msg("ok:r9"))
	r9 := msg("ok:r9").Topic
	in := strings.Join([]string{
		deadLetterLine(t, "unknown_key", "t/1", "ok:r1", false),
		deadLetterLine(t, "unknown_key", "t/2", "ok:r2", false),
		"not a dead letter",
		deadLetterLine(t, "auth_failed", "t/3", "fail:auth_failed", false),
		deadLetterLine(t, "malformed", "t/4", "fail:malformed", true),
		deadLetterLine(t, "unknown_key", r9, "ok:r9", true),
		deadLetterLine(t, "unknown_key", r9, "ok:r9", false),
		"",
		deadLetterLine(t, "unknown_key", "t/5", "transient:2:r5", false),
	}, "\n") + "\n"

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sum, err := pipeline.Replay(ctx, e.p, strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"processed": 7, "delivered": 3, "dead_lettered": 2, "duplicates": 2, "bad_lines": 1}
	got := map[string]int{"processed": sum.Processed, "delivered": sum.Delivered, "dead_lettered": sum.DeadLettered, "duplicates": sum.Duplicates, "bad_lines": sum.BadLines}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d", k, got[k], v)
		}
	}
	if c := sum.DuplicatesByCause; len(c) != 2 || c["redelivery"] != 1 || c["repeat"] != 1 {
		t.Errorf("duplicates_by_cause = %v, want redelivery 1, repeat 1", c)
	}
	if sum.KMSUnwraps != 11 {
		t.Errorf("kms_unwraps = %d, want 11", sum.KMSUnwraps)
	}
	if sum.Reasons["auth_failed"] != 1 || sum.Reasons["malformed"] != 1 || sum.Reasons["replay"] != 0 {
		t.Errorf("reasons %v", sum.Reasons)
	}
	if _, ok := sum.Reasons["sink_rejected"]; !ok {
		t.Errorf("reasons %v: every reason should be listed", sum.Reasons)
	}
	b, _ := json.Marshal(sum)
	for _, k := range []string{`"processed":7`, `"kms_unwraps":`, `"reasons":{`, `"duplicates_by_cause":{"redelivery":1,"repeat":1}`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("summary JSON %s lacks %s", b, k)
		}
	}
	// Records carry the original receive time; dead letters their topic.
	recs := e.a.records()
	if len(recs) != 4 { // r9 first, then r1, r2, r5
		t.Fatalf("sink a holds %v", ids(recs))
	}
	for _, r := range recs {
		if !strings.Contains(string(r.JSON), `"received_at":"2026-11-25T20:16:01Z"`) {
			t.Errorf("record %s lost its receive time", r.JSON)
		}
	}
}

func TestReplayContextEnds(t *testing.T) {
	e := newEnv(t, nil)
	e.a.setGate(make(chan struct{})) // stalls forever
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	in := deadLetterLine(t, "unknown_key", "t/1", "ok:r1", false) + "\n"
	_, err := pipeline.Replay(ctx, e.p, strings.NewReader(in))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Replay: %v, want DeadlineExceeded", err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	_ = e.p.Close(ctx2)
	e.close = func() {}
}

type countingOpener struct {
	pipeline.Opener
	n *atomic.Uint64
}

func (c countingOpener) Open(ctx context.Context, m decrypt.Message) (decrypt.Record, error) {
	c.n.Add(1)
	return c.Opener.Open(ctx, m)
}

// A dead letter from the Kafka input that fails again is dead-lettered
// naming its input and original record (topic, partition, offset); one
// that could not be mapped to an MQTT topic (only its position names it)
// is read back and replayed too: dead-lettered again with its reason, or
// delivered once it decrypts.
func TestReplayKeepsKafkaPosition(t *testing.T) {
	e := newEnv(t, nil)
	letter := func(topic, payload string, off int64) string {
		d := sink.DeadLetter{Reason: "auth_failed", Error: "x", Message: intake.Message{Source: "kafka", Topic: topic, ReceivedAt: received, Payload: []byte(payload),
			Position: intake.LogPosition{Topic: "device-events", Partition: 4, Offset: off}}}
		return string(d.Record().JSON)
	}
	mqtt := deadLetterLine(t, "auth_failed", "t/m", "fail:auth_failed", false)
	in := strings.Join([]string{
		letter("t/k", "fail:auth_failed", 17),
		letter("", "fail:malformed", 18),
		letter("", "ok:k19", 19),
		mqtt,
	}, "\n") + "\n"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sum, err := pipeline.Replay(ctx, e.p, strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if sum.Processed != 4 || sum.Delivered != 1 || sum.DeadLettered != 3 || sum.BadLines != 0 ||
		sum.Reasons["auth_failed"] != 2 || sum.Reasons["malformed"] != 1 {
		t.Fatalf("summary %+v", sum)
	}
	if recs := e.a.records(); len(recs) != 1 || recs[0].ID != "k19" {
		t.Fatalf("sink a holds %v, want k19", ids(recs))
	}
	got := map[string]sink.DeadLetter{}
	for _, r := range e.dl.records() {
		var d sink.DeadLetter
		if err := json.Unmarshal(r.JSON, &d); err != nil {
			t.Fatal(err)
		}
		got[string(d.Payload)+"|"+d.Topic] = d
	}
	for _, c := range []struct {
		payload, topic, reason string
		off                    int64
	}{
		{"fail:auth_failed", "t/k", "auth_failed", 17},
		{"fail:malformed", "", "malformed", 18},
	} {
		d, ok := got[c.payload+"|"+c.topic]
		want := intake.LogPosition{Topic: "device-events", Partition: 4, Offset: c.off}
		if !ok || d.Source != "kafka" || d.Topic != c.topic || d.Reason != c.reason || d.Position != want {
			t.Errorf("dead letter of %s: %+v, want input kafka, topic %q, reason %s, position %+v", c.payload, d, c.topic, c.reason, want)
		}
	}
	// An MQTT dead letter of before (no input, no position) stays without.
	if d, ok := got["fail:auth_failed|t/m"]; !ok || d.Source != "" || !d.Position.IsZero() {
		t.Errorf("the MQTT dead letter: %+v", d)
	}
	for _, r := range e.dl.records() {
		if strings.Contains(string(r.JSON), `"t/m"`) && (strings.Contains(string(r.JSON), `"input"`) || strings.Contains(string(r.JSON), `"kafka"`)) {
			t.Errorf("an MQTT dead letter gained fields: %s", r.JSON)
		}
	}
	if len(got) != 3 {
		t.Fatalf("dead letters %v", got)
	}
}
