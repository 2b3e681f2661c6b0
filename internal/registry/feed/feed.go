package feed

import (
	"context"
	"sync"

	"github.com/decryptd/decryptd/internal/registry"
)

// DefaultQueue is the per-watcher queue bound when New is given 0.
const DefaultQueue = 1024

// Hub delivers published changes to every subscriber. Safe for concurrent use.
type Hub struct {
	limit int
	done  chan struct{}
	wg    sync.WaitGroup

	mu     sync.Mutex
	subs   map[*sub]struct{}
	closed bool
}

type sub struct {
	out  chan registry.Change
	wake chan struct{}

	mu    sync.Mutex
	queue []registry.Change
}

// New returns a Hub whose watchers each queue at most limit changes before
// the queue collapses into one Reset (0 means DefaultQueue).
func New(limit int) *Hub {
	if limit <= 0 {
		limit = DefaultQueue
	}
	return &Hub{limit: limit, done: make(chan struct{}), subs: make(map[*sub]struct{})}
}

// Subscribe returns a channel of the changes published from now on. It is
// closed when ctx ends or the Hub closes. registry.ErrClosed once closed.
func (h *Hub) Subscribe(ctx context.Context) (<-chan registry.Change, error) {
	s := &sub{out: make(chan registry.Change), wake: make(chan struct{}, 1)}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, registry.ErrClosed
	}
	h.subs[s] = struct{}{}
	h.wg.Add(1)
	h.mu.Unlock()
	go h.run(ctx, s)
	return s.out, nil
}

// Len reports how many watchers are subscribed.
func (h *Hub) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// Publish queues changes for every current watcher without blocking.
func (h *Hub) Publish(changes ...registry.Change) {
	if len(changes) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		s.push(h.limit, changes)
	}
}

func (s *sub) push(limit int, changes []registry.Change) {
	s.mu.Lock()
	for _, c := range changes {
		switch {
		case c.Kind == registry.ChangeReset:
			// A Reset supersedes whatever is still queued.
			s.queue = append(s.queue[:0], c)
		case len(s.queue) >= limit:
			s.queue = append(s.queue[:0], registry.Change{Kind: registry.ChangeReset})
		default:
			s.queue = append(s.queue, c)
		}
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (h *Hub) run(ctx context.Context, s *sub) {
	defer func() {
		h.mu.Lock()
		delete(h.subs, s)
		h.mu.Unlock()
		close(s.out)
		h.wg.Done()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.done:
			return
		case <-s.wake:
		}
		for {
			s.mu.Lock()
			if len(s.queue) == 0 {
				s.mu.Unlock()
				break
			}
			c := s.queue[0]
			s.queue = s.queue[1:]
			s.mu.Unlock()
			select {
			case s.out <- c:
			case <-ctx.Done():
				return
			case <-h.done:
				return
			}
		}
	}
}

// Close closes every watcher's channel and refuses new subscriptions. It
// returns once every channel is closed. Safe to call more than once.
func (h *Hub) Close() {
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		close(h.done)
	}
	h.mu.Unlock()
	h.wg.Wait()
}
