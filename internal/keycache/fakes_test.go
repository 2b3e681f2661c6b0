package keycache

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/testutil/fakeclock"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// fakeRegistry is an in-memory registry with fault injection. It is also a
// ChangeFeed: the test pushes events with emit.
type fakeRegistry struct {
	mu      sync.Mutex
	entries map[dek.Ref]registry.Entry
	err     error // returned by Get when set
	gets    atomic.Int64

	feedMu  sync.Mutex
	feeds   []chan registry.Change
	watches atomic.Int64
}

func newFakeRegistry() *fakeRegistry {
	return &fakeRegistry{entries: map[dek.Ref]registry.Entry{}}
}

func (r *fakeRegistry) Get(ctx context.Context, keyID, version string) (registry.Entry, error) {
	r.gets.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return registry.Entry{}, r.err
	}
	e, ok := r.entries[dek.Ref{KeyID: keyID, Version: version}]
	if !ok {
		return registry.Entry{}, registry.ErrNotFound
	}
	e.Devices = slices.Clone(e.Devices)
	return e, nil
}

func (r *fakeRegistry) put(e registry.Entry) {
	r.mu.Lock()
	r.entries[e.Ref()] = e
	r.mu.Unlock()
}

func (r *fakeRegistry) update(ref dek.Ref, fn func(*registry.Entry)) {
	r.mu.Lock()
	e := r.entries[ref]
	fn(&e)
	r.entries[ref] = e
	r.mu.Unlock()
}

func (r *fakeRegistry) setErr(err error) {
	r.mu.Lock()
	r.err = err
	r.mu.Unlock()
}

// Watch hands out a channel that emit feeds; it is closed when ctx ends or
// the test calls closeFeeds.
func (r *fakeRegistry) Watch(ctx context.Context) (<-chan registry.Change, error) {
	r.watches.Add(1)
	ch := make(chan registry.Change, 16)
	r.feedMu.Lock()
	r.feeds = append(r.feeds, ch)
	r.feedMu.Unlock()
	go func() {
		<-ctx.Done()
		r.closeFeed(ch)
	}()
	return ch, nil
}

func (r *fakeRegistry) closeFeed(ch chan registry.Change) {
	r.feedMu.Lock()
	defer r.feedMu.Unlock()
	for i, f := range r.feeds {
		if f == ch {
			close(f)
			r.feeds = slices.Delete(r.feeds, i, i+1)
			return
		}
	}
}

func (r *fakeRegistry) closeFeeds() {
	r.feedMu.Lock()
	defer r.feedMu.Unlock()
	for _, f := range r.feeds {
		close(f)
	}
	r.feeds = nil
}

func (r *fakeRegistry) emit(ch registry.Change) {
	r.feedMu.Lock()
	defer r.feedMu.Unlock()
	for _, f := range r.feeds {
		f <- ch
	}
}

// fakeKMS "wraps" a DEK by remembering it under a random-looking ciphertext.
// Faults: err (returned instead of a key), hook (runs before answering, may
// block on the context), latency. It records the most calls in flight and
// every slice it handed out, to check they were wiped.
type fakeKMS struct {
	mu      sync.Mutex
	keys    map[string][]byte
	err     error
	hook    func(ctx context.Context) error
	latency time.Duration
	handed  [][]byte
	aads    [][]string

	calls       atomic.Int64
	inFlight    atomic.Int64
	maxInFlight atomic.Int64
}

func newFakeKMS() *fakeKMS { return &fakeKMS{keys: map[string][]byte{}} }

// wrap makes a wrapped DEK for ref whose key is derived from ref's name.
func (k *fakeKMS) wrap(ref dek.Ref) (kms.Wrapped, []byte) {
	key := testKey(ref)
	ct := sha256.Sum256(append([]byte("wrapped:"), key...))
	k.mu.Lock()
	k.keys[string(ct[:])] = key
	k.mu.Unlock()
	return kms.Wrapped{RootKeyID: "root-1", RootKeyVersion: "1", Ciphertext: ct[:]}, key
}

