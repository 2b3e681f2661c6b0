package keycache

import (
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

const (
	numShards = 64 // a power of two
	// touchEvery is the resolution of the LRU clock: a hit writes lastUsed
	// only when it is older than this.
	touchEvery = int64(time.Second)
	// evictSample is how many entries an eviction compares, taking at most
	// evictPerShard from one shard.
	evictSample   = 16
	evictPerShard = 4
	// maxLoadAttempts bounds the retries of a load that raced a change event.
	maxLoadAttempts = 3
	// coarseTick is the resolution of the real-time clock the hit path reads
	// (see Cache.coarse).
	coarseTick = 50 * time.Millisecond
)

// shard is one lock and map of the cache. Padded to its own cache lines so
// hits on different shards do not contend.
type shard struct {
	mu sync.RWMutex
	m  map[dek.Ref]*entry
	// seq is bumped (under mu) by every change event touching the shard; a
	// load that saw another seq before its registry read may be stale and
	// is redone rather than published.
	seq  uint64
	reqs [numResults]atomic.Uint64
	_    [128 - (24+8+8+8*int(numResults))%128]byte
}

func (s *shard) add(r result) { s.reqs[r].Add(1) }

// Cache resolves DEK versions to ready AES-256-GCM ciphers. It implements
// decrypt.KeyResolver. Safe for concurrent use.
type Cache struct {
	opts  Options
	epoch time.Time
	// coarse is the real clock (nanoseconds since epoch) as a ticker last
	// set it, when Options.Now was not injected: reading the time costs
	// 40-80 ns on virtual machines, most of a hit's budget, and lifetimes
	// of minutes to hours do not need better than coarseTick.
	coarse    atomic.Int64
	realClock bool
	seed      maphash.Seed
	shards    [numShards]shard
	count     atomic.Int64 // entries in all shards
	// evictCursor rotates the shard where eviction sampling starts.
	evictCursor atomic.Uint32
	sem         chan struct{}
	metrics     *metrics
	log         *zap.Logger

	// base is cancelled by Close; every load and background job runs under
	// it, detached from the context of the lookup that started it.
	base   context.Context
	cancel context.CancelFunc

	mu     sync.Mutex // guards flight, closed and wg.Add
	flight map[dek.Ref]*call
	closed bool
	wg     sync.WaitGroup

	reval revalQueue
}

// call is one load in flight; concurrent lookups of the same version share it.
type call struct {
	done  chan struct{}
	val   *value // nil when err is set
	stale bool   // val is served past its lifetime
	err   error
}

// New builds a cache. Run must be started for change events to take effect;
// Close stops background work.
func New(opts Options) (*Cache, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Cache{
		opts:      o,
		epoch:     o.Now(),
		realClock: opts.Now == nil,
		seed:      maphash.MakeSeed(),
		sem:       make(chan struct{}, o.MaxConcurrentUnwraps),
		log:       o.Logger.With(zap.String("component", "keycache")),
		flight:    map[dek.Ref]*call{},
	}
	for i := range c.shards {
		c.shards[i].m = map[dek.Ref]*entry{}
	}
	c.reval.init()
	c.base, c.cancel = context.WithCancel(context.Background())
	m, err := newMetrics(o.Registerer, c)
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.metrics = m
	if c.realClock {
		c.goBG(c.tick)
	}
	return c, nil
}

// tick advances the coarse clock until Close.
func (c *Cache) tick() {
	t := time.NewTicker(coarseTick)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			c.coarse.Store(int64(time.Since(c.epoch)))
		case <-c.base.Done():
			return
		}
	}
}

// Close cancels loads and refreshes in flight and waits for them, and stops
// the clock goroutine. Lookups
// after Close fail with dek.ErrUnavailable unless served from the cache.
func (c *Cache) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return nil
}

// clock is nanoseconds since New: the coarse real clock, or the injected
// one.
func (c *Cache) clock() int64 {
	if c.realClock {
		return c.coarse.Load()
	}
	return int64(c.opts.Now().Sub(c.epoch))
}

func (c *Cache) shardFor(keyID string) *shard {
	return &c.shards[maphash.String(c.seed, keyID)&(numShards-1)]
}

