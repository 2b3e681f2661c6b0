package keycache

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// cached is ResolveCachedKey on the test's cache. (Failure messages say
// whether a cipher came back, never print one: it holds the key schedule.)
func cached(e *env, keyID, version, device string) error {
	_, err := e.c.ResolveCachedKey(keyID, version, device)
	return err
}

// asked is what the registry, the KMS and the audit log have seen so far.
type asked struct{ gets, unwraps, audits int64 }

func askedOf(e *env) asked {
	return asked{e.reg.gets.Load(), e.kms.calls.Load(), int64(len(e.audit.all()))}
}

// settle waits until no load or background refresh runs, so that counters
// read afterwards are final.
func settle(t *testing.T, e *env, keyID string) {
	t.Helper()
	wait.For(t, "loads and refreshes to settle", func() bool {
		en := entryOf(e.c, keyID)
		return inFlight(e.c) == 0 && (en == nil || !en.refreshing.Load())
	})
}

// A miss answers ErrWouldWait and starts nothing: no registry read, no
// unwrap, no audit event, no entry, no load in flight, no request counted
// (the caller goes on to ResolveKey, which counts the lookup).
func TestResolveCachedKeyMissStartsNoLoad(t *testing.T) {
	e := newEnv(t, nil)
	key := e.addKey("group/a", "v1", dev)

	for i := range 3 {
		aead, err := e.c.ResolveCachedKey("group/a", "v1", dev)
		if !errors.Is(err, dek.ErrWouldWait) || aead != nil {
			t.Fatalf("lookup %d of an uncached key: cipher returned %v, err %v; want none, ErrWouldWait", i, aead != nil, err)
		}
		for _, verdict := range []error{dek.ErrUnknownKey, dek.ErrRevoked, dek.ErrUnavailable} {
			if errors.Is(err, verdict) {
				t.Fatalf("ErrWouldWait also carries %v: it is no verdict on the key", verdict)
			}
		}
	}
	if got := askedOf(e); got != (asked{}) {
		t.Fatalf("after ResolveCachedKey misses: registry reads, unwraps, audit events = %+v, want none", got)
	}
	if n := inFlight(e.c); n != 0 {
		t.Fatalf("%d loads in flight after ResolveCachedKey misses, want 0", n)
	}
	if n := e.c.count.Load(); n != 0 {
		t.Fatalf("%d cache entries after ResolveCachedKey misses, want 0", n)
	}
	for r := range numResults {
		if n := requests(t, e.c, r); n != 0 {
			t.Errorf("requests{%d} = %d after ResolveCachedKey misses, want 0", r, n)
		}
	}

	// ResolveKey loads it; from then on ResolveCachedKey hits with the
	// same cipher and asks nobody.
	loaded, err := resolve(e, "group/a", "v1", dev)
	if err != nil {
		t.Fatal(err)
	}
	before := askedOf(e)
	if before != (asked{1, 1, 1}) {
		t.Fatalf("after the load: %+v, want one registry read, one unwrap, one audit event", before)
	}
	for i := range 3 {
		aead, err := e.c.ResolveCachedKey("group/a", "v1", dev)
		if err != nil {
			t.Fatalf("hit %d: %v", i, err)
		}
		if aead != loaded {
			t.Fatalf("hit %d: a different cipher than ResolveKey returned", i)
		}
		mustOpen(t, aead, key)
	}
	if got := askedOf(e); got != before {
		t.Errorf("hits asked registry/KMS/audit: %+v, want %+v", got, before)
	}
	if got := requests(t, e.c, resHit); got != 3 {
		t.Errorf("hits = %d, want 3", got)
	}
}

// ResolveCachedKey does not join a load in flight: it answers ErrWouldWait
// at once while ResolveKey waits for the KMS, and starts no second load.
func TestResolveCachedKeyDoesNotJoinLoad(t *testing.T) {
	e := newEnv(t, nil)
	e.addKey("group/a", "v1", dev)
	release := e.kms.holdUntilReleased()
	loaded := make(chan error, 1)
	go func() {
		_, err := resolve(e, "group/a", "v1", dev)
		loaded <- err
	}()
	wait.For(t, "the unwrap to start", func() bool { return e.kms.calls.Load() == 1 })

	if err := cached(e, "group/a", "v1", dev); !errors.Is(err, dek.ErrWouldWait) {
		t.Fatalf("during the load: err = %v, want ErrWouldWait", err)
	}
	if got := e.kms.calls.Load(); got != 1 {
		t.Errorf("unwraps = %d, want 1", got)
	}
	close(release)
	if err := <-loaded; err != nil {
		t.Fatalf("ResolveKey: %v", err)
	}
	if err := cached(e, "group/a", "v1", dev); err != nil {
		t.Fatalf("after the load: %v", err)
	}
}