func testKey(ref dek.Ref) []byte {
	k := sha256.Sum256([]byte("dek:" + ref.String()))
	return k[:]
}

func (k *fakeKMS) setErr(err error) {
	k.mu.Lock()
	k.err = err
	k.mu.Unlock()
}

func (k *fakeKMS) setHook(h func(ctx context.Context) error) {
	k.mu.Lock()
	k.hook = h
	k.mu.Unlock()
}

// holdUntilReleased makes every unwrap wait until the returned channel is
// closed (then it succeeds) or its context ends (then it fails as
// transient).
func (k *fakeKMS) holdUntilReleased() chan struct{} {
	release := make(chan struct{})
	k.setHook(func(ctx context.Context) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", kms.ErrTransient, ctx.Err())
		}
	})
	return release
}

func (k *fakeKMS) Unwrap(ctx context.Context, w kms.Wrapped, aad []string) ([]byte, error) {
	k.calls.Add(1)
	n := k.inFlight.Add(1)
	defer k.inFlight.Add(-1)
	for {
		m := k.maxInFlight.Load()
		if n <= m || k.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	k.mu.Lock()
	hook, err, latency := k.hook, k.err, k.latency
	k.aads = append(k.aads, slices.Clone(aad))
	k.mu.Unlock()
	if latency > 0 {
		time.Sleep(latency)
	}
	if hook != nil {
		if herr := hook(ctx); herr != nil {
			return nil, herr
		}
	}
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	key, ok := k.keys[string(w.Ciphertext)]
	if !ok {
		return nil, errors.New("fake kms: cannot unwrap: unknown ciphertext")
	}
	out := slices.Clone(key)
	k.handed = append(k.handed, out)
	return out, nil
}

// blockUntilCancelled is a KMS hook that never answers by itself.
func blockUntilCancelled(ctx context.Context) error {
	<-ctx.Done()
	return fmt.Errorf("fake kms: %w: %w", kms.ErrTransient, ctx.Err())
}

// auditLog collects audit events.
type auditLog struct {
	mu     sync.Mutex
	events []UnwrapEvent
}

func (a *auditLog) Record(_ context.Context, ev UnwrapEvent) {
	a.mu.Lock()
	a.events = append(a.events, ev)
	a.mu.Unlock()
}

func (a *auditLog) all() []UnwrapEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.events)
}

// env is a cache over fakes.
type env struct {
	c     *Cache
	reg   *fakeRegistry
	kms   *fakeKMS
	clock *fakeclock.Clock
	audit *auditLog
}

func newEnv(t testing.TB, mod func(*Options)) *env {
	t.Helper()
	e := &env{reg: newFakeRegistry(), kms: newFakeKMS(), clock: fakeclock.New(), audit: &auditLog{}}
	opts := Options{
		Registry: e.reg,
		Changes:  e.reg,
		KMS:      e.kms,
		Audit:    e.audit,
		Now:      e.clock.Now,
		Rand:     func() float64 { return 0.5 }, // no jitter unless a test wants it
	}
	if mod != nil {
		mod(&opts)
	}
	c, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	e.c = c
	return e
}

// addKey registers an active key version and returns its raw key.
func (e *env) addKey(keyID, version string, devices ...string) []byte {
	ref := dek.Ref{KeyID: keyID, Version: version}
	w, key := e.kms.wrap(ref)
	e.reg.put(registry.Entry{KeyID: keyID, Version: version, State: dek.StateActive, Wrapped: w, Devices: devices})
	return key
}

// startRun runs the change feed consumer until the test ends, and waits for
// its first subscription.
func (e *env) startRun(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	before := e.reg.watches.Load()
	go func() { done <- e.c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	wait.For(t, "first subscription", func() bool { return e.reg.watches.Load() > before })
}