// ResolveKey returns the cipher of keyID at keyVersion if deviceID may use
// it. See decrypt.KeyResolver for the errors. A hit takes a read lock on one
// shard and does not allocate; a miss waits for one shared load, or until
// ctx ends.
func (c *Cache) ResolveKey(ctx context.Context, keyID, keyVersion, deviceID string) (cipher.AEAD, error) {
	aead, err := c.ResolveCachedKey(keyID, keyVersion, deviceID)
	if !errors.Is(err, dek.ErrWouldWait) {
		return aead, err
	}
	ref := dek.Ref{KeyID: keyID, Version: keyVersion}
	s := c.shardFor(keyID)
	s.mu.RLock()
	e := s.m[ref]
	s.mu.RUnlock()
	if e != nil && e.kind == kindKey {
		if v := e.v.Load(); c.clock() < v.staleUntil {
			// Expired while idle, and nobody knows yet whether the KMS
			// answers: reload, but do not hold the message for the
			// whole KMS timeout if it does not.
			return c.missOrStale(ctx, s, ref, deviceID, e, v)
		}
	}
	return c.miss(ctx, s, ref, deviceID)
}

// PrefetchKey starts, without waiting, the shared load ResolveKey would wait
// for; call it when ResolveCachedKey has answered dek.ErrWouldWait. It joins
// a load under way and does nothing for a key cached meanwhile (startLoad
// looks), so that the goroutine that goes on to ResolveKey finds the key
// loaded, or its load under way, sooner. A cold start then loads the
// keys of every message in flight at once, bounded by
// MaxConcurrentUnwraps, instead of as many as there are goroutines that
// may wait; the load is audited like any miss.
func (c *Cache) PrefetchKey(keyID, keyVersion, deviceID string) {
	c.startLoad(dek.Ref{KeyID: keyID, Version: keyVersion}, "miss", deviceID)
}

// ResolveCachedKey is ResolveKey that never waits: it answers from the
// cache (a hit, a stale serve, a cached verdict) or returns an error
// wrapping dek.ErrWouldWait, without starting a load, when ResolveKey would
// have to wait for the registry or the KMS. The caller can then hand the
// message to a goroutine that may block, so that a thread that must not
// (the MQTT intake) decrypts every message whose key is cached itself.
func (c *Cache) ResolveCachedKey(keyID, keyVersion, deviceID string) (cipher.AEAD, error) {
	ref := dek.Ref{KeyID: keyID, Version: keyVersion}
	s := c.shardFor(keyID)
	s.mu.RLock()
	e := s.m[ref]
	s.mu.RUnlock()
	if e != nil {
		now := c.clock()
		if e.kind != kindKey {
			if now < e.until {
				touch(e, now)
				s.add(resNegative)
				return nil, e.err
			}
		} else {
			v := e.v.Load()
			switch {
			case now < v.expiresAt:
				touch(e, now)
				if !v.allows(keyID, deviceID) {
					s.add(resDenied)
					return nil, errDenied(ref, deviceID)
				}
				if now >= v.refreshAt {
					c.refreshAsync(e, now)
				}
				s.add(resHit)
				return v.aead, nil
			case e.failing.Load() && now < v.staleUntil:
				// The last refresh could not reach the KMS or registry:
				// keep serving, and retry in the background now and then.
				touch(e, now)
				if !v.allows(keyID, deviceID) {
					s.add(resDenied)
					return nil, errDenied(ref, deviceID)
				}
				c.refreshAsync(e, now)
				s.add(resStale)
				return v.aead, nil
			case e.failing.Load() && now < e.retryAt.Load():
				// Past the stale limit and the KMS failed moments ago: do
				// not make every message wait for another attempt.
				s.add(resMiss)
				return nil, fmt.Errorf("keycache: %s: past stale limit, KMS or registry unreachable: %w", ref, dek.ErrUnavailable)
			}
		}
	}
	return nil, fmt.Errorf("keycache: %s: %w", ref, dek.ErrWouldWait)
}

