package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/testutil/metrictest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

type env struct {
	p     *pipeline.Pipeline
	op    *fakeOpener
	a, b  *fakeSink
	dl    *fakeSink
	reg   *prometheus.Registry
	close func()
}

var received = time.Date(2026, 11, 25, 20, 16, 1, 0, time.UTC)

func newEnv(t *testing.T, mut func(*pipeline.Options)) *env {
	t.Helper()
	e := &env{op: newOpener(), a: newSink("a"), b: newSink("b"), dl: newSink("dead_letter"), reg: prometheus.NewRegistry()}
	o := pipeline.Options{
		Opener: e.op, Sinks: []sink.Sink{e.a, e.b}, DeadLetter: e.dl,
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		Registerer: e.reg,
		Now:        func() time.Time { return received.Add(2 * time.Second) },
	}
	if mut != nil {
		mut(&o)
	}
	p, err := pipeline.New(o)
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
	var once sync.Once
	e.close = func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := p.Close(ctx); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	t.Cleanup(func() { e.close() })
	return e
}

func msg(payload string) intake.Message {
	return intake.Message{Topic: "t/" + strings.ReplaceAll(payload, ":", "/"), Payload: []byte(payload), ReceivedAt: received}
}

// moved is m on another topic: not an exact repeat of m.
func moved(m intake.Message) intake.Message {
	m.Topic = "elsewhere/" + m.Topic
	return m
}

func process(t *testing.T, e *env, m intake.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := handle(e.p, ctx, m); err != nil {
		t.Fatalf("Process(%s): %v", m.Payload, err)
	}
}

func ids(rs []sink.Record) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.ID)
	}
	return out
}

func TestDeliverToEverySink(t *testing.T) {
	e := newEnv(t, nil)
	process(t, e, msg("ok:r1"))
	for _, s := range []*fakeSink{e.a, e.b} {
		recs := s.records()
		if len(recs) != 1 || recs[0].ID != "r1" || recs[0].DeviceID != "dev-r1" {
			t.Fatalf("sink %s holds %v, want r1", s.name, ids(recs))
		}
		var got map[string]any
		if err := json.Unmarshal(recs[0].JSON, &got); err != nil {
			t.Fatalf("record JSON: %v", err)
		}
		if got["topic"] != "t/ok/r1" || got["received_at"] != "2026-11-25T20:16:01Z" {
			t.Errorf("record %s", recs[0].JSON)
		}
	}
	if n := len(e.dl.records()); n != 0 {
		t.Errorf("dead letters: %d, want 0", n)
	}
	if v := metrictest.Value(t, e.reg, "decryptd_records_delivered_total", "sink", "a"); v != 1 {
		t.Errorf("delivered{a} = %v", v)
	}
	if v := metrictest.Value(t, e.reg, "decryptd_messages_processed_total", "outcome", "delivered"); v != 1 {
		t.Errorf("processed{delivered} = %v", v)
	}
	if v := metrictest.Value(t, e.reg, "decryptd_end_to_end_latency_seconds"); v != 1 {
		t.Errorf("end-to-end observations = %v", v)
	}
	if v := metrictest.Value(t, e.reg, "decryptd_decrypt_duration_seconds"); v != 1 {
		t.Errorf("decrypt duration observations = %v", v)
	}
}

func TestMetricsPreRegistered(t *testing.T) {
	e := newEnv(t, nil)
	for _, r := range decrypt.Reasons() {
		if v := metrictest.Value(t, e.reg, "decryptd_decrypt_failures_total", "reason", r); v != 0 {
			t.Errorf("failures{%s} = %v", r, v)
		}
		if v := metrictest.Value(t, e.reg, "decryptd_dead_letters_total", "reason", r); v != 0 {
			t.Errorf("dead_letters{%s} = %v", r, v)
		}
	}
	for _, s := range []string{"a", "b", "dead_letter"} {
		if v := metrictest.Value(t, e.reg, "decryptd_sink_up", "sink", s); v != 1 {
			t.Errorf("sink_up{%s} = %v", s, v)
		}
	}
	metrictest.Value(t, e.reg, "decryptd_transient_retries_total", "cause", "kms")
	metrictest.Value(t, e.reg, "decryptd_transient_retries_total", "cause", "sink")
	metrictest.Value(t, e.reg, "decryptd_duplicates_total")
	if err := testutil.GatherAndCompare(e.reg, strings.NewReader(`
# HELP decryptd_duplicates_total Exact repeats of messages already delivered, acknowledged again without a new record, by cause: redelivery (the broker's, DUP set), repeat (the device sent it again, e.g. a QoS 1 resend).
# TYPE decryptd_duplicates_total counter
decryptd_duplicates_total{cause="redelivery"} 0
decryptd_duplicates_total{cause="repeat"} 0
`), "decryptd_duplicates_total"); err != nil {
		t.Error(err)
	}
}

