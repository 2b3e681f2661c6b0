package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// groupSink is a fakeSink that is also a sink.GroupWriter: WriteUnsynced
// keeps a batch aside, Sync makes the batches kept aside held (or, with
// syncFailures, fails and drops them, as a failed fsync loses them).
// syncGate, when set, makes Sync wait for it.
type groupSink struct {
	*fakeSink

	gmu          sync.Mutex
	unsynced     [][]sink.Record
	chunks       []int // records per WriteUnsynced call
	syncs        int
	syncFailures int
	syncGate     chan struct{}
}

var _ sink.GroupWriter = (*groupSink)(nil)

func (g *groupSink) WriteUnsynced(_ context.Context, batch []sink.Record) error {
	if g.inWrite.Add(1) > 1 {
		g.overlaps.Add(1)
	}
	defer g.inWrite.Add(-1)
	g.gmu.Lock()
	defer g.gmu.Unlock()
	cp := make([]sink.Record, len(batch))
	for i, r := range batch {
		cp[i] = sink.Record{ID: r.ID, DeviceID: r.DeviceID, JSON: append([]byte(nil), r.JSON...)}
	}
	g.unsynced = append(g.unsynced, cp)
	g.chunks = append(g.chunks, len(batch))
	return nil
}

func (g *groupSink) Sync(context.Context) error {
	g.gmu.Lock()
	gate := g.syncGate
	g.gmu.Unlock()
	if gate != nil {
		<-gate
	}
	g.gmu.Lock()
	defer g.gmu.Unlock()
	g.syncs++
	kept := g.unsynced
	g.unsynced = nil
	if g.syncFailures > 0 {
		g.syncFailures--
		return errors.New("fake fsync failed")
	}
	g.mu.Lock()
	g.batches = append(g.batches, kept...)
	g.mu.Unlock()
	return nil
}

func (g *groupSink) state() (chunks []int, syncs int) {
	g.gmu.Lock()
	defer g.gmu.Unlock()
	return slices.Clone(g.chunks), g.syncs
}

func newGroupEnv(t *testing.T, maxBatch int) (*env, *groupSink) {
	t.Helper()
	var g *groupSink
	e := newEnv(t, func(o *pipeline.Options) {
		o.MaxBatch = maxBatch
		g = &groupSink{fakeSink: o.Sinks[0].(*fakeSink)}
		o.Sinks[0] = g
	})
	return e, g
}

// startStalledInOrder hands r0 over, waits until sink a's Write of it
// stalls on the returned gate, then hands r1..r(n-1) over from one
// goroutine, one after the other (Process does not wait for the sinks),
// so that every sink must hold them in that order. errs gets each
// record's answer.
func startStalledInOrder(t *testing.T, e *env, n int) (gate chan struct{}, errs chan error) {
	t.Helper()
	gate = make(chan struct{})
	e.a.setGate(gate)
	e.a.entered = make(chan struct{}, 1)
	errs = make(chan error, n)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	done := func(err error) { errs <- err }
	e.p.Process(ctx, msg("ok:r0"), done)
	<-e.a.entered
	for i := 1; i < n; i++ {
		e.p.Process(ctx, msg(fmt.Sprintf("ok:r%d", i)), done)
	}
	return gate, errs
}

// wantInOrder checks that rs hold r0..r(n-1), each once, in that order.
func wantInOrder(t *testing.T, rs []sink.Record, n int) {
	t.Helper()
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("r%d", i))
	}
	if got := ids(rs); !slices.Equal(got, want) {
		t.Errorf("sink holds %v, want %v", got, want)
	}
}

// The records that queued behind a stalled write go out as several writes
// within MaxBatch, in order, with one Sync for them all, and none is
// answered before that Sync returned.
func TestGroupWriteOneSyncForQueuedBatches(t *testing.T) {
	e, g := newGroupEnv(t, 4)
	syncGate := make(chan struct{})
	g.syncGate = syncGate
	const n = 11
	gate, errs := startStalledInOrder(t, e, n)
	close(gate)
	if err := <-errs; err != nil { // r0, written alone with Write
		t.Fatal(err)
	}
	wait.For(t, "the queued records written unsynced", func() bool {
		chunks, _ := g.state()
		return len(chunks) == 3
	})
	select {
	case err := <-errs:
		t.Fatalf("a Process call returned (%v) before the Sync covering its record", err)
	default:
	}
	close(syncGate)
	for range n - 1 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	chunks, syncs := g.state()
	if !slices.Equal(chunks, []int{4, 4, 2}) || syncs != 1 {
		t.Errorf("WriteUnsynced calls of %v records and %d Syncs, want [4 4 2] and 1", chunks, syncs)
	}
	wantInOrder(t, g.records(), n)
	if g.overlaps.Load() != 0 {
		t.Error("sink written concurrently")
	}
}

// A failed Sync holds none of its group: every batch of it is written
// again with Write (and so made durable by the sink's own Write), in order.
func TestGroupWriteSyncFailureRewrites(t *testing.T) {
	e, g := newGroupEnv(t, 4)
	g.syncFailures = 1
	const n = 11
	gate, errs := startStalledInOrder(t, e, n)
	close(gate)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	wantInOrder(t, g.records(), n)
	if got := g.batchSizes(); !slices.Equal(got, []int{1, 4, 4, 2}) {
		t.Errorf("held batches %v, want [1 4 4 2] (r0, then the group rewritten by Write)", got)
	}
	if _, syncs := g.state(); syncs != 1 {
		t.Errorf("%d Syncs, want 1", syncs)
	}
}