// Cached verdicts are answered as ResolveKey answers them, without asking
// anyone and without ErrWouldWait.
func TestResolveCachedKeyVerdicts(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(e *env) // loads the verdict through ResolveKey
		keyID  string
		device string
		loader string // the device whose lookup loads the key; "" = device
		want   error
	}{
		{
			name:   "unknown key",
			setup:  func(e *env) {},
			keyID:  "group/none",
			device: dev,
			want:   dek.ErrUnknownKey,
		},
		{
			name: "revoked",
			setup: func(e *env) {
				e.addKey("group/r", "v1", dev)
				e.reg.update(dek.Ref{KeyID: "group/r", Version: "v1"}, func(en *registry.Entry) { en.State = dek.StateRevoked })
			},
			keyID:  "group/r",
			device: dev,
			want:   dek.ErrRevoked,
		},
		{
			name: "root key revoked",
			setup: func(e *env) {
				e.addKey("group/rr", "v1", dev)
				e.kms.setErr(fmt.Errorf("kp: %w", kms.ErrRootRevoked))
			},
			keyID:  "group/rr",
			device: dev,
			want:   dek.ErrRevoked,
		},
		{
			name: "KMS refused for good",
			setup: func(e *env) {
				e.addKey("group/f", "v1", dev)
				e.kms.setErr(errors.New("fake kms: wrong ciphertext"))
			},
			keyID:  "group/f",
			device: dev,
			want:   dek.ErrUnavailable,
		},
		{
			name:   "device not in the group",
			setup:  func(e *env) { e.addKey("group/g", "v1", "dev-1", "dev-2") },
			keyID:  "group/g",
			device: "dev-3",
			loader: "dev-1",
			want:   dek.ErrUnknownKey,
		},
		{
			name:   "another device's key",
			setup:  func(e *env) { e.addKey("device/dev-1", "v1") },
			keyID:  "device/dev-1",
			device: "dev-2",
			loader: "dev-1",
			want:   dek.ErrUnknownKey,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			tt.setup(e)
			// The load (by an allowed device, where the case has one, so
			// that a denial comes from the cached entry), then ResolveKey's
			// cached answer to compare with.
			loader := tt.device
			if tt.loader != "" {
				loader = tt.loader
			}
			if _, err := resolve(e, tt.keyID, "v1", loader); tt.loader == "" && !errors.Is(err, tt.want) {
				t.Fatalf("ResolveKey: err = %v, want %v", err, tt.want)
			} else if tt.loader != "" && err != nil {
				t.Fatalf("ResolveKey for %s: %v", tt.loader, err)
			}
			_, want := resolve(e, tt.keyID, "v1", tt.device)
			if !errors.Is(want, tt.want) {
				t.Fatalf("ResolveKey (cached): err = %v, want %v", want, tt.want)
			}
			before := askedOf(e)

			aead, err := e.c.ResolveCachedKey(tt.keyID, "v1", tt.device)
			if aead != nil || !errors.Is(err, tt.want) {
				t.Fatalf("ResolveCachedKey: cipher returned %v, err %v; want none, %v", aead != nil, err, tt.want)
			}
			if errors.Is(err, dek.ErrWouldWait) {
				t.Fatalf("ResolveCachedKey: a cached verdict came back as ErrWouldWait: %v", err)
			}
			if err.Error() != want.Error() {
				t.Errorf("ResolveCachedKey: %q, ResolveKey: %q", err, want)
			}
			if got := askedOf(e); got != before {
				t.Errorf("ResolveCachedKey asked registry/KMS/audit: %+v, was %+v", got, before)
			}
		})
	}
}

