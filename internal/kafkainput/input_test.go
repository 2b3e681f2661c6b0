package kafkainput

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestCommitsNeverPassUnfinished: 12 partitions into a Processor that
// finishes messages in random order; every commit the input makes covers
// only finished messages, every message is finished, per-topic order
// holds, and after shutdown every partition is committed to its end.
func TestCommitsNeverPassUnfinished(t *testing.T) {
	const parts, per = 12, 300
	c := fakeCluster(t, parts)
	produce(t, c, parts, per, 5)
	proc := newFakeProc(t, 3*time.Millisecond)
	var mu sync.Mutex
	committed := map[int32]int64{}
	in := newInput(t, c, proc, nil)
	in.commitHook = func(_ string, p int32, off int64) {
		for s := int64(0); s < off; s++ {
			if !proc.isDone(int(p), int(s)) {
				t.Errorf("partition %d committed at %d, but %d is not finished", p, off, s)
				break
			}
		}
		mu.Lock()
		if off < committed[p] {
			t.Errorf("partition %d: commit went back from %d to %d", p, committed[p], off)
		}
		committed[p] = off
		mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- in.Run(ctx) }()
	waitFor(t, 30*time.Second, "every message finished", func() bool { u, _ := proc.counts(); return u == parts*per })
	if !in.Ready() {
		t.Error("not ready while consuming")
	}
	sctx, scancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer scancel()
	if err := in.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for p := range int32(parts) {
		if committed[p] != per {
			t.Errorf("partition %d committed at %d, want %d", p, committed[p], per)
		}
	}
	if u, total := proc.counts(); total != u {
		t.Errorf("%d messages finished %d times: duplicates without a rebalance", u, total)
	}
}

// TestInFlightBound: with a Processor that holds every message, no more
// than MaxInFlight are handed out.
func TestInFlightBound(t *testing.T) {
	c := fakeCluster(t, 3)
	produce(t, c, 3, 200, 4)
	proc := &holdProc{release: make(chan struct{})}
	in := newInput(t, c, proc, func(o *Options) { o.MaxInFlight = 50 })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go in.Run(ctx)
	waitFor(t, 20*time.Second, "50 messages held", func() bool { return proc.n.Load() == 50 })
	time.Sleep(200 * time.Millisecond)
	if n := proc.n.Load(); n != 50 {
		t.Fatalf("%d messages handed out, bound 50", n)
	}
	close(proc.release)
	waitFor(t, 20*time.Second, "all 600", func() bool { return proc.n.Load() == 600 })
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := in.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
}

// TestReadyFollowsBrokers: ready once the group is joined, not ready once
// no broker answers (an idle input reports no fetch error), and shutdown
// still ends within its deadline.
func TestReadyFollowsBrokers(t *testing.T) {
	c := fakeCluster(t, 2)
	in := newInput(t, c, newFakeProc(t, 0), nil)
	go in.Run(context.Background())
	waitFor(t, 20*time.Second, "ready", in.Ready)
	c.Close()
	waitFor(t, 30*time.Second, "not ready with the cluster gone", func() bool { return !in.Ready() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = in.Shutdown(ctx) // leaving a dead group fails; it must return
}