// missOrStale waits for the shared reload of an expired entry for at most
// StaleWait, then serves the expired cipher (within its stale limit) while
// the reload goes on in the background. The entry must still be the one in
// the map: a revocation evicts it, and an evicted cipher is never served.
func (c *Cache) missOrStale(ctx context.Context, s *shard, ref dek.Ref, deviceID string, e *entry, v *value) (cipher.AEAD, error) {
	cl := c.startLoad(ref, "miss", deviceID)
	timer := time.NewTimer(c.opts.StaleWait)
	defer timer.Stop()
	select {
	case <-cl.done:
		return c.finishMiss(s, ref, deviceID, cl)
	case <-ctx.Done():
		s.add(resMiss)
		return nil, fmt.Errorf("keycache: waiting for %s: %w: %w", ref, dek.ErrUnavailable, context.Cause(ctx))
	case <-timer.C:
	}
	s.mu.RLock()
	still := s.m[ref] == e && e.v.Load() == v
	s.mu.RUnlock()
	if !still {
		// Changed meanwhile (revoked, evicted or replaced): wait for the
		// load like any miss.
		return c.miss(ctx, s, ref, deviceID)
	}
	if !v.allows(ref.KeyID, deviceID) {
		s.add(resDenied)
		return nil, errDenied(ref, deviceID)
	}
	// Treat the silent KMS as failing: the next lookups are served stale at
	// once (and counted so) instead of each waiting StaleWait again; the
	// load still running clears this when it succeeds.
	e.retryAt.Store(c.clock() + int64(c.opts.StaleRetry))
	if !e.failing.Swap(true) {
		c.log.Warn("KMS or registry slow to answer, serving the cached DEK past its lifetime",
			zap.String("key_id", ref.KeyID), zap.String("key_version", ref.Version))
	}
	s.add(resStale)
	return v.aead, nil
}

func errDenied(ref dek.Ref, deviceID string) error {
	return fmt.Errorf("keycache: device %q may not use %s: %w", deviceID, ref, dek.ErrUnknownKey)
}

// touch records a use for the LRU, writing only when the recorded time is
// older than touchEvery.
func touch(e *entry, now int64) {
	if now-e.lastUsed.Load() >= touchEvery {
		e.lastUsed.Store(now)
	}
}

// miss waits for the shared load of ref.
func (c *Cache) miss(ctx context.Context, s *shard, ref dek.Ref, deviceID string) (cipher.AEAD, error) {
	cl := c.startLoad(ref, "miss", deviceID)
	select {
	case <-cl.done:
	case <-ctx.Done():
		s.add(resMiss)
		return nil, fmt.Errorf("keycache: waiting for %s: %w: %w", ref, dek.ErrUnavailable, context.Cause(ctx))
	}
	return c.finishMiss(s, ref, deviceID, cl)
}

// finishMiss turns a finished shared load into the lookup's answer.
func (c *Cache) finishMiss(s *shard, ref dek.Ref, deviceID string, cl *call) (cipher.AEAD, error) {
	if cl.err != nil {
		s.add(resMiss)
		return nil, cl.err
	}
	if !cl.val.allows(ref.KeyID, deviceID) {
		s.add(resDenied)
		return nil, errDenied(ref, deviceID)
	}
	if cl.stale {
		s.add(resStale)
	} else {
		s.add(resMiss)
	}
	return cl.val.aead, nil
}

// refreshAsync starts one background refresh of e unless one runs or the
// last failure was too recent.
func (c *Cache) refreshAsync(e *entry, now int64) {
	if e.refreshing.Load() || now < e.retryAt.Load() || !e.refreshing.CompareAndSwap(false, true) {
		return
	}
	if !c.goBG(func() {
		defer e.refreshing.Store(false)
		<-c.startLoad(e.ref, "refresh", "").done
	}) {
		e.refreshing.Store(false)
	}
}

