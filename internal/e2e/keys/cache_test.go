package keys_test

import (
	"context"
	"crypto/cipher"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/kpemu"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/testutil/fakeclock"
	"github.com/decryptd/decryptd/internal/testutil/metrictest"
)

// TestColdKeyOneUnwrap: 1,000 goroutines resolving one cold key at once
// through the cache (PostgreSQL registry, Key Protect via the emulator) make
// exactly one KMS unwrap, counted both where it lands (the emulator's unwrap
// counter) and where it is reported (decryptd_kms_requests_total).
func TestColdKeyOneUnwrap(t *testing.T) {
	kp := newKP(t, 10*time.Second)
	store := openPG(t, newPGDSN(t))
	const keyID, version, device = "device/pump-7", "v1", "pump-7"
	aead := provision(t, store, kp.p, keyID, version)
	cache, reg := newCache(t, store, kp.p, keycache.Options{})

	// The unwrap answers slowly, so every goroutine is surely waiting on it
	// rather than finding the key already cached.
	kp.srv.ResetCalls()
	kp.srv.SetFaults(kpemu.Faults{Latency: 300 * time.Millisecond})

	const n = 1000
	var (
		start = make(chan struct{})
		wg    sync.WaitGroup
		got   = make([]cipher.AEAD, n)
		errs  = make([]error, n)
	)
	for i := range n {
		wg.Go(func() {
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			got[i], errs[i] = cache.ResolveKey(ctx, keyID, version, device)
		})
	}
	close(start)
	wg.Wait()
	kp.srv.SetFaults(kpemu.Faults{})

	for i, err := range errs {
		if err != nil {
			t.Fatalf("lookup %d: %v", i, err)
		}
		if got[i] != got[0] {
			t.Fatalf("lookup %d got another cipher than lookup 0", i)
		}
	}
	if calls := kp.srv.Calls(kpemu.OpUnwrap); calls != 1 {
		t.Errorf("emulator saw %d unwrap calls, want 1 (all calls: %v)", calls, kp.srv.AllCalls())
	}
	if v := metrictest.Value(t, reg, "decryptd_kms_requests_total", "operation", "unwrap", "result", "ok"); v != 1 {
		t.Errorf("decryptd_kms_requests_total{operation=unwrap,result=ok} = %v, want 1", v)
	}
	for _, res := range []string{"transient", "revoked", "error"} {
		if v := metrictest.Value(t, reg, "decryptd_kms_requests_total", "operation", "unwrap", "result", res); v != 0 {
			t.Errorf("decryptd_kms_requests_total{operation=unwrap,result=%s} = %v, want 0", res, v)
		}
	}
	var lookups float64
	for _, res := range []string{"hit", "miss", "negative", "stale", "denied"} {
		lookups += metrictest.Value(t, reg, "decryptd_dek_cache_requests_total", "result", res)
	}
	if lookups != n {
		t.Errorf("decryptd_dek_cache_requests_total sums to %v, want %d", lookups, n)
	}

	// The one cipher is the device's key: a message it sealed opens.
	m := sealA(t, aead, device, "", version, 1767225600, readingsFor(1))
	openOK(t, newDecryptor(t, cache), m)
	if calls := kp.srv.Calls(kpemu.OpUnwrap); calls != 1 {
		t.Errorf("decrypting a message made %d more unwrap calls", calls-1)
	}
}

