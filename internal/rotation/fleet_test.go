package rotation_test

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
	"github.com/decryptd/decryptd/internal/rekey"
	"github.com/decryptd/decryptd/internal/rotation"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/pgtest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// simDevice is one simulated device: the DEKs it holds by version (old and
// new during a transition) and the version it seals under.
type simDevice struct {
	id       string
	mu       sync.Mutex
	keys     map[string]cipher.AEAD
	current  string
	offline  atomic.Bool
	late     []byte // sealed under v1 at the start, sent after the switch
	lateSent atomic.Bool
}

func (d *simDevice) handleRekey(payload []byte) error {
	m, err := rekey.Parse(payload)
	if err != nil {
		return err
	}
	// The publisher sends amendment 1's generation: N for version v<N>.
	if g, ok := rekey.GenerationOf(m.NewVersion); !ok || m.Generation != g {
		return fmt.Errorf("rekey for %s carries generation %d", m.NewVersion, m.Generation)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if m.DeviceID != d.id || m.KeyID != dek.DeviceKeyID(d.id) {
		return errors.New("not for this device")
	}
	if _, have := d.keys[m.NewVersion]; have {
		return nil // a repeat
	}
	wrap, ok := d.keys[m.WrapKeyVersion]
	if !ok {
		return errors.New("wrapping key not held")
	}
	k, err := m.Open(wrap)
	if err != nil {
		return err
	}
	a, err := seal.NewAEAD(k)
	clear(k)
	if err != nil {
		return err
	}
	d.keys[m.NewVersion] = a
	d.current = m.NewVersion
	return nil
}

func (d *simDevice) message(s *seal.Sealer, seq int) ([]byte, error) {
	d.mu.Lock()
	v := d.current
	a := d.keys[v]
	d.mu.Unlock()
	return s.AppendShapeA(nil, a, seal.Envelope{DeviceID: d.id, Timestamp: time.Now().Unix(), KeyVersion: v},
		[]byte(fmt.Sprintf(`{"seq":%d}`, seq)), nil)
}

func topicOf(id string) string { return "iot-2/type/monitor/id/" + id + "/evt/telemetry/fmt/json" }

type env struct {
	store *pgstore.Store
	ops   *keyops.Ops
	kms   *local.Provider
	aud   *audit.Writer
	dsn   string
}

func newEnv(t *testing.T, now func() time.Time) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := t.TempDir()
	dsn := pgtest.New(t)
	store, err := pgstore.Open(ctx, dsn, pgstore.WithMaxConns(32))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	lp, err := local.Create(filepath.Join(dir, "root-key.json"), "test-root")
	if err != nil {
		t.Fatal(err)
	}
	// The audit log fsyncs every event; on tmpfs that costs nothing, so
	// the test measures rotation, not the disk.
	shm, err := os.MkdirTemp("/dev/shm", "rotation-test-")
	if err != nil {
		shm = dir
	} else {
		t.Cleanup(func() { os.RemoveAll(shm) })
	}
	aw, err := audit.Open(ctx, filepath.Join(shm, "audit.log"), audit.WithActor("test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { aw.Close() })
	ops, err := keyops.New(keyops.Options{KMS: lp, Roots: lp, Registry: store, Audit: aw, Now: now, RewrapWorkers: 8})
	if err != nil {
		t.Fatal(err)
	}
	return &env{store: store, ops: ops, kms: lp, aud: aw, dsn: dsn}
}

// TestFleetRotation rotates a simulated fleet of 1,000 devices under a
// policy shortened to seconds, through the real Mosquitto (rekeys at QoS 2
// on the devices' command topics, telemetry at QoS 1) and PostgreSQL. Every
// online device adopts its new version; its old one turns decrypt_only, a
// message sealed under it before the rotation and delivered late still
// decrypts, and it is revoked after the grace period. 5% of the devices are
// kept offline: they get the rekey again every retry interval, are reported
// as stragglers, and rotate once they come back. No message fails to
// decrypt throughout.
func TestFleetRotation(t *testing.T) {
	const (
		grace = 5 * time.Second
		retry = 1500 * time.Millisecond
	)
	nDevices := fleetSize(t)
	nOffline := nDevices / 20
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// Devices were provisioned two hours ago; the policy's max age is one
	// hour, so every v1 is due and every v2 is not.
	past := func() time.Time { return time.Now().Add(-2 * time.Hour) }
	prov := newEnv(t, past)
	ops, err := keyops.New(keyops.Options{KMS: prov.kms, Roots: prov.kms, Registry: prov.store, Audit: prov.aud})
	if err != nil {
		t.Fatal(err)
	}
	sealer := seal.New(rand.Reader)
	t0 := time.Now()
	devices := make([]*simDevice, nDevices)
	byID := map[string]*simDevice{}
	var wg sync.WaitGroup
	errs := make(chan error, nDevices)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < nDevices; i += 16 {
				id := fmt.Sprintf("dev-%04d", i)
				// Provisioned directly (wrap and create, as keyops does, without
				// its per-device registry listing) to keep the setup quick.
				a, err := newKey(ctx, prov, dek.DeviceKeyID(id), nil, past())
				if err != nil {
					errs <- err
					return
				}
				cred := keyops.Credential{DeviceID: id, KeyID: dek.DeviceKeyID(id), KeyVersion: "v1"}
				d := &simDevice{id: id, keys: map[string]cipher.AEAD{cred.KeyVersion: a}, current: cred.KeyVersion}
				if d.late, err = d.message(sealer, -1); err != nil {
					errs <- err
					return
				}
				d.offline.Store(i < nOffline)
				devices[i] = d
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, d := range devices {
		byID[d.id] = d
	}
	t.Logf("provisioned %d devices in %s", nDevices, time.Since(t0).Round(time.Millisecond))

	b := mosquittotest.Start(t, mosquittotest.Options{})

	runCtx, stop := context.WithCancel(ctx)
	var bg sync.WaitGroup
	defer func() { stop(); bg.Wait() }()
	opener, metrics := startBackend(runCtx, t, &bg, prov.store, prov.kms, ops, grace)

	tl := connectBackend(runCtx, t, b, opener)

	pubc := connectClient(t, b, "fleet-pub", nil)
	var published atomic.Int64
	publish := func(d *simDevice, payload []byte) {
		pubc.Publish(topicOf(d.id), 1, false, payload).Wait()
		published.Add(1)
	}

	// Device side: one connection carries every device's command topic.
	var rekeysSeen, rekeysBad atomic.Int64
	connectClient(t, b, "fleet-cmd", func(c mqtt.Client) {
		c.Subscribe("iot-2/type/+/id/+/cmd/rekey/fmt/json", 2, func(_ mqtt.Client, m mqtt.Message) {
			rekeysSeen.Add(1)
			var id string
			if _, err := fmt.Sscanf(m.Topic(), "iot-2/type/monitor/id/%s", &id); err != nil {
				rekeysBad.Add(1)
				return
			}
			id = id[:len(id)-len("/cmd/rekey/fmt/json")]
			d := byID[id]
			if d == nil || d.offline.Load() {
				return // offline: the message never reaches it
			}
			had := d.current
			if err := d.handleRekey(m.Payload()); err != nil {
				rekeysBad.Add(1)
			}
			if had == "v1" && d.current != "v1" && !d.lateSent.Swap(true) {
				// A reading buffered under v1 before the switch, delivered
				// a second later: within the grace period.
				go func() {
					time.Sleep(time.Second)
					publish(d, d.late)
				}()
			}
		}).Wait()
	})
	// Telemetry: every online device, once a second.
	sendTelemetry(runCtx, t, &bg, devices, sealer, time.Second, publish)

	// The controller, leading through the PostgreSQL lease.
	pub, err := rotation.NewMQTTPublisher(ctx, rotation.MQTTOptions{Brokers: []string{b.SSLURL}, ClientID: "rotation", TLS: b.ClientTLS("rotation")})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	ctl, err := rotation.NewController(rotation.ControllerOptions{
		Policy: rotation.Policy{MaxAge: time.Hour, GracePeriod: grace, SharePerWindow: 0.5, ShareWindow: 2 * time.Second,
			RetryInterval: retry, PauseThreshold: 0.9, Tick: 250 * time.Millisecond, RootRotationOff: true},
		Ops: ops, Lease: &rotation.PGLease{DSN: prov.dsn}, Publisher: pub, TopicPattern: rekey.DefaultTopic,
		DeviceType: "monitor", Metrics: metrics, Workers: 16,
	})
	if err != nil {
		t.Fatal(err)
	}
	bg.Add(1)
	go func() { defer bg.Done(); ctl.Run(runCtx) }()

	state := func() (adopted, pending, v1Active, v1DecryptOnly, v1Revoked int) {
		es, err := prov.store.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			switch {
			case e.Version == "v2" && !e.Rotation.AdoptedAt.IsZero():
				adopted++
			case e.Version == "v2" && e.Rotation.Pending:
				pending++
			case e.Version == "v1" && e.State == dek.StateActive:
				v1Active++
			case e.Version == "v1" && e.State == dek.StateDecryptOnly:
				v1DecryptOnly++
			case e.Version == "v1" && e.State == dek.StateRevoked:
				v1Revoked++
			}
		}
		return
	}

	// 1. Every online device adopts v2; v1 of those turns decrypt_only.
	start := time.Now()
	wait.Detail(t, 45*time.Second, "every online device to adopt", func() (bool, string) {
		a, p, act, do, rv := state()
		return a == nDevices-nOffline && do+rv == nDevices-nOffline,
			fmt.Sprintf("adopted %d pending %d v1 active %d decrypt_only %d revoked %d", a, p, act, do, rv)
	})
	t.Logf("950 devices adopted in %s", time.Since(start).Round(time.Millisecond))

	// 3. The offline devices are retried and reported as stragglers.
	wait.Detail(t, 20*time.Second, "50 stragglers", func() (bool, string) {
		s := ctl.Status()
		return len(s.Stragglers) == nOffline, fmt.Sprintf("stragglers %d pending %d", len(s.Stragglers), s.Pending)
	})
	for _, k := range ctl.Status().Stragglers {
		if id := k[len("device/"):]; !byID[id].offline.Load() {
			t.Fatalf("%s reported as a straggler but online", id)
		}
	}
	_, _, act, _, _ := state()
	if act != nOffline {
		t.Fatalf("stragglers' v1 must stay active: %d active", act)
	}

	// 4. They come back: first their buffered v1 messages, then the next
	// retry's rekey, then they adopt.
	for _, d := range devices[:nOffline] {
		d.lateSent.Store(true)
		publish(d, d.late)
		d.offline.Store(false)
	}
	wait.Detail(t, 30*time.Second, "every device to adopt", func() (bool, string) {
		a, p, act, do, rv := state()
		return a == nDevices && act == 0, fmt.Sprintf("adopted %d pending %d v1 active %d decrypt_only %d revoked %d", a, p, act, do, rv)
	})

	// 5. After the grace period every v1 is revoked.
	wait.Detail(t, 30*time.Second, "every v1 revoked", func() (bool, string) {
		a, p, act, do, rv := state()
		return rv == nDevices, fmt.Sprintf("adopted %d pending %d v1 active %d decrypt_only %d revoked %d", a, p, act, do, rv)
	})

	// 6. Nothing lost, nothing failed.
	stop()
	bg.Wait()
	wait.Detail(t, 20*time.Second, "every published message opened", func() (bool, string) {
		tl.mu.Lock()
		defer tl.mu.Unlock()
		return len(tl.records)+sumMap(tl.failures) >= int(published.Load()), fmt.Sprintf("%d of %d", len(tl.records)+sumMap(tl.failures), published.Load())
	})
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if len(tl.failures) > 0 {
		t.Fatalf("messages failed: %v", tl.failures)
	}
	if len(tl.records) != int(published.Load()) {
		t.Fatalf("%d records for %d messages", len(tl.records), published.Load())
	}
	if tl.byVer["v1"] < nDevices || tl.byVer["v2"] == 0 {
		t.Fatalf("records by version: %v", tl.byVer)
	}
	if rekeysBad.Load() != 0 {
		t.Fatalf("%d rekey messages did not open on a device", rekeysBad.Load())
	}
	t.Logf("messages %d (by version %v), rekeys seen by devices %d", published.Load(), tl.byVer, rekeysSeen.Load())
}

func sumMap(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// fleetSize is the simulated fleet's size: 1,000 devices, as the rotation
// issue asks; under the race detector (the CI run), whose overhead makes the
// whole rollout several times slower, 200 unless DECRYPTD_ROTATION_FLEET
// says otherwise (`DECRYPTD_ROTATION_FLEET=1000 go test -race ...`).
func fleetSize(t *testing.T) int {
	if v := os.Getenv("DECRYPTD_ROTATION_FLEET"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 20 {
			t.Fatalf("DECRYPTD_ROTATION_FLEET=%q: want a number of devices >= 20", v)
		}
		return n
	}
	if raceEnabled {
		return 200
	}
	return 1000
}
