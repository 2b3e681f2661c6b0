package pipeline

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestTrackerWaitsForEarlierOnly: waitBefore returns once every ticket
// begun before it has ended, whatever the order they end in, and does not
// wait for tickets begun after it.
func TestTrackerWaitsForEarlierOnly(t *testing.T) {
	var tr tracker
	early := make([]flightTicket, 3*flightShards) // several per shard
	for i := range early {
		tr.begin(&early[i])
	}
	var self, later flightTicket
	tr.begin(&self)
	tr.begin(&later) // never ended: must not hold self back

	returned := make(chan error, 1)
	go func() { returned <- tr.waitBefore(context.Background(), &self) }()
	// End all but the first, out of order; self must still be waiting.
	for i := len(early) - 1; i > 0; i -= 2 {
		tr.end(&early[i])
	}
	for i := 2; i < len(early); i += 2 {
		tr.end(&early[i])
	}
	tr.end(&early[1]) // a second end of one ticket does nothing
	select {
	case err := <-returned:
		t.Fatalf("waitBefore returned %v with an earlier ticket still under way", err)
	case <-time.After(20 * time.Millisecond):
	}
	tr.end(&early[0])
	if err := <-returned; err != nil {
		t.Fatal(err)
	}
	// Nothing earlier under way: at once.
	if err := tr.waitBefore(context.Background(), &self); err != nil {
		t.Fatal(err)
	}
	tr.end(&self)
	tr.end(&later)
	for i := range tr.shards {
		if tr.shards[i].head != nil {
			t.Fatalf("shard %d still lists a ticket", i)
		}
	}
}

func TestTrackerWaitEndsWithContext(t *testing.T) {
	var tr tracker
	var first, dup flightTicket
	tr.begin(&first)
	tr.begin(&dup)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := tr.waitBefore(ctx, &dup); !errors.Is(err, context.Canceled) {
		t.Fatalf("waitBefore = %v, want context.Canceled", err)
	}
}

// TestTrackerConcurrent: many goroutines begin and end while waiters
// check, when they return, that every ticket whose begin had returned
// before theirs started has ended (a begin concurrent with theirs may go
// either way). Run with -race.
func TestTrackerConcurrent(t *testing.T) {
	var tr tracker
	var mu sync.Mutex
	begun := map[uint64]bool{} // begin returned, end not called yet
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				var tk flightTicket
				var before []uint64
				if i%50 == 0 {
					before = []uint64{}
					mu.Lock()
					for id := range begun {
						before = append(before, id)
					}
					mu.Unlock()
				}
				tr.begin(&tk)
				mu.Lock()
				begun[tk.id] = true
				mu.Unlock()
				if before != nil {
					if err := tr.waitBefore(context.Background(), &tk); err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for _, id := range before {
						if begun[id] {
							t.Errorf("ticket %d returned from waitBefore with ticket %d under way", tk.id, id)
						}
					}
					mu.Unlock()
				}
				mu.Lock()
				delete(begun, tk.id)
				mu.Unlock()
				tr.end(&tk)
			}
		}()
	}
	wg.Wait()
}

// BenchmarkTracker is the per-message cost of begin and end from many
// goroutines at once (compare -cpu 1,2,16).
func BenchmarkTracker(b *testing.B) {
	var tr tracker
	b.RunParallel(func(pb *testing.PB) {
		var tk flightTicket
		for pb.Next() {
			tr.begin(&tk)
			tr.end(&tk)
		}
	})
}