// TestKMSOutage: with Key Protect down (connections reset), keys the cache
// holds keep decrypting past their lifetime (stale serving, visible in
// decryptd_dek_cache_stale_serving and requests{result="stale"}), while a
// key it never loaded fails as transient: dek.ErrUnavailable from the
// cache, decrypt.ErrTransient and no reason from the decryption core, so
// the message is retried and never dead-lettered. Time is the cache's
// injected clock.
func TestKMSOutage(t *testing.T) {
	// The provider gives up on a dead KMS after 1 s, client retries included.
	kp := newKP(t, time.Second)
	dsn := newPGDSN(t)
	store, operator := openPG(t, dsn), openPG(t, dsn)
	clock := fakeclock.At(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	const ttl = time.Hour
	logger, logs := observedLogger()
	cache, reg := newCache(t, store, kp.p, keycache.Options{
		Now: clock.Now, TTL: ttl, Jitter: -1, StaleLimit: 6 * time.Hour, UnwrapTimeout: 5 * time.Second, Logger: logger,
	})
	runCache(t, cache, logs)
	d := newDecryptor(t, cache)

	cachedAEAD := provision(t, store, kp.p, "device/vent-1", "v3")
	coldAEAD := provision(t, store, kp.p, "device/vent-2", "v1")
	cached := []message{
		sealA(t, cachedAEAD, "vent-1", "", "v3", 1767225600, readingsFor(1)),
		sealA(t, cachedAEAD, "vent-1", "", "v3", 1767225601, readingsFor(2)),
		sealA(t, cachedAEAD, "vent-1", "", "v3", 1767225602, readingsFor(3)),
	}
	cold := sealA(t, coldAEAD, "vent-2", "", "v1", 1767225600, readingsFor(4))

	openOK(t, d, cached[0]) // loads device/vent-1@v3 while the KMS is up
	if v := metrictest.Value(t, reg, "decryptd_dek_cache_stale_serving"); v != 0 {
		t.Fatalf("stale_serving = %v before the outage", v)
	}

	kp.srv.SetFaults(kpemu.Faults{Outage: kpemu.OutageReset})
	t.Cleanup(func() { kp.srv.SetFaults(kpemu.Faults{}) })
	clock.Advance(ttl + time.Minute) // every entry is past its lifetime

	staleBefore := metrictest.Value(t, reg, "decryptd_dek_cache_requests_total", "result", "stale")
	for i, m := range cached[1:] {
		openOK(t, d, m)
		if v := metrictest.Value(t, reg, "decryptd_dek_cache_stale_serving"); v != 1 {
			t.Errorf("after stale open %d: decryptd_dek_cache_stale_serving = %v, want 1", i+1, v)
		}
		if v := metrictest.Value(t, reg, "decryptd_dek_cache_requests_total", "result", "stale"); v != staleBefore+float64(i+1) {
			t.Errorf("after stale open %d: requests{result=stale} = %v, want %v", i+1, v, staleBefore+float64(i+1))
		}
	}
	// The failed reload may still be retrying when the stale key is served
	// (the cache stops waiting for it after StaleWait); it ends within the
	// cache's unwrap timeout and is counted then.
	deadline := time.Now().Add(30 * time.Second)
	for metrictest.Value(t, reg, "decryptd_kms_requests_total", "operation", "unwrap", "result", "transient") < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no transient unwrap counted during the outage")
		}
		time.Sleep(50 * time.Millisecond)
	}

	t.Run("uncached key is transient", func(t *testing.T) {
		_, err := cache.ResolveKey(context.Background(), "device/vent-2", "v1", "vent-2")
		if !errors.Is(err, dek.ErrUnavailable) {
			t.Fatalf("ResolveKey of an uncached key during the outage: %v, want dek.ErrUnavailable", err)
		}
		if errors.Is(err, dek.ErrUnknownKey) || errors.Is(err, dek.ErrRevoked) {
			t.Fatalf("outage reported as a key state: %v", err)
		}
		rec, err := d.Open(context.Background(), decrypt.Message{Topic: cold.topic, Payload: cold.payload})
		if !errors.Is(err, decrypt.ErrTransient) {
			t.Fatalf("Open under an uncached key during the outage: %v, want decrypt.ErrTransient", err)
		}
		if r := decrypt.Reason(err); r != "" {
			t.Fatalf("Open during the outage gave reason %q; a transient failure must carry none", r)
		}
		if rec.Data != nil {
			t.Fatal("a record came out with the transient failure")
		}
	})

	// Stale serving never outlives a revocation: revoked through another
	// handle while the KMS is still down, the stale key stops at once.
	t.Run("revoke while stale", func(t *testing.T) {
		if _, err := operator.Update(context.Background(), "device/vent-1", "v3", func(e *registry.Entry) error {
			e.State = dek.StateRevoked
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := cache.ResolveKey(context.Background(), "device/vent-1", "v3", "vent-1")
			if errors.Is(err, dek.ErrRevoked) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a stale key is still served 10 s after its revocation: %v", err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if v := metrictest.Value(t, reg, "decryptd_dek_cache_stale_serving"); v != 0 {
			t.Errorf("decryptd_dek_cache_stale_serving = %v after the revocation, want 0", v)
		}
	})

	// Once Key Protect is back, the same message opens: nothing was
	// remembered as a permanent failure. (The negative answer of a
	// transient miss is not cached; the retry goes to the KMS.)
	kp.srv.SetFaults(kpemu.Faults{})
	openOK(t, d, cold)
}

