package keycache

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

const dev = "dev-1"

// mustOpen checks that aead opens what the raw key sealed.
func mustOpen(t *testing.T, aead cipher.AEAD, key []byte) {
	t.Helper()
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, 12)
	ct := ref.Seal(nil, nonce, []byte("reading"), []byte("aad"))
	pt, err := aead.Open(nil, nonce, ct, []byte("aad"))
	if err != nil || string(pt) != "reading" {
		t.Fatalf("cached cipher does not open what the key sealed: %v", err)
	}
}

func resolve(e *env, keyID, version, device string) (cipher.AEAD, error) {
	return e.c.ResolveKey(context.Background(), keyID, version, device)
}

func requests(t *testing.T, c *Cache, r result) uint64 {
	t.Helper()
	var n uint64
	for i := range c.shards {
		n += c.shards[i].reqs[r].Load()
	}
	return n
}

func TestMissThenHit(t *testing.T) {
	e := newEnv(t, nil)
	keyID := dek.DeviceKeyID(dev)
	key := e.addKey(keyID, "v1")

	for i := range 3 {
		aead, err := resolve(e, keyID, "v1", dev)
		if err != nil {
			t.Fatalf("lookup %d: %v", i, err)
		}
		mustOpen(t, aead, key)
	}
	if got := e.kms.calls.Load(); got != 1 {
		t.Errorf("KMS unwraps = %d, want 1", got)
	}
	if got, want := requests(t, e.c, resMiss), uint64(1); got != want {
		t.Errorf("misses = %d, want %d", got, want)
	}
	if got, want := requests(t, e.c, resHit), uint64(2); got != want {
		t.Errorf("hits = %d, want %d", got, want)
	}
	// The KMS was asked with the AAD that binds the DEK to its name.
	if want := kms.DEKAAD(dek.Ref{KeyID: keyID, Version: "v1"}); !slices.Equal(e.kms.aads[0], want) {
		t.Errorf("unwrap AAD = %q, want %q", e.kms.aads[0], want)
	}
	evs := e.audit.all()
	if len(evs) != 1 {
		t.Fatalf("audit events = %d, want 1", len(evs))
	}
	ev := evs[0]
	if ev.KeyID != keyID || ev.Version != "v1" || ev.Result != UnwrapOK || ev.Trigger != "miss" ||
		ev.DeviceID != dev || ev.RootKeyID != "root-1" || ev.RootKeyVersion != "1" || ev.Time.IsZero() {
		t.Errorf("audit event = %+v", ev)
	}
}

func TestDevicePrefixMatchesDEK(t *testing.T) {
	// The hit path checks a device's own key with dek.IsDeviceKeyIDOf.
	if v := (value{}); !v.allows(dek.DeviceKeyID("x"), "x") || v.allows(dek.DeviceKeyID("x"), "y") {
		t.Fatal("the hit path does not take dek.DeviceKeyID(x) for device x's own key")
	}
}

func TestUnwrappedKeyIsWiped(t *testing.T) {
	e := newEnv(t, nil)
	e.addKey("group/a", "v1", dev)
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatal(err)
	}
	e.kms.mu.Lock()
	defer e.kms.mu.Unlock()
	if len(e.kms.handed) != 1 {
		t.Fatalf("KMS handed out %d keys, want 1", len(e.kms.handed))
	}
	for _, b := range e.kms.handed {
		if len(b) != 32 || slices.ContainsFunc(b, func(x byte) bool { return x != 0 }) {
			t.Errorf("unwrapped key not wiped: %d bytes, %x...", len(b), b[:4])
		}
	}
}

