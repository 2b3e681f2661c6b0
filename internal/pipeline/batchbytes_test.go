package pipeline_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// sizedSink refuses, as a nearly full disk does, every write whose
// records' JSON is larger than limit bytes (a transient error: the same
// write fails again, a smaller one fits); what fits goes to fakeSink.
type sizedSink struct {
	*fakeSink
	limit int

	mu      sync.Mutex
	refused []int // bytes of each refused write
}

func (s *sizedSink) Write(ctx context.Context, batch []sink.Record) error {
	n := batchBytes(batch)
	s.mu.Lock()
	refuse := n > s.limit
	if refuse {
		s.refused = append(s.refused, n)
	}
	s.mu.Unlock()
	if refuse {
		return fmt.Errorf("write %d bytes: no space left on device", n)
	}
	return s.fakeSink.Write(ctx, batch)
}

func batchBytes(batch []sink.Record) int {
	n := 0
	for _, r := range batch {
		n += len(r.JSON)
	}
	return n
}

// queueBehindGate starts one record and holds the sink's Write on it, so
// that the next n records gather into one pending batch; it returns the
// gate to open and the done channel of every record.
func queueBehindGate(t *testing.T, e *env, gated *fakeSink, n int) (chan struct{}, []chan error) {
	t.Helper()
	gate := make(chan struct{})
	entered := make(chan struct{}, 1)
	gated.mu.Lock()
	gated.gate, gated.entered = gate, entered
	gated.mu.Unlock()
	var dones []chan error
	submit := func(id string) {
		ch := make(chan error, 1)
		dones = append(dones, ch)
		e.p.Process(context.Background(), msg("ok:"+id), func(err error) { ch <- err })
	}
	submit("r000")
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the first write never started")
	}
	for i := 1; i <= n; i++ {
		submit(fmt.Sprintf("r%03d", i))
	}
	return gate, dones
}

func waitAll(t *testing.T, dones []chan error) {
	t.Helper()
	for i, ch := range dones {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatalf("record %d: done(%v)", i, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("record %d never answered", i)
		}
	}
}

// TestBatchBytesBound: a batch holds at most MaxBatchBytes of records'
// JSON, however many records MaxBatch would allow.
func TestBatchBytesBound(t *testing.T) {
	const maxBytes = 1000
	e := newEnv(t, func(o *pipeline.Options) { o.MaxBatchBytes = maxBytes; o.Sinks = o.Sinks[:1] })
	gate, dones := queueBehindGate(t, e, e.a, 40)
	close(gate)
	waitAll(t, dones)
	e.a.mu.Lock()
	defer e.a.mu.Unlock()
	if len(e.a.batches) < 3 {
		t.Fatalf("%d batches for 41 records of ~200 B under a 1000 B bound", len(e.a.batches))
	}
	for i, b := range e.a.batches {
		if n := batchBytes(b); n > maxBytes && len(b) > 1 {
			t.Fatalf("batch %d: %d records, %d bytes; MaxBatchBytes is %d", i, len(b), n, maxBytes)
		}
	}
}

// TestSplitBatchThatCannotFit: a sink that refuses writes larger than a
// few records (ENOSPC with little room left) gets the batch in parts,
// halving down to what fits, instead of the whole batch retried forever;
// every record is written once, in order, and answered only then.
func TestSplitBatchThatCannotFit(t *testing.T) {
	base := newSink("a")
	s := &sizedSink{fakeSink: base, limit: 1 << 20}
	e := newEnv(t, func(o *pipeline.Options) { o.Sinks = []sink.Sink{s} })
	gate, dones := queueBehindGate(t, e, base, 63)
	// Room for about three records per write from now on.
	one := len(`{"id":"r001","device_id":"dev-r001","timestamp":1634567890,"key_id":"device/dev-r001","key_version":"v1","topic":"t/ok/r001","received_at":"2026-11-25T20:16:01Z","data":{"id":"r001"}}`)
	s.mu.Lock()
	s.limit = 3*one + 10
	s.mu.Unlock()
	close(gate)
	waitAll(t, dones)

	got := ids(base.records())
	want := make([]string, 64)
	for i := range want {
		want[i] = fmt.Sprintf("r%03d", i)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("sink holds %v\nwant %v", got, want)
	}
	base.mu.Lock()
	s.mu.Lock()
	limit := s.limit
	s.mu.Unlock()
	for i, b := range base.batches {
		if n := batchBytes(b); n > limit {
			t.Fatalf("batch %d: %d bytes written past the sink's %d", i, n, s.limit)
		}
	}
	writes := len(base.batches)
	base.mu.Unlock()
	s.mu.Lock()
	refused := len(s.refused)
	s.mu.Unlock()
	// 63 records at most 3 per write: at least 21 writes. Halving from 63
	// costs a few refusals, and each regrowth after a success costs one.
	if refused > writes+6 {
		t.Fatalf("%d refused writes for %d written ones: the batcher keeps retrying sizes that cannot fit", refused, writes)
	}
	t.Logf("%d writes, %d refused", writes, refused)
}

// TestSplitDownToOneRecord: when even one record does not fit, the
// batcher keeps retrying that one record (the sink is down for it), and
// writes everything once the sink has room again.
func TestSplitDownToOneRecord(t *testing.T) {
	base := newSink("a")
	s := &sizedSink{fakeSink: base, limit: 1 << 20}
	e := newEnv(t, func(o *pipeline.Options) { o.Sinks = []sink.Sink{s} })
	gate, dones := queueBehindGate(t, e, base, 15)
	s.mu.Lock()
	s.limit = 10 // not even one record
	s.mu.Unlock()
	close(gate)
	wait.For(t, "retries at one record", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		n := len(s.refused)
		return n >= 8 && s.refused[n-1] < 300 && s.refused[n-2] < 300
	})
	s.mu.Lock()
	s.limit = 1 << 20
	s.mu.Unlock()
	waitAll(t, dones)
	if got := len(base.records()); got != 16 {
		t.Fatalf("%d records written, want 16", got)
	}
}