func TestDeadLetterEveryReason(t *testing.T) {
	for _, reason := range decrypt.Reasons() {
		t.Run(reason, func(t *testing.T) {
			e := newEnv(t, nil)
			m := msg("fail:" + reason)
			m.Redelivered = true
			process(t, e, m)
			if n := len(e.a.records()) + len(e.b.records()); n != 0 {
				t.Fatalf("%d records reached the sinks", n)
			}
			dls := e.dl.records()
			if len(dls) != 1 {
				t.Fatalf("dead letters: %d, want 1", len(dls))
			}
			var got []sink.DeadLetter
			for d, err := range sink.ReadDeadLetters(bytes.NewReader(append(dls[0].JSON, '\n'))) {
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, d)
			}
			want := sink.DeadLetter{Reason: reason, Error: reason + ": detail of " + reason, Message: intake.Message{Topic: m.Topic, ReceivedAt: received, Redelivered: true, Payload: m.Payload}}
			if len(got) != 1 || got[0].Reason != want.Reason || got[0].Error != want.Error || got[0].Topic != want.Topic ||
				!got[0].ReceivedAt.Equal(want.ReceivedAt) || got[0].Redelivered != want.Redelivered || !bytes.Equal(got[0].Payload, want.Payload) {
				t.Fatalf("dead letter %+v, want %+v", got, want)
			}
			if v := metrictest.Value(t, e.reg, "decryptd_decrypt_failures_total", "reason", reason); v != 1 {
				t.Errorf("failures{%s} = %v", reason, v)
			}
			if v := metrictest.Value(t, e.reg, "decryptd_dead_letters_total", "reason", reason); v != 1 {
				t.Errorf("dead_letters{%s} = %v", reason, v)
			}
			if v := metrictest.Value(t, e.reg, "decryptd_messages_processed_total", "outcome", "dead_lettered"); v != 1 {
				t.Errorf("processed{dead_lettered} = %v", v)
			}
		})
	}
}

// Exact repeats of a delivered message, the broker's (DUP) and the
// device's (no DUP, amendment 1), are acknowledged and counted by cause,
// never delivered again nor dead-lettered; the same payload on another
// topic is a replay.
func TestDuplicateAcknowledged(t *testing.T) {
	e := newEnv(t, nil)
	process(t, e, msg("ok:r1"))
	dup := msg("ok:r1")
	dup.Redelivered = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range []struct {
		m     intake.Message
		cause string
	}{{dup, pipeline.DuplicateRedelivery}, {msg("ok:r1"), pipeline.DuplicateRepeat}, {msg("ok:r1"), pipeline.DuplicateRepeat}} {
		res, err := e.p.Handle(ctx, c.m)
		if err != nil || res.Outcome != pipeline.OutcomeDuplicate || res.Cause != c.cause {
			t.Fatalf("Handle(redelivered=%v) = %+v, %v; want a duplicate, cause %s", c.m.Redelivered, res, err, c.cause)
		}
	}
	if got := ids(e.a.records()); len(got) != 1 {
		t.Fatalf("sink a holds %v, want r1 once", got)
	}
	if n := len(e.dl.records()); n != 0 {
		t.Fatalf("a duplicate was dead-lettered")
	}
	if v := metrictest.Value(t, e.reg, "decryptd_duplicates_total", "cause", "redelivery"); v != 1 {
		t.Errorf("duplicates{redelivery} = %v, want 1", v)
	}
	if v := metrictest.Value(t, e.reg, "decryptd_duplicates_total", "cause", "repeat"); v != 2 {
		t.Errorf("duplicates{repeat} = %v, want 2", v)
	}
	if v := metrictest.Value(t, e.reg, "decryptd_messages_processed_total", "outcome", "duplicate"); v != 3 {
		t.Errorf("processed{duplicate} = %v", v)
	}
	res, err := e.p.Handle(ctx, moved(msg("ok:r1")))
	if err != nil || res.Outcome != pipeline.OutcomeDeadLettered || res.Reason != "replay" {
		t.Fatalf("the payload on another topic: %+v, %v; want dead-lettered as replay", res, err)
	}
}