func TestWrongKeySizeIsWipedAndRefused(t *testing.T) {
	e := newEnv(t, nil)
	e.addKey("group/a", "v1", dev)
	short := []byte("sixteen byte key")
	e.kms.setHook(func(context.Context) error { return nil })
	// Replace what the KMS hands out with a 16-byte key.
	e.kms.mu.Lock()
	for ct := range e.kms.keys {
		e.kms.keys[ct] = short
	}
	e.kms.mu.Unlock()
	_, err := resolve(e, "group/a", "v1", dev)
	if !errors.Is(err, dek.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	for _, b := range e.kms.handed {
		if slices.ContainsFunc(b, func(x byte) bool { return x != 0 }) {
			t.Errorf("refused key not wiped")
		}
	}
}

func TestSingleflight(t *testing.T) {
	e := newEnv(t, nil)
	key := e.addKey("group/hot", "v1", dev)
	release := make(chan struct{})
	e.kms.setHook(func(ctx context.Context) error {
		<-release
		return nil
	})
	const n = 1000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	aeads := make(chan cipher.AEAD, n)
	for range n {
		wg.Go(func() {
			aead, err := resolve(e, "group/hot", "v1", dev)
			if err != nil {
				errs <- err
				return
			}
			aeads <- aead
		})
	}
	// Let the lookups pile up on the one load, then answer it.
	wait.For(t, "the unwrap to start", func() bool { return e.kms.calls.Load() == 1 })
	time.Sleep(20 * time.Millisecond)
	close(release)
	wg.Wait()
	close(errs)
	close(aeads)
	for err := range errs {
		t.Fatalf("lookup: %v", err)
	}
	for aead := range aeads {
		mustOpen(t, aead, key)
		break
	}
	if got := e.kms.calls.Load(); got != 1 {
		t.Errorf("KMS unwraps for %d concurrent lookups = %d, want 1", n, got)
	}
	if got := e.reg.gets.Load(); got != 1 {
		t.Errorf("registry reads = %d, want 1", got)
	}
	if got := len(e.audit.all()); got != 1 {
		t.Errorf("audit events = %d, want 1", got)
	}
}

func TestUnwrapConcurrencyCap(t *testing.T) {
	const cap, keys = 16, 10_000
	e := newEnv(t, func(o *Options) { o.MaxConcurrentUnwraps = cap; o.UnwrapTimeout = time.Minute })
	e.kms.latency = time.Millisecond
	for i := range keys {
		e.addKey(fmt.Sprintf("group/%d", i), "v1", dev)
	}
	var wg sync.WaitGroup
	var failed sync.Once
	for i := range keys {
		wg.Go(func() {
			if _, err := resolve(e, fmt.Sprintf("group/%d", i), "v1", dev); err != nil {
				failed.Do(func() { t.Errorf("lookup %d: %v", i, err) })
			}
		})
	}
	wg.Wait()
	if got := e.kms.calls.Load(); got != keys {
		t.Errorf("unwraps = %d, want %d", got, keys)
	}
	if got := e.kms.maxInFlight.Load(); got > cap || got < 2 {
		t.Errorf("most unwraps in flight = %d, want 2..%d", got, cap)
	}
	t.Logf("most unwraps in flight: %d (cap %d)", e.kms.maxInFlight.Load(), cap)
}

func TestLookupOutcomes(t *testing.T) {
	permanent := errors.New("fake kms: wrong ciphertext")
	tests := []struct {
		name     string
		state    dek.State // registry state; "" = absent
		regErr   error
		kmsErr   error
		want     error
		cached   bool // a second lookup asks neither registry nor KMS
		wantKMS  int64
		kmsLabel UnwrapResult
	}{
		{name: "active", state: dek.StateActive, cached: true, wantKMS: 1, kmsLabel: UnwrapOK},
		{name: "decrypt_only", state: dek.StateDecryptOnly, cached: true, wantKMS: 1, kmsLabel: UnwrapOK},
		{name: "revoked", state: dek.StateRevoked, want: dek.ErrRevoked, cached: true},
		{name: "shredded", state: dek.StateShredded, want: dek.ErrRevoked, cached: true},
		{name: "not in registry", want: dek.ErrUnknownKey, cached: true},
		{name: "registry down", state: dek.StateActive, regErr: errors.New("connection refused"), want: dek.ErrUnavailable},
		{name: "root key revoked", state: dek.StateActive, kmsErr: fmt.Errorf("kp: %w", kms.ErrRootRevoked), want: dek.ErrRevoked, cached: true, wantKMS: 1, kmsLabel: UnwrapRevoked},
		{name: "kms transient", state: dek.StateActive, kmsErr: fmt.Errorf("kp: 503: %w", kms.ErrTransient), want: dek.ErrUnavailable, wantKMS: 1, kmsLabel: UnwrapTransient},
		{name: "kms deadline", state: dek.StateActive, kmsErr: context.DeadlineExceeded, want: dek.ErrUnavailable, wantKMS: 1, kmsLabel: UnwrapTransient},
		{name: "kms permanent", state: dek.StateActive, kmsErr: permanent, want: dek.ErrUnavailable, cached: true, wantKMS: 1, kmsLabel: UnwrapError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			e := newEnv(t, func(o *Options) { o.Registerer = reg })
			if tt.state != "" {
				e.addKey("group/k", "v1", dev)
				e.reg.update(dek.Ref{KeyID: "group/k", Version: "v1"}, func(en *registry.Entry) { en.State = tt.state })
			}
			e.reg.setErr(tt.regErr)
			e.kms.setErr(tt.kmsErr)

			_, err := resolve(e, "group/k", "v1", dev)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), string(testKey(dek.Ref{KeyID: "group/k", Version: "v1"}))) {
				t.Fatal("error carries key material")
			}
			gets, calls := e.reg.gets.Load(), e.kms.calls.Load()
			if calls != tt.wantKMS {
				t.Errorf("unwraps = %d, want %d", calls, tt.wantKMS)
			}
			if got := int64(len(e.audit.all())); got != calls {
				t.Errorf("audit events = %d, want one per unwrap (%d)", got, calls)
			}
			if tt.kmsLabel != "" {
				if got := testutil.ToFloat64(e.c.metrics.unwrap[tt.kmsLabel]); got != 1 {
					t.Errorf("decryptd_kms_requests_total{result=%q} = %v, want 1", tt.kmsLabel, got)
				}
			}

			_, err2 := resolve(e, "group/k", "v1", dev)
			if !errors.Is(err2, tt.want) && !(tt.want == nil && err2 == nil) {
				t.Errorf("second lookup err = %v, want %v", err2, tt.want)
			}
			asked := e.reg.gets.Load() != gets || e.kms.calls.Load() != calls
			if asked == tt.cached {
				t.Errorf("second lookup asked registry/KMS = %v, want cached answer = %v", asked, tt.cached)
			}
		})
	}
}