// Entries past their lifetime: without a known failure ResolveCachedKey
// says ErrWouldWait (ResolveKey would reload) and starts nothing; within
// the refresh-ahead window it still hits.
func TestResolveCachedKeyExpiry(t *testing.T) {
	tests := []struct {
		name    string
		advance time.Duration
		want    error // nil: a hit
	}{
		{"within lifetime", DefaultTTL - DefaultRefreshAhead - time.Minute, nil},
		{"refresh-ahead window", DefaultTTL - time.Minute, nil},
		{"past lifetime, within stale limit", DefaultTTL + time.Minute, dek.ErrWouldWait},
		{"past stale limit", DefaultTTL + DefaultStaleLimit + time.Minute, dek.ErrWouldWait},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			key := e.addKey("group/a", "v1", dev)
			loaded, err := resolve(e, "group/a", "v1", dev)
			if err != nil {
				t.Fatal(err)
			}
			e.clock.Advance(tt.advance)
			before := askedOf(e)

			aead, err := e.c.ResolveCachedKey("group/a", "v1", dev)
			if tt.want == nil {
				if err != nil || aead != loaded {
					t.Fatalf("err = %v, same cipher = %v; want the loaded cipher", err, aead == loaded)
				}
				return
			}
			if aead != nil || !errors.Is(err, tt.want) {
				t.Fatalf("cipher returned %v, err %v; want none, %v", aead != nil, err, tt.want)
			}
			if errors.Is(err, dek.ErrUnavailable) {
				t.Fatalf("err %v: nothing failed, so it is no verdict", err)
			}
			if got := askedOf(e); got != before {
				t.Errorf("ResolveCachedKey asked registry/KMS/audit: %+v, was %+v", got, before)
			}
			if n := inFlight(e.c); n != 0 {
				t.Errorf("%d loads in flight, want 0", n)
			}
			if en := entryOf(e.c, "group/a"); en == nil || en.refreshing.Load() {
				t.Errorf("entry dropped or refreshing after ResolveCachedKey")
			}

			// ResolveKey reloads, and ResolveCachedKey hits again.
			aead, err = resolve(e, "group/a", "v1", dev)
			if err != nil {
				t.Fatalf("ResolveKey: %v", err)
			}
			mustOpen(t, aead, key)
			if got := e.kms.calls.Load(); got != before.unwraps+1 {
				t.Errorf("unwraps = %d, want %d (one reload)", got, before.unwraps+1)
			}
			if err := cached(e, "group/a", "v1", dev); err != nil {
				t.Errorf("after the reload: %v", err)
			}
		})
	}

	t.Run("negative answer past NegativeTTL", func(t *testing.T) {
		e := newEnv(t, nil)
		if _, err := resolve(e, "group/late", "v1", dev); !errors.Is(err, dek.ErrUnknownKey) {
			t.Fatalf("err = %v, want ErrUnknownKey", err)
		}
		e.clock.Advance(DefaultNegativeTTL - time.Second)
		if err := cached(e, "group/late", "v1", dev); !errors.Is(err, dek.ErrUnknownKey) {
			t.Fatalf("within NegativeTTL: err = %v, want ErrUnknownKey", err)
		}
		e.clock.Advance(2 * time.Second)
		before := askedOf(e)
		if err := cached(e, "group/late", "v1", dev); !errors.Is(err, dek.ErrWouldWait) || errors.Is(err, dek.ErrUnknownKey) {
			t.Fatalf("past NegativeTTL: err = %v, want ErrWouldWait only", err)
		}
		if got := askedOf(e); got != before {
			t.Errorf("ResolveCachedKey asked registry/KMS/audit: %+v, was %+v", got, before)
		}
	})
}