// goBG runs f in a goroutine that Close waits for; false once closed.
func (c *Cache) goBG(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

// startLoad joins the load of ref in flight or starts one.
func (c *Cache) startLoad(ref dek.Ref, trigger, deviceID string) *call {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl := c.flight[ref]; cl != nil {
		return cl
	}
	cl := &call{done: make(chan struct{})}
	if trigger == "miss" {
		// The load this lookup missed may have published its answer and
		// left c.flight between the lookup and now: a load it publishes
		// first and leaves c.flight under c.mu after, so under c.mu one of
		// the two is seen, and a key is never unwrapped twice for
		// lookups that raced its load.
		if v, ok, err := c.cachedAnswer(ref); ok {
			cl.val, cl.err = v, err
			close(cl.done)
			return cl
		}
	}
	if c.closed {
		cl.err = fmt.Errorf("keycache: %s: cache closed: %w", ref, dek.ErrUnavailable)
		close(cl.done)
		return cl
	}
	c.flight[ref] = cl
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		cl.val, cl.stale, cl.err = c.load(ref, trigger, deviceID)
		c.mu.Lock()
		delete(c.flight, ref)
		c.mu.Unlock()
		close(cl.done)
	}()
	return cl
}

// cachedAnswer is what the cache holds for ref while it needs no load: a
// key within its lifetime, or a negative answer within its own.
func (c *Cache) cachedAnswer(ref dek.Ref) (v *value, ok bool, err error) {
	s := c.shardFor(ref.KeyID)
	s.mu.RLock()
	e := s.m[ref]
	s.mu.RUnlock()
	if e == nil {
		return nil, false, nil
	}
	now := c.clock()
	if e.kind != kindKey {
		return nil, now < e.until, e.err
	}
	v = e.v.Load()
	return v, now < v.expiresAt, nil
}

// outcome is what the registry and the KMS said about one version.
type outcome struct {
	kind    kind // kindKey, or a negative kind, or transient (below)
	aead    cipher.AEAD
	devices []string
	err     error
}

const kindTransient kind = 255 // outcome only: keep what is cached, if anything

// load fetches ref and publishes the result, unless a change event touched
// the shard meanwhile (then the registry read may predate it: redo).
func (c *Cache) load(ref dek.Ref, trigger, deviceID string) (*value, bool, error) {
	s := c.shardFor(ref.KeyID)
	for attempt := 1; ; attempt++ {
		s.mu.RLock()
		seq0 := s.seq
		s.mu.RUnlock()

		out := c.fetch(ref, trigger, deviceID)
		now := c.clock()

		s.mu.Lock()
		if s.seq != seq0 {
			s.mu.Unlock()
			if attempt < maxLoadAttempts {
				continue
			}
			// Changes keep racing the load: publish nothing, let the
			// caller retry.
			return nil, false, fmt.Errorf("keycache: %s changed during load: %w", ref, dek.ErrUnavailable)
		}
		v, stale, added, err := c.publishLocked(s, ref, out, now)
		s.mu.Unlock()
		if added != nil {
			c.evictOverflow(added)
		}
		return v, stale, err
	}
}

// publishLocked applies out to the shard (s.mu held). added is the entry if
// it is new in the map, so the caller enforces the size bound.
func (c *Cache) publishLocked(s *shard, ref dek.Ref, out outcome, now int64) (v *value, stale bool, added *entry, err error) {
	cur := s.m[ref]
	switch out.kind {
	case kindKey:
		v = c.newValue(out.aead, newDeviceSet(out.devices), now)
		if cur != nil && cur.kind == kindKey {
			cur.v.Store(v)
			cur.failing.Store(false)
			cur.retryAt.Store(0)
			return v, false, nil, nil
		}
		e := &entry{ref: ref, kind: kindKey}
		e.v.Store(v)
		e.lastUsed.Store(now)
		return v, false, c.putLocked(s, ref, e), nil

	case kindTransient:
		if cur != nil && cur.kind == kindKey {
			cv := cur.v.Load()
			if now < cv.staleUntil {
				if !cur.failing.Swap(true) {
					c.log.Warn("cannot refresh DEK, serving the cached one", zap.String("key_id", ref.KeyID),
						zap.String("key_version", ref.Version), zap.Error(out.err))
				}
				cur.retryAt.Store(now + int64(c.opts.StaleRetry))
				return cv, now >= cv.expiresAt, nil, nil
			}
			// Past the stale limit: keep the entry (a later success revives
			// it) but pace the next attempt.
			cur.failing.Store(true)
			cur.retryAt.Store(now + int64(c.opts.StaleRetry))
		}
		return nil, false, nil, out.err

	default: // a negative answer
		ttl, reason := c.opts.NegativeTTL, evictNotFound
		switch out.kind {
		case kindRevoked:
			// Remembered until a change event says otherwise, and re-checked
			// after a TTL in case the feed is not running.
			ttl, reason = c.opts.TTL, evictRevoked
		case kindFailed:
			reason = evictError
		}
		if cur != nil && cur.kind == kindKey {
			c.metrics.evictions[reason].Inc()
		}
		e := &entry{ref: ref, kind: out.kind, until: now + int64(ttl), err: out.err}
		e.lastUsed.Store(now)
		return nil, false, c.putLocked(s, ref, e), out.err
	}
}