// A duplicate that arrives while the first copy is still on its way to a
// stalled sink must not be acknowledged before the first copy's fate is
// known; when the first copy is given up (and forgotten), the duplicate
// is delivered instead.
func TestDuplicateWaitsForFirstCopy(t *testing.T) {
	for _, dupFlag := range []bool{true, false} {
		t.Run(fmt.Sprintf("dup=%v", dupFlag), func(t *testing.T) { duplicateWaitsForFirstCopy(t, dupFlag) })
	}
}

// duplicateWaitsForFirstCopy: a broker redelivery (DUP) or a device's
// resend (no DUP) of a message whose first copy is still on its way.
func duplicateWaitsForFirstCopy(t *testing.T, dupFlag bool) {
	e := newEnv(t, nil)
	e.a.setFailures(1 << 30) // the first copy cannot be written to a

	firstCtx, cancelFirst := context.WithCancel(context.Background())
	defer cancelFirst()
	firstDone := make(chan error, 1)
	go func() { firstDone <- handle(e.p, firstCtx, msg("ok:r1")) }()
	wait.For(t, "sink a to fail the first copy", func() bool {
		return metrictest.Value(t, e.reg, "decryptd_sink_errors_total", "sink", "a") >= 1
	})

	dup := msg("ok:r1")
	dup.Redelivered = dupFlag
	dupDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		dupDone <- handle(e.p, ctx, dup)
	}()
	select {
	case err := <-dupDone:
		t.Fatalf("duplicate finished (%v) while the first copy was undelivered", err)
	case <-time.After(50 * time.Millisecond):
	}

	// Nobody waits for the first copy any more: the retrying batcher gives
	// it up and the decryptor forgets it.
	cancelFirst()
	if err := <-firstDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("first copy: %v, want context.Canceled", err)
	}
	wait.For(t, "the first copy to be forgotten", func() bool {
		got := e.op.forgot()
		return len(got) == 1 && got[0] == "r1"
	})
	e.a.setFailures(0)
	if err := <-dupDone; err != nil {
		t.Fatalf("duplicate: %v", err)
	}
	// The duplicate was decrypted anew and delivered (sink b also holds
	// the first copy: sinks tolerate repeats).
	if got := ids(e.a.records()); len(got) != 1 || got[0] != "r1" {
		t.Errorf("sink a holds %v, want [r1]", got)
	}
	for _, cause := range pipeline.DuplicateCauses() {
		if v := metrictest.Value(t, e.reg, "decryptd_duplicates_total", "cause", cause); v != 0 {
			t.Errorf("duplicates{%s} = %v, want 0 (the first copy was never delivered)", cause, v)
		}
	}
	if v := metrictest.Value(t, e.reg, "decryptd_messages_processed_total", "outcome", "delivered"); v != 1 {
		t.Errorf("processed{delivered} = %v, want 1", v)
	}
}

func TestSinkDownBlocksThenDelivers(t *testing.T) {
	e := newEnv(t, nil)
	e.b.setFailures(1 << 30) // down until the test says otherwise
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- handle(e.p, ctx, msg("ok:r1"))
	}()
	wait.For(t, "sink b to be seen down", func() bool {
		return metrictest.Value(t, e.reg, "decryptd_sink_up", "sink", "b") == 0 && metrictest.Value(t, e.reg, "decryptd_sink_errors_total", "sink", "b") >= 3
	})
	select {
	case err := <-done:
		t.Fatalf("Process returned (%v) while sink b was down", err)
	default:
	}
	e.b.setFailures(0)
	if err := <-done; err != nil {
		t.Fatalf("Process: %v", err)
	}
	for _, s := range []*fakeSink{e.a, e.b} {
		if got := ids(s.records()); len(got) != 1 || got[0] != "r1" {
			t.Errorf("sink %s holds %v, want [r1]", s.name, got)
		}
	}
	if v := metrictest.Value(t, e.reg, "decryptd_sink_up", "sink", "b"); v != 1 {
		t.Errorf("sink_up{b} = %v after recovery", v)
	}
	if v := metrictest.Value(t, e.reg, "decryptd_transient_retries_total", "cause", "sink"); v < 3 {
		t.Errorf("retries{sink} = %v", v)
	}
	if n := len(e.dl.records()); n != 0 {
		t.Errorf("a sink outage dead-lettered %d messages", n)
	}
}