func TestNegativeCache(t *testing.T) {
	e := newEnv(t, nil)
	if _, err := resolve(e, "group/late", "v1", dev); !errors.Is(err, dek.ErrUnknownKey) {
		t.Fatalf("err = %v, want ErrUnknownKey", err)
	}
	e.addKey("group/late", "v1", dev)
	e.clock.Advance(DefaultNegativeTTL - time.Second)
	if _, err := resolve(e, "group/late", "v1", dev); !errors.Is(err, dek.ErrUnknownKey) {
		t.Fatalf("within negative TTL: err = %v, want cached ErrUnknownKey", err)
	}
	if got := e.reg.gets.Load(); got != 1 {
		t.Errorf("registry reads = %d, want 1", got)
	}
	if got := requests(t, e.c, resNegative); got != 1 {
		t.Errorf("negative hits = %d, want 1", got)
	}
	e.clock.Advance(2 * time.Second)
	if _, err := resolve(e, "group/late", "v1", dev); err != nil {
		t.Fatalf("after negative TTL: %v", err)
	}
}

func TestCreatedEventDropsNegativeEntry(t *testing.T) {
	e := newEnv(t, nil)
	e.startRun(t)
	if _, err := resolve(e, "group/late", "v1", dev); !errors.Is(err, dek.ErrUnknownKey) {
		t.Fatalf("err = %v, want ErrUnknownKey", err)
	}
	e.addKey("group/late", "v1", dev)
	e.reg.emit(registry.Change{Kind: registry.ChangeCreated, KeyID: "group/late", Version: "v1", State: dek.StateActive})
	wait.For(t, "the key to resolve", func() bool {
		_, err := resolve(e, "group/late", "v1", dev)
		return err == nil
	})
}