// putLocked stores e under ref (s.mu held); it returns e if ref is new in
// the map, nil if e replaced an entry.
func (c *Cache) putLocked(s *shard, ref dek.Ref, e *entry) *entry {
	_, had := s.m[ref]
	s.m[ref] = e
	if had {
		return nil
	}
	c.count.Add(1)
	return e
}

// deleteLocked removes ref (s.mu held).
func (c *Cache) deleteLocked(s *shard, ref dek.Ref) {
	if _, ok := s.m[ref]; ok {
		delete(s.m, ref)
		c.count.Add(-1)
	}
}

// newValue computes a loaded entry's lifetime: TTL ± jitter from now.
func (c *Cache) newValue(aead cipher.AEAD, devices deviceSet, now int64) *value {
	ttl := float64(c.opts.TTL) * (1 + c.opts.Jitter*(2*c.opts.Rand()-1))
	exp := now + int64(ttl)
	return &value{
		aead:       aead,
		devices:    devices,
		refreshAt:  exp - int64(c.opts.RefreshAhead),
		expiresAt:  exp,
		staleUntil: exp + int64(c.opts.StaleLimit),
	}
}

// fetch reads ref from the registry and, if it may be decrypted, unwraps it.
func (c *Cache) fetch(ref dek.Ref, trigger, deviceID string) outcome {
	ctx, cancel := context.WithTimeout(c.base, c.opts.UnwrapTimeout)
	re, err := c.opts.Registry.Get(ctx, ref.KeyID, ref.Version)
	cancel()
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return outcome{kind: kindNotFound, err: fmt.Errorf("keycache: %s: %w", ref, dek.ErrUnknownKey)}
	case err != nil:
		return outcome{kind: kindTransient, err: fmt.Errorf("keycache: registry lookup %s: %w: %w", ref, dek.ErrUnavailable, err)}
	case !re.State.CanDecrypt():
		return outcome{kind: kindRevoked, err: fmt.Errorf("keycache: %s is %s: %w", ref, re.State, dek.ErrRevoked)}
	case re.Wrapped.IsZero():
		c.log.Error("registry entry has no wrapped DEK", zap.String("key_id", ref.KeyID), zap.String("key_version", ref.Version))
		return outcome{kind: kindFailed, err: fmt.Errorf("keycache: %s: registry holds no wrapped DEK: %w", ref, dek.ErrUnavailable)}
	}

	ctx, cancel = context.WithTimeout(c.base, c.opts.UnwrapTimeout)
	defer cancel()
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return outcome{kind: kindTransient, err: fmt.Errorf("keycache: unwrap %s: waiting for a KMS slot: %w: %w", ref, dek.ErrUnavailable, ctx.Err())}
	}
	ctx, cancel = context.WithTimeout(c.base, c.opts.UnwrapTimeout)
	defer cancel()
	start := c.opts.Now()
	key, err := c.opts.KMS.Unwrap(ctx, re.Wrapped, kms.DEKAAD(ref))
	dur := c.opts.Now().Sub(start)
	<-c.sem

	var out outcome
	var res UnwrapResult
	switch {
	case err == nil:
		aead, aerr := newAEAD(key) // wipes key
		if aerr != nil {
			res = UnwrapError
			out = outcome{kind: kindFailed, err: fmt.Errorf("keycache: unwrap %s: %w: %w", ref, dek.ErrUnavailable, aerr)}
		} else {
			res = UnwrapOK
			out = outcome{kind: kindKey, aead: aead, devices: re.Devices}
		}
	case errors.Is(err, kms.ErrRootRevoked):
		clear(key)
		res = UnwrapRevoked
		out = outcome{kind: kindRevoked, err: fmt.Errorf("keycache: unwrap %s: %w: %w", ref, dek.ErrRevoked, err)}
	case errors.Is(err, kms.ErrTransient), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		clear(key)
		res = UnwrapTransient
		out = outcome{kind: kindTransient, err: fmt.Errorf("keycache: unwrap %s: %w: %w", ref, dek.ErrUnavailable, err)}
	default:
		// Wrong ciphertext or AAD, unknown root key: retrying will not help,
		// but a message under this key must not be dead-lettered as
		// unknown_key for what may be a misconfigured KMS. Remembered for
		// NegativeTTL so the KMS is not asked again for every message.
		clear(key)
		res = UnwrapError
		c.log.Error("KMS refused to unwrap DEK", zap.String("key_id", ref.KeyID), zap.String("key_version", ref.Version), zap.Error(err))
		out = outcome{kind: kindFailed, err: fmt.Errorf("keycache: unwrap %s: %w: %w", ref, dek.ErrUnavailable, err)}
	}
	c.metrics.observeUnwrap(res, dur)
	c.opts.Audit.Record(c.base, UnwrapEvent{
		Time:           start,
		KeyID:          ref.KeyID,
		Version:        ref.Version,
		RootKeyID:      re.Wrapped.RootKeyID,
		RootKeyVersion: re.Wrapped.RootKeyVersion,
		Trigger:        trigger,
		DeviceID:       deviceID,
		Result:         res,
		Duration:       dur,
	})
	return out
}

