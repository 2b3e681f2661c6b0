package rotation_test

import (
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/rekey"
	"github.com/decryptd/decryptd/internal/rotation"
	"github.com/decryptd/decryptd/internal/testutil/alertrules"
	"github.com/decryptd/decryptd/internal/testutil/fakeclock"
	"github.com/decryptd/decryptd/internal/testutil/metrictest"
)

// fakePublisher stands for the broker: while failing it refuses every
// rekey; otherwise it keeps them by topic.
type fakePublisher struct {
	mu      sync.Mutex
	failing bool
	calls   int
	sent    map[string][][]byte
}

func (p *fakePublisher) Publish(_ context.Context, topic string, payload []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	if p.failing {
		return errors.New("fake broker: not connected")
	}
	if p.sent == nil {
		p.sent = map[string][][]byte{}
	}
	p.sent[topic] = append(p.sent[topic], payload)
	return nil
}

func (p *fakePublisher) setFailing(on bool) {
	p.mu.Lock()
	p.failing = on
	p.mu.Unlock()
}

// TestRolloutPause: a rollout whose failed deliveries (the broker refuses
// every rekey) or stragglers (the devices are offline) pass the policy's
// PauseThreshold, once PauseMinSample rotations are pending, pauses itself:
// Status().Paused and decryptd_rotation_paused are 1 (the alert
// DecryptdRotationPaused fires on that gauge) and no new rotation starts,
// though due keys and budget are there; pending ones are still retried.
// When the cause clears (the broker takes the rekeys, the devices adopt),
// the next scan lifts the pause and the rollout goes on. Below the minimum
// sample the same failures do not pause it. The registry is PostgreSQL;
// the publisher is a fake; keyops and the controller share a test clock
// and the controller is driven scan by scan.
func TestRolloutPause(t *testing.T) {
	const (
		nKeys = 10
		retry = 10 * time.Minute
		grace = time.Hour
	)
	for _, tc := range []struct {
		name      string
		cause     string // "publish": the broker refuses rekeys; "offline": devices do not adopt
		minSample int
		wantPause bool
	}{
		{"failed deliveries", "publish", 3, true},
		{"stragglers", "offline", 3, true},
		{"failed deliveries below the minimum sample", "publish", 4, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			clk := fakeclock.At(time.Now())
			e := newEnv(t, clk.Now)
			keys := map[string]cipher.AEAD{} // device id -> its v1
			for i := range nKeys {
				id := fmt.Sprintf("pz-%02d", i)
				keys[id] = createKey(ctx, t, e, dek.DeviceKeyID(id), nil, clk.Now().Add(-2*time.Hour))
			}
			reg := prometheus.NewRegistry()
			m, err := rotation.NewMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			pub := &fakePublisher{failing: tc.cause == "publish"}
			// Every key is due (v1 is two hours old, MaxAge one hour); the
			// budget starts three rotations per hour.
			ctl, err := rotation.NewController(rotation.ControllerOptions{
				Policy: rotation.Policy{MaxAge: time.Hour, GracePeriod: grace, SharePerWindow: 0.3, ShareWindow: time.Hour,
					RetryInterval: retry, PauseThreshold: 0.2, PauseMinSample: tc.minSample, RootRotationOff: true},
				Ops: e.ops, Lease: &rotation.FileLease{Path: filepath.Join(t.TempDir(), "lease")}, Publisher: pub,
				DeviceType: "monitor", Metrics: m, Now: clk.Now,
			})
			if err != nil {
				t.Fatal(err)
			}
			scan := func(after time.Duration) rotation.Status {
				t.Helper()
				clk.Advance(after)
				if err := ctl.Scan(ctx); err != nil {
					t.Fatal(err)
				}
				return ctl.Status()
			}
			v2s := func() int {
				es, err := e.store.List(ctx)
				if err != nil {
					t.Fatal(err)
				}
				n := 0
				for _, x := range es {
					if x.Version == "v2" {
						n++
					}
				}
				return n
			}
			paused := func() float64 { return metrictest.Value(t, reg, "decryptd_rotation_paused") }
			started := func() float64 { return metrictest.Value(t, reg, "decryptd_rotation_started_total", "trigger", "age") }

			// 1. The first scan starts the budget's three rotations; their
			// delivery fails, or reaches no one.
			st := scan(0)
			if st.Rotated != 3 || st.Paused || paused() != 0 {
				t.Fatalf("first scan: rotated %d paused %v (gauge %v), want 3 rotations, not paused", st.Rotated, st.Paused, paused())
			}
			// 2. A retry interval later the rekeys are sent again; devices
			// still not adopting after it are stragglers from the next scan.
			st = scan(retry + time.Minute)
			if tc.cause == "publish" && st.Paused != tc.wantPause {
				t.Fatalf("three of three deliveries failed, min sample %d: paused %v, want %v", tc.minSample, st.Paused, tc.wantPause)
			}
			// 3. Two hours on: the budget is full again and seven keys are
			// due, but while paused none starts.
			before := started()
			st = scan(2 * time.Hour)
			if st.Paused != tc.wantPause || paused() != b2f(tc.wantPause) {
				t.Fatalf("paused %v (gauge %v), want %v; status %+v", st.Paused, paused(), tc.wantPause, st)
			}
			if !tc.wantPause {
				// Below the minimum sample the rollout carries on.
				if st.Rotated != 3 || v2s() != 6 {
					t.Fatalf("not paused: rotated %d, %d v2 versions, want 3 more (6)", st.Rotated, v2s())
				}
				return
			}
			if st.Rotated != 0 || started() != before || v2s() != 3 || st.Pending != 3 {
				t.Fatalf("paused, yet rotated %d (started %v -> %v), %d v2 versions, %d pending", st.Rotated, before, started(), v2s(), st.Pending)
			}
			if tc.cause == "offline" && (len(st.Stragglers) != 3 || metrictest.Value(t, reg, "decryptd_rotation_stragglers") != 3) {
				t.Fatalf("stragglers %v (gauge %v), want 3", st.Stragglers, metrictest.Value(t, reg, "decryptd_rotation_stragglers"))
			}
			calls := pub.calls
			st = scan(time.Minute)
			if st.Paused != true || st.Rotated != 0 || v2s() != 3 {
				t.Fatalf("a minute on: paused %v rotated %d, %d v2 versions", st.Paused, st.Rotated, v2s())
			}
			if pub.calls != calls {
				t.Fatalf("%d rekeys sent within the retry interval", pub.calls-calls)
			}

			// 4. The cause clears: the broker takes the next retry's
			// rekeys, and the devices (back online) open them with their
			// own key and adopt, as the tracker records on their first
			// message under the new version.
			pub.setFailing(false)
			st = scan(retry)
			if !st.Paused {
				t.Fatal("the pause lifted before any device adopted")
			}
			adopted := 0
			pub.mu.Lock()
			for id, a := range keys {
				msgs := pub.sent[rekey.Topic("", "monitor", id)]
				if len(msgs) == 0 {
					continue
				}
				p, err := rekey.Parse(msgs[len(msgs)-1])
				if err != nil {
					t.Fatal(err)
				}
				k, err := p.Open(a)
				if err != nil {
					t.Fatalf("%s: rekey does not open: %v", id, err)
				}
				clear(k)
				if ok, err := e.ops.Adopt(ctx, dek.Ref{KeyID: p.KeyID, Version: p.NewVersion}, id, grace); err != nil || !ok {
					t.Fatalf("%s adopts: %v %v", id, ok, err)
				}
				adopted++
			}
			pub.mu.Unlock()
			if adopted != 3 {
				t.Fatalf("%d devices got a rekey, want the 3 pending", adopted)
			}

			// 5. The next scan lifts the pause and the rollout goes on.
			st = scan(time.Minute)
			if st.Paused || paused() != 0 {
				t.Fatalf("still paused (gauge %v) with nothing pending: %+v", paused(), st)
			}
			if st.Rotated != 3 || v2s() != 6 || started() != 6 {
				t.Fatalf("after the pause: rotated %d, %d v2 versions, started %v; want 3 more", st.Rotated, v2s(), started())
			}
		})
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// TestPausedAlertRule: the alert that tells an operator a rollout paused
// itself watches the gauge the controller sets.
func TestPausedAlertRule(t *testing.T) {
	expr, ok := alertrules.Exprs(t, "../../deploy/kubernetes/alerts.yaml")["DecryptdRotationPaused"]
	if !ok {
		t.Fatal("deploy/kubernetes/alerts.yaml: no DecryptdRotationPaused alert")
	}
	if !strings.Contains(expr, "decryptd_rotation_paused") {
		t.Fatalf("DecryptdRotationPaused: expr %q does not watch decryptd_rotation_paused", expr)
	}
}