func TestDeviceAllowed(t *testing.T) {
	large := make([]string, 100)
	for i := range large {
		large[i] = fmt.Sprintf("dev-%d", i)
	}
	tests := []struct {
		name    string
		keyID   string
		devices []string
		device  string
		allowed bool
	}{
		{"own device key", "device/dev-7", nil, "dev-7", true},
		{"another device's key", "device/dev-7", nil, "dev-8", false},
		{"device key prefix only", "device/dev-7", nil, "dev-", false},
		{"empty device", "device/dev-7", nil, "", false},
		{"small group member", "group/s", []string{"dev-1", "dev-2"}, "dev-2", true},
		{"small group outsider", "group/s", []string{"dev-1", "dev-2"}, "dev-3", false},
		{"large group member", "group/l", large, "dev-99", true},
		{"large group outsider", "group/l", large, "dev-100", false},
		{"group named like a device key", "device/dev-1", []string{"dev-2"}, "dev-2", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.addKey(tt.keyID, "v1", tt.devices...)
			en, _ := e.reg.Get(context.Background(), tt.keyID, "v1")
			if en.AllowsDevice(tt.device) != tt.allowed {
				t.Fatalf("test table disagrees with registry.Entry.AllowsDevice")
			}
			// Miss path, then hit path, then hit path for the other answer.
			for i := range 2 {
				_, err := resolve(e, tt.keyID, "v1", tt.device)
				if tt.allowed && err != nil || !tt.allowed && !errors.Is(err, dek.ErrUnknownKey) {
					t.Fatalf("lookup %d: err = %v, allowed = %v", i, err, tt.allowed)
				}
			}
			if got := e.kms.calls.Load(); got != 1 {
				t.Errorf("unwraps = %d, want 1 (a denied device does not evict the key)", got)
			}
		})
	}
}

func TestDeviceListChangeTakesEffect(t *testing.T) {
	e := newEnv(t, nil)
	e.startRun(t)
	e.addKey("group/g", "v1", "dev-1", "dev-2")
	if _, err := resolve(e, "group/g", "v1", "dev-2"); err != nil {
		t.Fatal(err)
	}
	e.reg.update(dek.Ref{KeyID: "group/g", Version: "v1"}, func(en *registry.Entry) { en.Devices = []string{"dev-1"} })
	e.reg.emit(registry.Change{Kind: registry.ChangeUpdated, KeyID: "group/g", Version: "v1", State: dek.StateActive})
	wait.For(t, "dev-2 to be refused", func() bool {
		_, err := resolve(e, "group/g", "v1", "dev-2")
		return errors.Is(err, dek.ErrUnknownKey)
	})
	if _, err := resolve(e, "group/g", "v1", "dev-1"); err != nil {
		t.Errorf("dev-1: %v", err)
	}
	if got := e.kms.calls.Load(); got != 1 {
		t.Errorf("unwraps = %d, want 1 (device change needs no unwrap)", got)
	}
}

func TestLifetimeAndJitter(t *testing.T) {
	tests := []struct {
		name string
		rand float64
		life time.Duration
	}{
		{"shortest", 0, 54 * time.Minute},
		{"middle", 0.5, time.Hour},
		{"longest", 0.999999, 66 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.Rand = func() float64 { return tt.rand } })
			e.addKey("group/a", "v1", dev)
			if _, err := resolve(e, "group/a", "v1", dev); err != nil {
				t.Fatal(err)
			}
			// Block refreshes so the lifetime of the first load is what we see.
			e.kms.setHook(blockUntilCancelled)
			e.clock.Advance(tt.life - time.Second)
			if _, err := resolve(e, "group/a", "v1", dev); err != nil {
				t.Fatal(err)
			}
			if got := requests(t, e.c, resHit); got != 1 {
				t.Errorf("hits just before %s = %d, want 1", tt.life, got)
			}
			v := entryOf(e.c, "group/a").v.Load()
			if got := time.Duration(v.expiresAt); got < tt.life-time.Second || got > tt.life+time.Second {
				t.Errorf("lifetime = %s, want about %s", got, tt.life)
			}
		})
	}
}