// evictOverflow removes least recently used entries (approximately) while
// the cache is over MaxEntries, sparing added, the entry whose insertion
// made it overflow (evicting what was just loaded would only thrash).
// Called without any shard lock held.
func (c *Cache) evictOverflow(added *entry) {
	for c.count.Load() > int64(c.opts.MaxEntries) {
		if !c.evictOne(added) {
			return
		}
	}
}

// evictOne samples up to evictSample entries, at most evictPerShard from
// each shard from a rotating start (Go's map iteration starts at a random
// position, so each shard's share is random), and removes the least recently
// used of them. Sampling across shards keeps the choice good even when each
// shard holds only a few entries. Shard locks are taken one at a time.
func (c *Cache) evictOne(spare *entry) bool {
	var (
		victim *entry
		vs     *shard
		oldest int64
		n      int
	)
	start := int(c.evictCursor.Add(1))
	for i := 0; i < numShards && n < evictSample; i++ {
		s := &c.shards[(start+i)%numShards]
		s.mu.RLock()
		k := 0
		for _, e := range s.m {
			if e == spare {
				continue
			}
			if lu := e.lastUsed.Load(); victim == nil || lu < oldest {
				victim, vs, oldest = e, s, lu
			}
			n++
			if k++; k == evictPerShard || n == evictSample {
				break
			}
		}
		s.mu.RUnlock()
	}
	if victim == nil {
		return false
	}
	vs.mu.Lock()
	if vs.m[victim.ref] == victim && c.count.Load() > int64(c.opts.MaxEntries) {
		c.deleteLocked(vs, victim.ref)
		c.metrics.evictions[evictCapacity].Inc()
	}
	vs.mu.Unlock()
	return true
}

// staleServing counts entries past their lifetime that are still served.
// Computed at scrape time: a full scan, cheap next to a scrape interval.
func (c *Cache) staleServing() int {
	now := c.clock()
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		for _, e := range s.m {
			if e.kind != kindKey || !e.failing.Load() {
				continue
			}
			if v := e.v.Load(); now >= v.expiresAt && now < v.staleUntil {
				n++
			}
		}
		s.mu.RUnlock()
	}
	return n
}