// TestRevokeSeenWithin2s: a revoke written through a second registry handle
// (another process, as dekctl is) reaches a running cache through the first
// handle's change feed within 2 s, measured from the Update call until
// ResolveKey returns dek.ErrRevoked. Both backends: two pgstore handles on
// one database, two filestore handles on one file.
func TestRevokeSeenWithin2s(t *testing.T) {
	for _, tc := range []struct {
		name string
		open func(t *testing.T) (daemon, operator registry.Store)
	}{
		{"pgstore", func(t *testing.T) (registry.Store, registry.Store) {
			dsn := newPGDSN(t)
			return openPG(t, dsn), openPG(t, dsn)
		}},
		{"filestore", func(t *testing.T) (registry.Store, registry.Store) {
			path := filepath.Join(t.TempDir(), "registry.json")
			return openFile(t, path), openFile(t, path)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const bound = 2 * time.Second
			p := newLocal(t)
			daemon, operator := tc.open(t)
			const keyID, version, device = "group/ward-3", "2026-q1", "bed-12"
			aead := provision(t, operator, p, keyID, version, device, "bed-14")
			m := sealA(t, aead, device, keyID, version, 1767225600, readingsFor(7))

			logger, logs := observedLogger()
			cache, _ := newCache(t, daemon, p, keycache.Options{Logger: logger})
			runCache(t, cache, logs)
			d := newDecryptor(t, cache)
			openOK(t, d, m) // cached, with the default 1 h lifetime

			ctx := context.Background()
			start := time.Now()
			if _, err := operator.Update(ctx, keyID, version, func(e *registry.Entry) error {
				e.State = dek.StateRevoked
				return nil
			}); err != nil {
				t.Fatalf("revoke through the second handle: %v", err)
			}
			var elapsed time.Duration
			for {
				_, err := cache.ResolveKey(ctx, keyID, version, device)
				if errors.Is(err, dek.ErrRevoked) {
					elapsed = time.Since(start)
					break
				}
				if err != nil {
					t.Fatalf("ResolveKey while waiting for the revoke: %v", err)
				}
				if time.Since(start) > 10*time.Second {
					t.Fatalf("the cache still serves the key 10 s after it was revoked through another handle")
				}
				time.Sleep(2 * time.Millisecond)
			}
			t.Logf("revoke seen after %v", elapsed)
			if elapsed > bound {
				t.Errorf("revoke seen after %v, want at most %v", elapsed, bound)
			}
			_, err := d.Open(ctx, decrypt.Message{Topic: m.topic, Payload: m.payload})
			if got := decrypt.Reason(err); got != "key_revoked" {
				t.Errorf("Open after the revoke: reason %q (%v), want key_revoked", got, err)
			}
		})
	}
}