func TestRefreshAheadDoesNotBlock(t *testing.T) {
	e := newEnv(t, nil)
	key := e.addKey("group/a", "v1", dev)
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatal(err)
	}
	release := e.kms.holdUntilReleased()
	e.clock.Advance(DefaultTTL - 2*time.Minute) // inside the refresh-ahead window

	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 1000 {
			aead, err := resolve(e, "group/a", "v1", dev)
			if err != nil {
				t.Errorf("lookup during refresh: %v", err)
				return
			}
			_ = aead
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("lookups blocked on a refresh that never answers")
	}
	wait.For(t, "one background refresh", func() bool { return e.kms.calls.Load() == 2 })
	if got := requests(t, e.c, resHit); got != 1000 {
		t.Errorf("hits = %d, want 1000", got)
	}
	close(release)
	wait.For(t, "the refresh to publish", func() bool {
		e.c.mu.Lock()
		defer e.c.mu.Unlock()
		return len(e.c.flight) == 0 && !entryOf(e.c, "group/a").refreshing.Load()
	})
	if got := e.kms.calls.Load(); got != 2 {
		t.Errorf("unwraps = %d, want 2 (one refresh for 1000 hits)", got)
	}
	// The refresh renewed the lifetime: past the first load's expiry it is
	// still a hit.
	e.clock.Advance(10 * time.Minute)
	aead, err := resolve(e, "group/a", "v1", dev)
	if err != nil {
		t.Fatal(err)
	}
	mustOpen(t, aead, key)
	if got := e.kms.calls.Load(); got != 2 {
		t.Errorf("unwraps after renewal = %d, want 2", got)
	}
	if evs := e.audit.all(); evs[len(evs)-1].Trigger != "refresh" || evs[len(evs)-1].DeviceID != "" {
		t.Errorf("refresh audit event = %+v", evs[len(evs)-1])
	}
}

func TestKMSDownServesStale(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(o *Options) { o.Registerer = reg })
	key := e.addKey("group/cached", "v1", dev)
	e.addKey("group/cold", "v1", dev)
	if _, err := resolve(e, "group/cached", "v1", dev); err != nil {
		t.Fatal(err)
	}
	e.kms.setErr(fmt.Errorf("kp: dial tcp: %w", kms.ErrTransient))

	// Refresh window: the background refresh fails, the key keeps serving.
	e.clock.Advance(DefaultTTL - time.Minute)
	if _, err := resolve(e, "group/cached", "v1", dev); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the failed refresh", func() bool {
		return entryOf(e.c, "group/cached").failing.Load()
	})
	if got := testutil.ToFloat64(staleGauge(t, reg)); got != 0 {
		t.Errorf("stale gauge within lifetime = %v, want 0", got)
	}

	// Past the lifetime: stale, counted.
	e.clock.Advance(2 * time.Minute)
	for range 3 {
		aead, err := resolve(e, "group/cached", "v1", dev)
		if err != nil {
			t.Fatalf("cached key with KMS down: %v", err)
		}
		mustOpen(t, aead, key)
	}
	if got := requests(t, e.c, resStale); got != 3 {
		t.Errorf("stale lookups = %d, want 3", got)
	}
	if got := testutil.ToFloat64(staleGauge(t, reg)); got != 1 {
		t.Errorf("stale gauge = %v, want 1", got)
	}

	// A key never loaded cannot be served.
	if _, err := resolve(e, "group/cold", "v1", dev); !errors.Is(err, dek.ErrUnavailable) {
		t.Errorf("cold key with KMS down: err = %v, want ErrUnavailable", err)
	}

	// Retries are paced: no new attempt within StaleRetry.
	wait.For(t, "in-flight refreshes to settle", func() bool { return inFlight(e.c) == 0 })
	calls := e.kms.calls.Load()
	if _, err := resolve(e, "group/cached", "v1", dev); err != nil {
		t.Fatal(err)
	}
	if got := e.kms.calls.Load(); got != calls {
		t.Errorf("unwraps within StaleRetry: %d, want %d", got, calls)
	}

	// Just before the stale limit: still served.
	e.clock.Advance(DefaultStaleLimit - 2*time.Minute)
	if _, err := resolve(e, "group/cached", "v1", dev); err != nil {
		t.Fatalf("before the stale limit: %v", err)
	}
	wait.For(t, "in-flight refreshes to settle", func() bool { return inFlight(e.c) == 0 })
	// Past it: transient error.
	e.clock.Advance(2 * time.Minute)
	if _, err := resolve(e, "group/cached", "v1", dev); !errors.Is(err, dek.ErrUnavailable) {
		t.Fatalf("past the stale limit: err = %v, want ErrUnavailable", err)
	}
	if got := testutil.ToFloat64(staleGauge(t, reg)); got != 0 {
		t.Errorf("stale gauge past the limit = %v, want 0", got)
	}

	// The KMS is back: the next attempt (after StaleRetry) reloads.
	e.kms.setErr(nil)
	e.clock.Advance(DefaultStaleRetry)
	aead, err := resolve(e, "group/cached", "v1", dev)
	if err != nil {
		t.Fatalf("KMS back: %v", err)
	}
	mustOpen(t, aead, key)
	if entryOf(e.c, "group/cached").failing.Load() {
		t.Error("entry still marked failing after a successful reload")
	}
}