func TestTransientRetriedNeverDeadLettered(t *testing.T) {
	e := newEnv(t, nil)
	process(t, e, msg("transient:4:r1"))
	if got := ids(e.a.records()); len(got) != 1 || got[0] != "r1" {
		t.Fatalf("sink a holds %v, want [r1]", got)
	}
	if n := len(e.dl.records()); n != 0 {
		t.Fatalf("dead letters: %d", n)
	}
	if v := metrictest.Value(t, e.reg, "decryptd_transient_retries_total", "cause", "kms"); v != 4 {
		t.Errorf("retries{kms} = %v, want 4", v)
	}
}

func TestTransientUntilContextEnds(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := handle(e.p, ctx, msg("transient:1000000:r1"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Process: %v, want DeadlineExceeded", err)
	}
	if n := len(e.dl.records()); n != 0 {
		t.Fatalf("dead letters: %d", n)
	}
}

// TestCancelForgets: a record a sink cannot take is given up once nobody
// waits for it (its context ended) and forgotten, so that the broker's
// redelivery is decrypted again; a sink write still hanging at Close's
// deadline is given up too.
func TestCancelForgets(t *testing.T) {
	e := newEnv(t, nil)
	e.a.setFailures(1 << 30)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- handle(e.p, ctx, msg("ok:r1")) }()
	wait.For(t, "the record to reach the batchers", func() bool { return len(e.b.records()) == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Process: %v, want context.Canceled", err)
	}
	wait.For(t, "r1 to be forgotten", func() bool {
		got := e.op.forgot()
		return len(got) == 1 && got[0] == "r1"
	})

	// Shutdown while sink a stalls in a write: Close gives up at its
	// deadline, and the stalled record is forgotten as well.
	e.a.setFailures(0)
	e.a.setGate(make(chan struct{})) // never opens
	e.a.mu.Lock()
	e.a.entered = make(chan struct{}, 1)
	e.a.mu.Unlock()
	done2 := make(chan error, 1)
	go func() { done2 <- handle(e.p, context.Background(), msg("ok:r2")) }()
	<-e.a.entered
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if err := e.p.Close(ctx2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close: %v, want DeadlineExceeded", err)
	}
	if err := <-done2; err == nil {
		t.Fatal("r2 reported delivered although sink a never wrote it")
	}
	if got := e.op.forgot(); len(got) != 2 || got[1] != "r2" {
		t.Fatalf("forgotten %v, want [r1 r2]", got)
	}
	e.close = func() {}
}

func TestBatchingUnderConcurrency(t *testing.T) {
	e := newEnv(t, func(o *pipeline.Options) { o.Linger = 50 * time.Millisecond })
	gate := make(chan struct{})
	e.a.setGate(gate)
	e.a.entered = make(chan struct{}, 1)
	const n = 64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			errs <- handle(e.p, ctx, msg(fmt.Sprintf("ok:r%d", i)))
		}()
	}
	<-e.a.entered
	time.Sleep(20 * time.Millisecond) // let the others queue behind the stalled write
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []*fakeSink{e.a, e.b} {
		if got := len(s.records()); got != n {
			t.Fatalf("sink %s holds %d records, want %d", s.name, got, n)
		}
		sizes := s.batchSizes()
		if len(sizes) >= n/2 {
			t.Errorf("sink %s: %d writes for %d records (%v): not batching", s.name, len(sizes), n, sizes)
		}
		if s.overlaps.Load() != 0 {
			t.Errorf("sink %s: Write called concurrently", s.name)
		}
	}
	if v := metrictest.Value(t, e.reg, "decryptd_records_delivered_total", "sink", "a"); v != n {
		t.Errorf("delivered{a} = %v", v)
	}
}

