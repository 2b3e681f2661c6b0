package rotation_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/seal"
)

// TestShredRefusedByBothReplicas: a device in the middle of a rotation
// (v1 decrypt_only in its grace period, v2 adopted) is crypto-shredded by
// the operator (dekctl shred --device, keyops.Shred) through a registry
// handle of its own. Two replicas, each with its own registry handle and
// a running key cache holding both versions, refuse the device's messages
// as key_revoked within 2 s, measured from the shred call until each
// cache answers dek.ErrRevoked for both versions. Another device keeps
// decrypting, and the operator's audit log verifies and records both
// shreds.
func TestShredRefusedByBothReplicas(t *testing.T) {
	const bound = 2 * time.Second
	ctx := context.Background()
	w := newWorld(t)
	op := w.ops(t, w.root)
	doomed := provision(t, op, "pump-1")
	kept := provision(t, op, "pump-2")

	// Rotate pump-1 and adopt v2, as the controller and tracker do.
	e2, created, err := op.RotateKey(ctx, dek.DeviceKeyID("pump-1"), "test")
	if err != nil || !created || e2.Version != "v2" {
		t.Fatalf("rotate: %v %v %+v", err, created, e2)
	}
	k, err := op.UnwrapForRekey(ctx, e2, "pump-1")
	if err != nil {
		t.Fatal(err)
	}
	a2, err := seal.NewAEAD(k)
	clear(k)
	if err != nil {
		t.Fatal(err)
	}
	doomed.keys["v2"] = a2
	if adopted, err := op.Adopt(ctx, e2.Ref(), "pump-1", time.Hour); err != nil || !adopted {
		t.Fatalf("adopt: %v %v", adopted, err)
	}
	if e1, err := w.store.Get(ctx, "device/pump-1", "v1"); err != nil || e1.State != dek.StateDecryptOnly {
		t.Fatalf("v1 after adoption: %v %+v", err, e1)
	}

	replicas := []*replica{newReplica(t, w, "replica-a"), newReplica(t, w, "replica-b")}
	for _, r := range replicas {
		r.mustOpen(t, doomed.message(t, "v1"))
		r.mustOpen(t, doomed.message(t, "v2"))
		r.mustOpen(t, kept.message(t, "v1"))
	}

	start := time.Now()
	outs, err := op.Shred(ctx, keyops.Selector{DeviceID: "pump-1"})
	if err != nil || len(outs) != 2 {
		t.Fatalf("shred: %v %+v", err, outs)
	}
	var wg sync.WaitGroup
	elapsed := make([]time.Duration, len(replicas))
	errs := make([]error, len(replicas))
	for i, r := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, v := range []string{"v1", "v2"} {
				for {
					_, err := r.cache.ResolveKey(ctx, "device/pump-1", v, "pump-1")
					if errors.Is(err, dek.ErrRevoked) {
						break
					}
					if time.Since(start) > 10*time.Second {
						errs[i] = errors.New(r.name + " still resolves device/pump-1@" + v + " 10 s after the shred")
						return
					}
					time.Sleep(2 * time.Millisecond)
				}
			}
			elapsed[i] = time.Since(start)
		}()
	}
	wg.Wait()
	for i, r := range replicas {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		t.Logf("%s refuses the shredded key after %v", r.name, elapsed[i].Round(time.Millisecond))
		if elapsed[i] > bound {
			t.Errorf("%s: shred seen after %v, want at most %v", r.name, elapsed[i], bound)
		}
		for _, v := range []string{"v1", "v2"} {
			_, err := r.open(doomed.message(t, v))
			if got := decrypt.Reason(err); got != "key_revoked" {
				t.Errorf("%s: a %s message after the shred: reason %q (%v), want key_revoked", r.name, v, got, err)
			}
		}
		r.mustOpen(t, kept.message(t, "v1"))
	}

	log := verifyAudit(t, w.auditLog)
	if n := strings.Count(log, `"action":"shred"`); n != 2 {
		t.Errorf("audit log holds %d shred events, want 2", n)
	}
}
