package rotation_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/rotation"
	"github.com/decryptd/decryptd/internal/testutil/fakeclock"
	"github.com/decryptd/decryptd/internal/testutil/metrictest"
)

// TestRotationLogLines runs rotations scan by scan (PostgreSQL registry,
// a fake broker, a test clock) and reads the info log an operator follows,
// through a zap observer: for an age-driven rotation "rotation started"
// (trigger age, with the reason), "rotation rekey sent", "rotation version
// adopted" (the tracker, on the device's first message under it), "rotation
// version decrypt_only" (the superseded version, with revoke_after) and,
// after the grace period, "rotation version revoked"; for `dekctl rotate`
// (keyops.RotateKey) "rotation started" with trigger operator, counted in
// decryptd_rotation_started_total{trigger="operator"}; for a rollout whose
// deliveries fail, "rotation rollout paused" with its reason, "rotation due
// keys waiting" and, once deliveries succeed, "rotation rollout resumed".
func TestRotationLogLines(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	clk := fakeclock.At(time.Now())
	e := newEnv(t, clk.Now)
	const grace, retry = time.Hour, 10 * time.Minute
	createKey(ctx, t, e, dek.DeviceKeyID("log-a"), nil, clk.Now().Add(-25*time.Hour))
	createKey(ctx, t, e, dek.DeviceKeyID("log-b"), nil, clk.Now())
	createKey(ctx, t, e, dek.DeviceKeyID("log-c"), nil, clk.Now())

	core, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(core)
	reg := prometheus.NewRegistry()
	m, err := rotation.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	pub := &fakePublisher{}
	ctl, err := rotation.NewController(rotation.ControllerOptions{
		Policy: rotation.Policy{MaxAge: 24 * time.Hour, GracePeriod: grace, SharePerWindow: 0.34, ShareWindow: 24 * time.Hour,
			RetryInterval: retry, PauseThreshold: 0.2, PauseMinSample: 1, RootRotationOff: true},
		Ops: e.ops, Lease: &rotation.FileLease{Path: filepath.Join(t.TempDir(), "lease")}, Publisher: pub,
		DeviceType: "monitor", Metrics: m, Logger: log, Now: clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := rotation.NewTracker(rotation.TrackerOptions{Registry: e.store, Adopter: e.ops, Grace: grace, Metrics: m, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	tctx, stopTracker := context.WithCancel(ctx)
	trDone := make(chan struct{})
	go func() { defer close(trDone); _ = tr.Run(tctx) }()
	defer func() { stopTracker(); <-trDone }()

	scan := func(after time.Duration) {
		t.Helper()
		clk.Advance(after)
		if err := ctl.Scan(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// waitLine waits for the tracker's asynchronous lines.
	waitLine := func(msg string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for logs.FilterMessage(msg).Len() == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("no %q line", msg)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Age: log-a's v1 is 25 hours old; the daily share (0.34 of 3 keys)
	// allows one.
	scan(0)
	// The device uses v2: the tracker sees it once its pending state is
	// known (change feed), and records the adoption.
	deadline := time.Now().Add(10 * time.Second)
	for tr.Pending() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	tr.Observe(dek.DeviceKeyID("log-a"), "v2", "log-a")
	waitLine("rotation version decrypt_only")
	// After the grace period the superseded v1 is revoked.
	scan(grace + time.Minute)

	// Operator: dekctl rotate log-b.
	if _, created, err := e.ops.RotateKey(ctx, dek.DeviceKeyID("log-b"), "test"); err != nil || !created {
		t.Fatalf("rotate: %v %v", created, err)
	}
	scan(time.Second)
	if n := metrictest.Value(t, reg, "decryptd_rotation_started_total", "trigger", "operator"); n != 1 {
		t.Fatalf("started_total{trigger=operator} = %v after one dekctl rotate, want 1", n)
	}
	scan(time.Second) // taken up once: no second count
	if n := metrictest.Value(t, reg, "decryptd_rotation_started_total", "trigger", "operator"); n != 1 {
		t.Fatalf("started_total{trigger=operator} = %v after a second scan, want 1", n)
	}

	// Pause: the broker refuses rekeys and log-b's device is silent: after
	// its first retry it is a straggler, 1 of 1 pending, and the rollout
	// pauses. A day on, log-c and log-a's v2 are due (and the share is free
	// again), but the pause holds them. The broker takes the next retry,
	// the device adopts, the rollout resumes and the share starts one.
	pub.setFailing(true)
	scan(retry + time.Minute)
	clk.Advance(24 * time.Hour)
	scan(0)
	pub.setFailing(false)
	scan(retry + time.Minute)
	tr.Observe(dek.DeviceKeyID("log-b"), "v2", "log-b")
	deadline = time.Now().Add(10 * time.Second)
	for logs.FilterMessage("rotation version adopted").Len() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("log-b's adoption not logged")
		}
		time.Sleep(20 * time.Millisecond)
	}
	scan(time.Minute)

	want := []struct{ msg, field, value string }{
		{"rotation started", "trigger", "age"},
		{"rotation rekey sent", "device_id", "log-a"},
		{"rotation version adopted", "key_version", "v2"},
		{"rotation version decrypt_only", "key_version", "v1"},
		{"rotation version revoked", "key_version", "v1"},
		{"rotation started", "trigger", "operator"},
		{"rotation rekey sent", "device_id", "log-b"},
		{"rotation rollout paused: no new rotation starts until enough devices adopt or deliveries succeed", "reason", "1 of 1 pending rotations are stragglers (1) or failed delivery (0), over pause_threshold 0.2"},
		{"rotation due keys waiting", "reason", "rollout paused: "},
		{"rotation rekey sent", "device_id", "log-b"},
		{"rotation version adopted", "key_id", "device/log-b"},
		{"rotation rollout resumed", "reason", "0 pending rotations, under"},
		// log-a's v2 and log-c are due; the share (one a day) takes the
		// older, log-a's v2, and log-c waits a day.
		{"rotation due keys waiting", "reason", "the share per window is spent: 1 of 1"},
		{"rotation started", "key_version", "v3"},
	}
	var got []string
	for _, l := range logs.All() {
		if !strings.HasPrefix(l.Message, "rotation ") || l.Message == "rotation controller leading" {
			continue
		}
		f := l.ContextMap()
		got = append(got, fmt.Sprintf("%s %v", l.Message, f))
	}
	i := 0
	for _, l := range logs.All() {
		if i == len(want) {
			break
		}
		if l.Message != want[i].msg {
			continue
		}
		if v := fmt.Sprint(l.ContextMap()[want[i].field]); !strings.HasPrefix(v, want[i].value) {
			continue
		}
		if l.Level < zapcore.InfoLevel {
			t.Errorf("%q logged at %s", l.Message, l.Level)
		}
		i++
	}
	if i < len(want) {
		t.Fatalf("log lines in order: matched %d of %d; missing %q %s=%q\ngot:\n%s", i, len(want), want[i].msg, want[i].field, want[i].value, strings.Join(got, "\n"))
	}
	// The started line of the age rotation carries its reason.
	started := logs.FilterMessage("rotation started").All()[0].ContextMap()
	if r := fmt.Sprint(started["reason"]); !strings.Contains(r, "v1 is 25h old (max_dek_age 1d)") {
		t.Fatalf("started reason %q", r)
	}
	// The share's waiting line says until when.
	for _, l := range logs.FilterMessage("rotation due keys waiting").All() {
		if strings.Contains(fmt.Sprint(l.ContextMap()["reason"]), "share per window is spent") {
			if _, ok := l.ContextMap()["until"]; !ok {
				t.Fatalf("waiting line without until: %v", l.ContextMap())
			}
		}
	}
}
