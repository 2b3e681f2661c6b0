package rotation_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/rotation"
	"github.com/decryptd/decryptd/internal/testutil/metrictest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// flakyRewrap is a KMS whose Rewrap fails for the named keys while failing
// is set, as a KMS rejecting some requests would.
type flakyRewrap struct {
	kms.Provider
	failing atomic.Bool
	victims map[string]bool // key ids
}

func (f *flakyRewrap) Rewrap(ctx context.Context, w kms.Wrapped, aad []string) (kms.Wrapped, error) {
	if f.failing.Load() && len(aad) > 1 && f.victims[aad[1]] {
		return kms.Wrapped{}, errors.New("injected rewrap failure")
	}
	return f.Provider.Rewrap(ctx, w, aad)
}

// nopPublisher takes rekeys and drops them: no DEK rotation is due here.
type nopPublisher struct{ n atomic.Int64 }

func (p *nopPublisher) Publish(context.Context, string, []byte) error { p.n.Add(1); return nil }

// TestRootRotationRewrap: the rotation controller's root key schedule
// (KMSRootState over the local root key file and the PostgreSQL registry)
// finds the root key due, rotates it, and rewraps every DEK. The KMS fails
// the rewrap of 5 of the 30 devices' keys at first: the failures are
// counted (decryptd_rotation_rewrap_failures_total, failures_total
// {operation="rewrap"}), flagged (decryptd_rotation_rewrap_incomplete = 1)
// and retried at every scan; once the KMS recovers the rewrap completes
// (flag 0, every DEK under root version 2). Throughout, every device's
// messages decrypt on a running replica (warm cache) and on fresh ones
// (cold caches unwrapping under the old and the new root version), and the
// audit chain verifies.
func TestRootRotationRewrap(t *testing.T) {
	const nDevices, nVictims = 30, 5
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := newWorld(t)
	flaky := &flakyRewrap{Provider: w.root, victims: map[string]bool{}}
	op := w.ops(t, flaky)
	var devices []*device
	for i := range nDevices {
		d := provision(t, op, fmt.Sprintf("mon-%02d", i))
		devices = append(devices, d)
		if i < nVictims {
			flaky.victims[dek.DeviceKeyID(d.id)] = true
		}
	}
	flaky.failing.Store(true)

	warm := newReplica(t, w, "replica-warm")
	for _, d := range devices {
		warm.mustOpen(t, d.message(t, "v1"))
	}
	everyDeviceOpens := func(label string) {
		t.Helper()
		fresh := newReplica(t, w, "replica-fresh-"+label)
		for _, d := range devices {
			warm.mustOpen(t, d.message(t, "v1"))
			fresh.mustOpen(t, d.message(t, "v1"))
		}
	}

	// The root key is one hour old to the controller until it rotates it
	// (its policy's max age is 30 minutes); from then on, no longer due.
	rotated := func() bool { return len(w.root.RootKey().Versions) > 1 }
	now := func() time.Time {
		if !rotated() {
			return time.Now().Add(time.Hour)
		}
		return time.Now()
	}
	reg := prometheus.NewRegistry()
	m, err := rotation.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	pub := &nopPublisher{}
	ctl, err := rotation.NewController(rotation.ControllerOptions{
		Policy:    rotation.Policy{RootMaxAge: 30 * time.Minute, Tick: 200 * time.Millisecond},
		Ops:       op,
		Lease:     &rotation.PGLease{DSN: w.dsn},
		Publisher: pub,
		RootState: &rotation.KMSRootState{Clock: w.root, Registry: w.store},
		Metrics:   m,
		Now:       now,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); ctl.Run(runCtx) }()
	defer func() { stop(); wg.Wait() }()

	underVersion := func() map[string]int {
		es, err := w.store.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for _, e := range es {
			out[e.Wrapped.RootKeyVersion]++
		}
		return out
	}
	wait.Detail(t, 20*time.Second, "the root rotation and a partial rewrap", func() (bool, string) {
		f := metrictest.Series(t, reg, "decryptd_rotation_rewrap_failures_total")
		inc := metrictest.Series(t, reg, "decryptd_rotation_rewrap_incomplete")
		return rotated() && f >= nVictims && inc == 1, fmt.Sprintf("rotated %v, failures %v, incomplete %v", rotated(), f, inc)
	})
	if v := underVersion(); v["1"] != nVictims || v["2"] != nDevices-nVictims {
		t.Fatalf("DEKs by root version %v, want 1:%d 2:%d", v, nVictims, nDevices-nVictims)
	}
	if n := metrictest.Series(t, reg, `decryptd_rotation_failures_total{operation="rewrap"}`); n < 1 {
		t.Fatalf("failures_total{operation=rewrap} = %v", n)
	}
	// The rewrap is retried at every scan: the count goes on rising.
	first := metrictest.Series(t, reg, "decryptd_rotation_rewrap_failures_total")
	wait.Detail(t, 10*time.Second, "a retried rewrap", func() (bool, string) {
		n := metrictest.Series(t, reg, "decryptd_rotation_rewrap_failures_total")
		return n >= first+nVictims, fmt.Sprintf("%v failures", n)
	})
	everyDeviceOpens("partial")

	flaky.failing.Store(false)
	wait.Detail(t, 20*time.Second, "the rewrap to complete", func() (bool, string) {
		v := underVersion()
		inc := metrictest.Series(t, reg, "decryptd_rotation_rewrap_incomplete")
		return v["2"] == nDevices && inc == 0, fmt.Sprintf("by root version %v, incomplete %v", v, inc)
	})
	// The root key's age restarts with the new version: seconds, not the
	// hour the clock said before the rotation.
	wait.Detail(t, 10*time.Second, "the root key age after rotation", func() (bool, string) {
		a := metrictest.Series(t, reg, "decryptd_rotation_root_key_age_seconds")
		return a > 0 && a < 30*60, fmt.Sprintf("root key age %vs", a)
	})
	if n := len(w.root.RootKey().Versions); n != 2 {
		t.Fatalf("root key has %d versions, want 2 (rotated once)", n)
	}
	everyDeviceOpens("done")
	if pub.n.Load() != 0 {
		t.Fatalf("%d rekeys sent; no DEK was due", pub.n.Load())
	}

	stop()
	wg.Wait()
	// Every rewrap, failed or not, is on record (never the error text).
	log := verifyAudit(t, w.auditLog)
	counts := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var ev struct{ Action, Result string }
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatal(err)
		}
		counts[ev.Action+"/"+ev.Result]++
	}
	if counts["root_rotate/ok"] != 1 || counts["rewrap/ok"] != nDevices || counts["rewrap/error"] < 2*nVictims {
		t.Errorf("audit events %v: want 1 root_rotate, %d rewraps ok, at least %d failed", counts, nDevices, 2*nVictims)
	}
	if strings.Contains(log, "injected rewrap failure") {
		t.Error("the audit log holds error text")
	}
}