func TestBatchNeverExceedsMax(t *testing.T) {
	e := newEnv(t, func(o *pipeline.Options) { o.MaxBatch = 4; o.Linger = 20 * time.Millisecond })
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			process(t, e, msg(fmt.Sprintf("ok:r%d", i)))
		}()
	}
	wg.Wait()
	for _, n := range e.a.batchSizes() {
		if n > 4 {
			t.Fatalf("batch of %d, max 4", n)
		}
	}
}

func TestSinkRejectsOneRecord(t *testing.T) {
	e := newEnv(t, func(o *pipeline.Options) { o.Linger = 50 * time.Millisecond })
	e.b.reject["r3"] = true
	gate := make(chan struct{})
	e.b.setGate(gate)
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			process(t, e, msg(fmt.Sprintf("ok:r%d", i)))
		}()
	}
	time.Sleep(20 * time.Millisecond)
	close(gate)
	wg.Wait()
	if got := len(e.b.records()); got != 5 {
		t.Errorf("sink b holds %d, want 5 (all but r3)", got)
	}
	if got := len(e.a.records()); got != 6 {
		t.Errorf("sink a holds %d, want 6", got)
	}
	dls := e.dl.records()
	if len(dls) != 1 || !bytes.Contains(dls[0].JSON, []byte(`"reason":"sink_rejected"`)) {
		t.Fatalf("dead letters %v, want one sink_rejected", dls)
	}
	if v := metrictest.Value(t, e.reg, "decryptd_dead_letters_total", "reason", "sink_rejected"); v != 1 {
		t.Errorf("dead_letters{sink_rejected} = %v", v)
	}
}

func TestMultilineRecordCompacted(t *testing.T) {
	e := newEnv(t, nil)
	process(t, e, msg("multiline:r1"))
	recs := e.a.records()
	if len(recs) != 1 {
		t.Fatalf("records: %d", len(recs))
	}
	j := recs[0].JSON
	if bytes.ContainsAny(j, "\r\n") {
		t.Fatalf("record spans lines: %q", j)
	}
	if !bytes.Contains(j, []byte(`"data":{"id":"r1","n":98.60}`)) {
		t.Fatalf("record %s: data not compacted with its number text", j)
	}
}

func TestCloseFlushesAndRefuses(t *testing.T) {
	e := newEnv(t, nil)
	process(t, e, msg("ok:r1"))
	e.close()
	for _, s := range []*fakeSink{e.a, e.b, e.dl} {
		if !s.flushed || !s.closed {
			t.Errorf("sink %s: flushed %v closed %v", s.name, s.flushed, s.closed)
		}
	}
	err := handle(e.p, context.Background(), msg("ok:r2"))
	if !errors.Is(err, pipeline.ErrClosed) {
		t.Fatalf("Process after Close: %v, want ErrClosed", err)
	}
}

// TestCloseAfterDeadlineHealthy: Close called with its deadline already
// past (an earlier shutdown step used it all), with every batch written,
// does not report batches unwritten.
func TestCloseAfterDeadlineHealthy(t *testing.T) {
	for range 20 {
		e := newEnv(t, nil)
		process(t, e, msg("ok:r1"))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := e.p.Close(ctx); err != nil && strings.Contains(err.Error(), "still unwritten") {
			t.Fatalf("Close after the deadline with nothing pending: %v", err)
		}
	}
}

func TestNewValidates(t *testing.T) {
	a := newSink("a")
	cases := []struct {
		name string
		o    pipeline.Options
		want string
	}{
		{"no opener", pipeline.Options{Sinks: []sink.Sink{a}, DeadLetter: newSink("d")}, "Opener"},
		{"no sinks", pipeline.Options{Opener: newOpener(), DeadLetter: newSink("d")}, "Sinks"},
		{"no dead letter", pipeline.Options{Opener: newOpener(), Sinks: []sink.Sink{a}}, "DeadLetter"},
		{"same names", pipeline.Options{Opener: newOpener(), Sinks: []sink.Sink{a}, DeadLetter: newSink("a")}, "used twice"},
		{"backoff order", pipeline.Options{Opener: newOpener(), Sinks: []sink.Sink{a}, DeadLetter: newSink("d"), MinBackoff: time.Second, MaxBackoff: time.Millisecond}, "MaxBackoff"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := pipeline.New(c.o)
			if err == nil {
				p.Close(context.Background())
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not name %s", err, c.want)
			}
		})
	}
}