func TestRegistryDownServesStale(t *testing.T) {
	e := newEnv(t, nil)
	e.addKey("group/a", "v1", dev)
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatal(err)
	}
	e.reg.setErr(errors.New("registry: connection refused"))
	e.clock.Advance(DefaultTTL + time.Minute) // idle past its lifetime
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatalf("registry down, cached key: %v", err)
	}
	if got := requests(t, e.c, resStale); got != 1 {
		t.Errorf("stale lookups = %d, want 1", got)
	}
	if _, err := resolve(e, "group/b", "v1", dev); !errors.Is(err, dek.ErrUnavailable) {
		t.Errorf("registry down, unknown key: err = %v, want ErrUnavailable (not ErrUnknownKey)", err)
	}
}

// entryOf returns the cached entry of keyID@v1, or nil.
func entryOf(c *Cache, keyID string) *entry {
	s := c.shardFor(keyID)
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.m[dek.Ref{KeyID: keyID, Version: "v1"}]
}

func inFlight(c *Cache) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.flight)
}

func staleGauge(t *testing.T, reg *prometheus.Registry) prometheus.Collector {
	t.Helper()
	return gatherOne{reg: reg, name: "decryptd_dek_cache_stale_serving"}
}

// gatherOne exposes one gathered metric family as a collector, for testutil.
type gatherOne struct {
	reg  *prometheus.Registry
	name string
}

func (g gatherOne) Describe(chan<- *prometheus.Desc) {}

func (g gatherOne) Collect(ch chan<- prometheus.Metric) {
	mfs, err := g.reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == g.name {
			for _, m := range mf.GetMetric() {
				ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(g.name, "", nil, nil), prometheus.GaugeValue, m.GetGauge().GetValue())
			}
		}
	}
}

func TestCallerGivesUp(t *testing.T) {
	e := newEnv(t, nil)
	key := e.addKey("group/a", "v1", dev)
	release := make(chan struct{})
	e.kms.setHook(func(context.Context) error { <-release; return nil })
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := e.c.ResolveKey(ctx, "group/a", "v1", dev)
		errc <- err
	}()
	wait.For(t, "the unwrap to start", func() bool { return e.kms.calls.Load() == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, dek.ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want ErrUnavailable and context.Canceled", err)
	}
	// The load goes on for the others.
	close(release)
	aead, err := resolve(e, "group/a", "v1", dev)
	if err != nil {
		t.Fatal(err)
	}
	mustOpen(t, aead, key)
	if got := e.kms.calls.Load(); got != 1 {
		t.Errorf("unwraps = %d, want 1", got)
	}
}

