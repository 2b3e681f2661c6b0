package pipeline

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// flightShards is how many locks the deliveries under way are spread
// over. begin and end run once per message on whatever goroutine takes it
// (several MQTT routers, the lanes, the workers, the batchers), so one
// lock and one map for all of them was contended on many cores; with the
// tickets spread round-robin over 64 shards, two goroutines rarely want
// the same lock at once.
const flightShards = 64

// flightTicket is one delivery's place in the tracker, kept in the
// delivery itself so that taking one allocates nothing (and small: it
// keeps a delivery within 512 bytes, one allocation size class).
type flightTicket struct {
	id         uint64
	prev, next *flightTicket // in its shard's list while linked
}

// tracker numbers deliveries so that a duplicate can wait for every
// delivery that began before it (a first copy that may still fail and be
// forgotten). Every message pays begin and end: an atomic increment and
// an uncontended lock of one shard, linking or unlinking its ticket in a
// list. Only waitBefore, on the rare duplicate path, looks at every shard.
type tracker struct {
	next    atomic.Uint64
	waiters atomic.Int32 // waitBefore calls under way: end wakes them only then
	shards  [flightShards]flightShard

	mu      sync.Mutex
	changed chan struct{} // closed when a delivery ends while someone waits
}

type flightShard struct {
	mu   sync.Mutex
	head *flightTicket
	_    [128 - 16]byte // a cache line (pair) of its own, so shards do not share one
}

// begin numbers t (above every ticket begun before) and links it.
func (tr *tracker) begin(t *flightTicket) {
	t.id = tr.next.Add(1)
	s := &tr.shards[t.id%flightShards]
	s.mu.Lock()
	t.prev, t.next = nil, s.head
	if s.head != nil {
		s.head.prev = t
	}
	s.head = t
	s.mu.Unlock()
}

// end unlinks t (once; a second call does nothing) and wakes the
// waitBefore calls under way.
func (tr *tracker) end(t *flightTicket) {
	s := &tr.shards[t.id%flightShards]
	s.mu.Lock()
	if t.prev == nil && s.head != t { // not linked: ended already
		s.mu.Unlock()
		return
	}
	if t.prev != nil {
		t.prev.next = t.next
	} else {
		s.head = t.next
	}
	if t.next != nil {
		t.next.prev = t.prev
	}
	t.prev, t.next = nil, nil
	s.mu.Unlock()
	// A waiter counts itself before it scans the shards, and the shard
	// lock orders its scan against the unlink above: either the scan saw
	// t gone, or this load sees the waiter.
	if tr.waiters.Load() == 0 {
		return
	}
	tr.mu.Lock()
	if tr.changed != nil {
		close(tr.changed)
		tr.changed = nil
	}
	tr.mu.Unlock()
}

// waitBefore returns once no delivery whose ticket was begun before t's
// is under way, or with an error when ctx ends first.
func (tr *tracker) waitBefore(ctx context.Context, t *flightTicket) error {
	tr.waiters.Add(1)
	defer tr.waiters.Add(-1)
	for {
		// Take the channel before scanning, so that an end after the scan
		// closes this one (or one after it, when this one is closed
		// already).
		tr.mu.Lock()
		if tr.changed == nil {
			tr.changed = make(chan struct{})
		}
		ch := tr.changed
		tr.mu.Unlock()
		if !tr.busyBefore(t.id) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("pipeline: waiting for an earlier delivery before acknowledging a duplicate: %w", ctx.Err())
		}
	}
}

// busyBefore reports whether a ticket numbered below id is linked.
func (tr *tracker) busyBefore(id uint64) bool {
	for i := range tr.shards {
		s := &tr.shards[i]
		s.mu.Lock()
		for t := s.head; t != nil; t = t.next {
			if t.id < id {
				s.mu.Unlock()
				return true
			}
		}
		s.mu.Unlock()
	}
	return false
}