// startStalled gates sink a, starts n Process calls and returns once the
// first one's record is being written to a and every one has been handed
// to both batchers: sink b, which Process sends to after a, holds them all
// while a's first write still stalls. Each call's error arrives on the
// returned channel.
func startStalled(t *testing.T, e *env, n int) (gate chan struct{}, errs chan error) {
	t.Helper()
	gate = make(chan struct{})
	e.a.setGate(gate)
	e.a.entered = make(chan struct{}, 1)
	errs = make(chan error, n)
	run := func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		errs <- handle(e.p, ctx, msg(fmt.Sprintf("ok:r%d", i)))
	}
	go run(0)
	<-e.a.entered
	for i := 1; i < n; i++ {
		go run(i)
	}
	wait.For(t, "every record handed over while sink a's write stalls", func() bool { return len(e.b.records()) == n })
	return gate, errs
}

// Group commit: records keep being taken while a batch is written, and the
// ones that arrived during the write share the next one.
func TestGroupCommitCollectsDuringWrite(t *testing.T) {
	e := newEnv(t, nil)
	const n = 11
	gate, errs := startStalled(t, e, n)
	select {
	case err := <-errs:
		t.Fatalf("a Process call returned (%v) before sink a wrote its record", err)
	default:
	}
	close(gate)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := e.a.batchSizes(); len(got) != 2 || got[0] != 1 || got[1] != n-1 {
		t.Errorf("sink a batches %v, want [1 %d]: the records taken during the first write go in one", got, n-1)
	}
	if e.a.overlaps.Load() != 0 || e.b.overlaps.Load() != 0 {
		t.Error("Write called concurrently")
	}
}

// Close while a write stalls and more records wait behind it: every one is
// written before the sinks are closed, and every caller is answered.
func TestCloseWritesPending(t *testing.T) {
	e := newEnv(t, nil)
	const n = 9
	gate, errs := startStalled(t, e, n)
	closed := make(chan struct{})
	go func() { e.close(); close(closed) }()
	time.Sleep(10 * time.Millisecond) // let Close begin while a stalls
	close(gate)
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("Process: %v", err)
		}
	}
	<-closed
	if got := len(e.a.records()); got != n {
		t.Fatalf("sink a holds %d records, want %d", got, n)
	}
	if !e.a.closed {
		t.Error("sink a not closed")
	}
}

// TestLingerLoneAndFull: with a Linger far longer than the test may take,
// a lone message is still written at once, and a batch goes out as soon as
// it holds MaxBatch records; neither waits for the Linger.
func TestLingerLoneAndFull(t *testing.T) {
	e := newEnv(t, func(o *pipeline.Options) { o.Linger = time.Hour; o.MaxBatch = 4 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := handle(e.p, ctx, msg("ok:lone")); err != nil {
		t.Fatalf("lone message: %v (it waited for the linger)", err)
	}

	// Hold sink a in the write of another lone record while four more
	// gather: they fill a batch, which goes out when the write returns.
	gate := make(chan struct{})
	e.a.setGate(gate)
	e.a.mu.Lock()
	e.a.entered = make(chan struct{}, 8)
	e.a.mu.Unlock()
	errs := make(chan error, 5)
	go func() { errs <- handle(e.p, ctx, msg("ok:held")) }()
	<-e.a.entered
	// b (not held) has written it too, alone: had the four begun before it
	// reached b, it would have lingered there with them (a batch of several
	// lingers until full or its Linger), and the last of them after it.
	wait.For(t, "b to write the held record", func() bool { return len(e.b.records()) == 2 })
	for i := range 4 {
		go func() { errs <- handle(e.p, ctx, msg(fmt.Sprintf("ok:f%d", i))) }()
	}
	wait.For(t, "four records gathered behind the held write", func() bool {
		return len(e.b.records()) >= 5 // b is not held: it has them, so a has them pending
	})
	close(gate)
	for range 5 {
		if err := <-errs; err != nil {
			t.Fatalf("%v (a full batch waited for the linger)", err)
		}
	}
	if got := len(e.a.records()); got != 6 {
		t.Fatalf("sink a holds %d records, want 6", got)
	}
}