func TestLRUBound(t *testing.T) {
	const max = 100
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(o *Options) { o.MaxEntries = max; o.Registerer = reg })
	e.addKey("group/hot", "v1", dev)
	for i := range 1000 {
		e.addKey(fmt.Sprintf("group/%d", i), "v1", dev)
	}
	for i := range 1000 {
		if _, err := resolve(e, "group/hot", "v1", dev); err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(2 * time.Second)
		if _, err := resolve(e, fmt.Sprintf("group/%d", i), "v1", dev); err != nil {
			t.Fatal(err)
		}
		if n := e.c.count.Load(); n > max {
			t.Fatalf("after %d loads: %d entries, bound %d", i+1, n, max)
		}
	}
	if got := e.c.count.Load(); got != max {
		t.Errorf("entries = %d, want %d", got, max)
	}
	var n int
	for i := range e.c.shards {
		n += len(e.c.shards[i].m)
	}
	if n != max {
		t.Errorf("entries in shards = %d, count says %d", n, max)
	}
	// The key used all along survived.
	if got := e.kms.calls.Load(); got != 1001 {
		t.Errorf("unwraps = %d, want 1001 (the hot key loaded once)", got)
	}
	// The most recent keys mostly survived, the oldest mostly did not.
	recent, old := 0, 0
	for i := range 50 {
		if entryOf(e.c, fmt.Sprintf("group/%d", 999-i)) != nil {
			recent++
		}
		if entryOf(e.c, fmt.Sprintf("group/%d", i)) != nil {
			old++
		}
	}
	if recent < 40 || old > 5 {
		t.Errorf("of the 50 newest keys %d are cached, of the 50 oldest %d: not LRU-like", recent, old)
	}
	if got := testutil.ToFloat64(e.c.metrics.evictions[evictCapacity]); got != 1001-max {
		t.Errorf("capacity evictions = %v, want %d", got, 1001-max)
	}
}

func TestOptionsValidation(t *testing.T) {
	base := func() Options { return Options{Registry: newFakeRegistry(), KMS: newFakeKMS()} }
	tests := []struct {
		name  string
		mod   func(*Options)
		field string // "" = valid
	}{
		{"defaults", func(*Options) {}, ""},
		{"no registry", func(o *Options) { o.Registry = nil }, "Registry"},
		{"no kms", func(o *Options) { o.KMS = nil }, "KMS"},
		{"negative ttl", func(o *Options) { o.TTL = -time.Second }, "TTL"},
		{"jitter too large", func(o *Options) { o.Jitter = 0.6 }, "Jitter"},
		{"no jitter", func(o *Options) { o.Jitter = -1 }, ""},
		{"refresh ahead too long", func(o *Options) { o.TTL = 5 * time.Minute }, "RefreshAhead"},
		{"short ttl, short window", func(o *Options) { o.TTL = 10 * time.Minute; o.RefreshAhead = time.Minute }, ""},
		{"negative max entries", func(o *Options) { o.MaxEntries = -1 }, "MaxEntries"},
		{"negative unwraps", func(o *Options) { o.MaxConcurrentUnwraps = -1 }, "MaxConcurrentUnwraps"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base()
			tt.mod(&o)
			c, err := New(o)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				c.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), "Options."+tt.field) {
				t.Fatalf("err = %v, want one naming Options.%s", err, tt.field)
			}
		})
	}
}

func TestMetricsRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(o *Options) { o.Registerer = reg })
	e.addKey("group/a", "v1", dev)
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatal(err)
	}
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
	want := `
# HELP decryptd_dek_cache_entries Entries in the DEK cache, negative ones included.
# TYPE decryptd_dek_cache_entries gauge
decryptd_dek_cache_entries 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "decryptd_dek_cache_entries"); err != nil {
		t.Error(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "decryptd_dek_cache_requests_total" {
			for _, m := range mf.GetMetric() {
				got[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	if got["hit"] != 1 || got["miss"] != 1 || len(got) != int(numResults) {
		t.Errorf("requests_total = %v, want hit 1, miss 1, all %d results present", got, numResults)
	}
	if n := testutil.CollectAndCount(e.c.metrics.unwrapDur.(prometheus.Collector)); n != 1 {
		t.Errorf("duration series = %d", n)
	}
	// A second cache on the same registry is a wiring mistake, reported.
	if _, err := New(Options{Registry: e.reg, KMS: e.kms, Registerer: reg}); err == nil {
		t.Error("second cache on one registry: no error")
	}
}

func TestCloseStopsBackgroundWork(t *testing.T) {
	e := newEnv(t, nil)
	e.addKey("group/a", "v1", dev)
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatal(err)
	}
	e.kms.setHook(blockUntilCancelled)
	e.clock.Advance(DefaultTTL - time.Minute)
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the refresh to start", func() bool { return e.kms.calls.Load() == 2 })
	done := make(chan struct{})
	go func() { e.c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not stop a blocked refresh")
	}
	if _, err := resolve(e, "group/b", "v1", dev); !errors.Is(err, dek.ErrUnavailable) {
		t.Errorf("miss after Close: err = %v, want ErrUnavailable", err)
	}
}

func TestRealClock(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Now = nil })
	key := e.addKey("group/a", "v1", dev)
	for range 2 {
		aead, err := resolve(e, "group/a", "v1", dev)
		if err != nil {
			t.Fatal(err)
		}
		mustOpen(t, aead, key)
	}
	if got := requests(t, e.c, resHit); got != 1 {
		t.Errorf("hits = %d, want 1", got)
	}
	start := e.c.clock()
	wait.For(t, "the coarse clock to tick", func() bool { return e.c.clock() > start })
	if v := entryOf(e.c, "group/a").v.Load(); time.Duration(v.expiresAt-start) < DefaultTTL-DefaultTTL/10-time.Second {
		t.Errorf("lifetime on the real clock = %s", time.Duration(v.expiresAt-start))
	}
}

// A key that expired while idle, looked up while the KMS hangs: the lookup
// waits StaleWait, not the whole KMS timeout, and is served stale; a
// revocation during the wait is still honoured.
func TestIdleExpiredKeyDuringKMSHang(t *testing.T) {
	// Far above StaleWait (50 ms), so that the two paths cannot be
	// confused, and long enough that a lookup goroutine kept off the CPU
	// for a few seconds (the race detector on a loaded 2-CPU CI machine
	// did once, past a 2 s timeout) still sees StaleWait fire first.
	const unwrapTimeout = 10 * time.Second
	e := newEnv(t, func(o *Options) { o.StaleWait = 50 * time.Millisecond; o.UnwrapTimeout = unwrapTimeout })
	e.startRun(t)
	key := e.addKey("group/idle", "v1", dev)
	if _, err := resolve(e, "group/idle", "v1", dev); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	e.kms.setHook(func(ctx context.Context) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", kms.ErrTransient, ctx.Err())
		}
	})
	e.clock.Advance(DefaultTTL + time.Hour) // idle: no refresh-ahead ran

	start := time.Now()
	aead, err := resolve(e, "group/idle", "v1", dev)
	if err != nil {
		t.Fatalf("idle expired key with the KMS hanging: %v", err)
	}
	if waited := time.Since(start); waited >= unwrapTimeout/2 {
		t.Errorf("lookup waited %v: it should give up on the reload after StaleWait", waited)
	}
	mustOpen(t, aead, key)
	if got := requests(t, e.c, resStale); got != 1 {
		t.Errorf("stale lookups = %d, want 1", got)
	}

	// Revoked while the reload still hangs: evicted, never served stale.
	e.reg.update(dek.Ref{KeyID: "group/idle", Version: "v1"}, func(en *registry.Entry) { en.State = dek.StateRevoked })
	e.reg.emit(registry.Change{Kind: registry.ChangeUpdated, KeyID: "group/idle", Version: "v1", State: dek.StateRevoked})
	wait.For(t, "the revocation to evict", func() bool {
		_, err := resolve(e, "group/idle", "v1", dev)
		return errors.Is(err, dek.ErrRevoked)
	})
}
