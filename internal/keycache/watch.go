package keycache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
)

// Backoff between attempts to (re)subscribe to the change feed.
const (
	minWatchBackoff = 100 * time.Millisecond
	maxWatchBackoff = 5 * time.Second
)

// Run consumes the registry change feed until ctx ends, then returns nil.
// Call it once. On every (re)subscription it treats the feed as reset,
// because changes made while it was not subscribed were not seen:
// negative answers are dropped and every cached key is re-read from the
// registry. It fails at once only if Options.Changes is nil.
func (c *Cache) Run(ctx context.Context) error {
	if c.opts.Changes == nil {
		return errors.New("keycache: Run: Options.Changes is nil")
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for range c.opts.RevalidateWorkers {
		wg.Go(func() { c.revalidateLoop(ctx) })
	}

	backoff := minWatchBackoff
	for {
		ch, err := c.opts.Changes.Watch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			c.log.Warn("cannot watch registry changes, retrying", zap.Error(err), zap.Duration("backoff", backoff))
			if !sleep(ctx, backoff) {
				return nil
			}
			backoff = min(2*backoff, maxWatchBackoff)
			continue
		}
		c.log.Info("watching registry changes")
		backoff = minWatchBackoff
		c.reset()
		for change := range ch {
			c.apply(change)
		}
		if ctx.Err() != nil {
			return nil
		}
		c.log.Warn("registry change feed closed, resubscribing")
		if !sleep(ctx, backoff) {
			return nil
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// apply handles one change event. A revocation takes effect before apply
// returns; a change to a cached key that may still be decrypted (its device
// list, say) is re-read from the registry in the background.
func (c *Cache) apply(ch registry.Change) {
	switch ch.Kind {
	case registry.ChangeReset:
		c.log.Info("registry change feed reset, re-checking every cached key")
		c.reset()
		return
	case registry.ChangeCreated, registry.ChangeUpdated:
	default:
		// An unknown kind may hide anything: take it as a reset.
		c.log.Warn("unknown registry change kind, re-checking every cached key", zap.String("kind", string(ch.Kind)))
		c.reset()
		return
	}
	ref := dek.Ref{KeyID: ch.KeyID, Version: ch.Version}
	s := c.shardFor(ref.KeyID)
	now := c.clock()
	revoke := ch.State.Valid() && !ch.State.CanDecrypt()

	s.mu.Lock()
	// Any load of this shard in flight read the registry before this
	// change, perhaps: it redoes its read instead of publishing.
	s.seq++
	cur := s.m[ref]
	recheck := false
	switch {
	case cur == nil:
	case revoke:
		if cur.kind != kindRevoked {
			c.publishLocked(s, ref, outcome{kind: kindRevoked,
				err: fmt.Errorf("keycache: %s is %s: %w", ref, ch.State, dek.ErrRevoked)}, now)
		}
	case cur.kind == kindKey:
		recheck = true
	default:
		// A cached "unknown", "revoked" or "failed" answer may be wrong now.
		c.deleteLocked(s, ref)
	}
	s.mu.Unlock()
	if recheck {
		c.reval.push(ref)
	}
}

// reset drops every negative answer and queues every cached key for a
// registry re-read; keys keep serving meanwhile.
func (c *Cache) reset() {
	var refs []dek.Ref
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		s.seq++
		for ref, e := range s.m {
			if e.kind == kindKey {
				refs = append(refs, ref)
			} else {
				c.deleteLocked(s, ref)
			}
		}
		s.mu.Unlock()
	}
	c.reval.push(refs...)
}

// revalidateLoop re-reads queued keys until ctx ends.
func (c *Cache) revalidateLoop(ctx context.Context) {
	for {
		ref, ok := c.reval.pop()
		if !ok {
			select {
			case <-c.reval.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		c.revalidate(ctx, ref)
	}
}

// revalidate re-reads one cached key from the registry: gone or no longer
// decryptable evicts it, otherwise its device set is replaced. If the
// registry cannot be reached, the next hit refreshes the entry in the
// background (and it goes stale from there if the outage lasts).
func (c *Cache) revalidate(ctx context.Context, ref dek.Ref) {
	s := c.shardFor(ref.KeyID)
	for attempt := 1; ; attempt++ {
		s.mu.RLock()
		seq0, e := s.seq, s.m[ref]
		s.mu.RUnlock()
		if e == nil || e.kind != kindKey {
			return
		}
		gctx, cancel := context.WithTimeout(ctx, c.opts.UnwrapTimeout)
		re, err := c.opts.Registry.Get(gctx, ref.KeyID, ref.Version)
		cancel()
		now := c.clock()

		s.mu.Lock()
		switch {
		case s.m[ref] != e:
			// Replaced meanwhile (revoked, reloaded, evicted): nothing to do.
		case s.seq != seq0 && attempt < maxLoadAttempts:
			s.mu.Unlock()
			continue
		case s.seq != seq0 || (err != nil && !errors.Is(err, registry.ErrNotFound)):
			expireSoonLocked(e, now)
		case errors.Is(err, registry.ErrNotFound):
			c.publishLocked(s, ref, outcome{kind: kindNotFound, err: fmt.Errorf("keycache: %s: %w", ref, dek.ErrUnknownKey)}, now)
		case !re.State.CanDecrypt():
			c.publishLocked(s, ref, outcome{kind: kindRevoked, err: fmt.Errorf("keycache: %s is %s: %w", ref, re.State, dek.ErrRevoked)}, now)
		default:
			v := *e.v.Load()
			v.devices = newDeviceSet(re.Devices)
			e.v.Store(&v)
		}
		s.mu.Unlock()
		return
	}
}

// expireSoonLocked makes the next hit on e start a background refresh.
func expireSoonLocked(e *entry, now int64) {
	v := *e.v.Load()
	if v.refreshAt > now {
		v.refreshAt = now
		e.v.Store(&v)
	}
	e.retryAt.Store(0)
}

// revalQueue holds keys waiting for a registry re-read, each at most once.
type revalQueue struct {
	mu     sync.Mutex
	queue  []dek.Ref
	queued map[dek.Ref]struct{}
	wake   chan struct{}
}

func (q *revalQueue) init() {
	q.queued = map[dek.Ref]struct{}{}
	q.wake = make(chan struct{}, 1)
}

func (q *revalQueue) push(refs ...dek.Ref) {
	q.mu.Lock()
	for _, r := range refs {
		if _, ok := q.queued[r]; !ok {
			q.queued[r] = struct{}{}
			q.queue = append(q.queue, r)
		}
	}
	q.mu.Unlock()
	q.signal()
}

func (q *revalQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// pop takes the oldest queued key; when more remain it wakes another
// worker, since one wake-up token serves them all.
func (q *revalQueue) pop() (dek.Ref, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.queue) == 0 {
		return dek.Ref{}, false
	}
	r := q.queue[0]
	q.queue[0] = dek.Ref{}
	q.queue = q.queue[1:]
	if len(q.queue) == 0 {
		q.queue = nil
	} else {
		q.signal()
	}
	delete(q.queued, r)
	return r, true
}

// pending is how many keys wait for a re-read (tests).
func (q *revalQueue) pending() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.queue)
}