// While the KMS fails: served stale within the stale limit (a denied device
// still denied), then, past it, the failure is answered as ResolveKey
// answers it until the next attempt is due, and ErrWouldWait once it is.
func TestResolveCachedKeyKMSDown(t *testing.T) {
	e := newEnv(t, nil)
	key := e.addKey("group/a", "v1", dev)
	loaded, err := resolve(e, "group/a", "v1", dev)
	if err != nil {
		t.Fatal(err)
	}
	e.kms.setErr(fmt.Errorf("kp: dial tcp: %w", kms.ErrTransient))

	// A hit in the refresh-ahead window starts the refresh, which fails.
	e.clock.Advance(DefaultTTL - time.Minute)
	if err := cached(e, "group/a", "v1", dev); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the failed refresh", func() bool { return entryOf(e.c, "group/a").failing.Load() })
	settle(t, e, "group/a")

	// Past the lifetime: served stale, counted as such.
	e.clock.Advance(2 * time.Minute)
	aead, err := e.c.ResolveCachedKey("group/a", "v1", dev)
	if err != nil || aead != loaded {
		t.Fatalf("stale serve: err = %v, same cipher = %v", err, aead == loaded)
	}
	mustOpen(t, aead, key)
	if got := requests(t, e.c, resStale); got != 1 {
		t.Errorf("stale lookups = %d, want 1", got)
	}
	if err := cached(e, "group/a", "v1", "dev-other"); !errors.Is(err, dek.ErrUnknownKey) {
		t.Errorf("denied device while stale: err = %v, want ErrUnknownKey", err)
	}
	settle(t, e, "group/a")

	// Past the stale limit, the last attempt long ago: ResolveKey would
	// try again, so ResolveCachedKey would wait.
	e.clock.Advance(DefaultStaleLimit)
	before := askedOf(e)
	if err := cached(e, "group/a", "v1", dev); !errors.Is(err, dek.ErrWouldWait) {
		t.Fatalf("past the stale limit, retry due: err = %v, want ErrWouldWait", err)
	}
	if got := askedOf(e); got != before {
		t.Errorf("ResolveCachedKey asked registry/KMS/audit: %+v, was %+v", got, before)
	}
	// ResolveKey tries, fails; now the failure is fresh and is the answer
	// of both, with no new attempt.
	if _, err := resolve(e, "group/a", "v1", dev); !errors.Is(err, dek.ErrUnavailable) {
		t.Fatalf("ResolveKey past the stale limit: err = %v, want ErrUnavailable", err)
	}
	before = askedOf(e)
	aead, err = e.c.ResolveCachedKey("group/a", "v1", dev)
	if aead != nil || !errors.Is(err, dek.ErrUnavailable) || errors.Is(err, dek.ErrWouldWait) {
		t.Fatalf("past the stale limit, just failed: cipher returned %v, err %v; want none, ErrUnavailable", aead != nil, err)
	}
	if got := askedOf(e); got != before {
		t.Errorf("ResolveCachedKey asked registry/KMS/audit: %+v, was %+v", got, before)
	}
	// The next attempt falls due.
	e.clock.Advance(DefaultStaleRetry)
	if err := cached(e, "group/a", "v1", dev); !errors.Is(err, dek.ErrWouldWait) {
		t.Fatalf("past the stale limit, retry due again: err = %v, want ErrWouldWait", err)
	}
	// The KMS is back: ResolveKey reloads, ResolveCachedKey hits.
	e.kms.setErr(nil)
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatalf("KMS back: %v", err)
	}
	aead, err = e.c.ResolveCachedKey("group/a", "v1", dev)
	if err != nil {
		t.Fatalf("after the reload: %v", err)
	}
	mustOpen(t, aead, key)
}

// PrefetchKey starts the load a miss would wait for, without waiting, and
// only then: one load for many prefetches of one version, none for a key
// already cached, and ResolveKey joins it.
func TestPrefetchKey(t *testing.T) {
	e := newEnv(t, nil)
	key := e.addKey("group/a", "v1", dev)
	release := e.kms.holdUntilReleased()
	for range 5 {
		e.c.PrefetchKey("group/a", "v1", dev) // returns at once: the KMS is held
	}
	wait.For(t, "the prefetched unwrap to start", func() bool { return e.kms.calls.Load() == 1 })
	if n := inFlight(e.c); n != 1 {
		t.Fatalf("%d loads in flight after 5 prefetches of one version, want 1", n)
	}
	loaded := make(chan error, 1)
	go func() {
		_, err := resolve(e, "group/a", "v1", dev)
		loaded <- err
	}()
	close(release)
	if err := <-loaded; err != nil {
		t.Fatalf("ResolveKey after the prefetch: %v", err)
	}
	settle(t, e, "group/a")
	aead, err := e.c.ResolveCachedKey("group/a", "v1", dev)
	if err != nil {
		t.Fatalf("after the prefetched load: %v", err)
	}
	mustOpen(t, aead, key)
	e.c.PrefetchKey("group/a", "v1", dev) // cached: nothing to do
	settle(t, e, "group/a")
	if got := askedOf(e); got != (asked{1, 1, 1}) {
		t.Fatalf("registry reads, unwraps, audit events = %+v, want one each", got)
	}
}

// A miss that lost the race with the load it missed (the load published
// and left the in-flight set between the lookup and its startLoad) gets
// the published answer instead of unwrapping the key a second time.
func TestStartLoadAfterRacedLoad(t *testing.T) {
	e := newEnv(t, nil)
	e.addKey("group/a", "v1", dev)
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatal(err)
	}
	settle(t, e, "group/a")
	before := askedOf(e)
	cl := e.c.startLoad(dek.Ref{KeyID: "group/a", Version: "v1"}, "miss", dev)
	<-cl.done
	if cl.err != nil || cl.val == nil {
		t.Fatalf("startLoad of a cached key: err %v, value %v", cl.err, cl.val != nil)
	}
	settle(t, e, "group/a")
	if got := askedOf(e); got != before {
		t.Fatalf("startLoad of a cached key asked registry/KMS/audit: %+v, before %+v", got, before)
	}
	// A refresh is a deliberate reload and still loads.
	<-e.c.startLoad(dek.Ref{KeyID: "group/a", Version: "v1"}, "refresh", "").done
	if got := e.kms.calls.Load(); got != before.unwraps+1 {
		t.Fatalf("refresh: %d unwraps, want %d", got, before.unwraps+1)
	}
}
