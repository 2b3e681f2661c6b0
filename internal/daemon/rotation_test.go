package daemon_test

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/daemon/daemontest"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/rekey"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/testutil/keyenv"
	"github.com/decryptd/decryptd/internal/testutil/metrictest"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// rekeyDevice is one device that implements docs/rekey-v1.md: it keeps
// every version it was given and seals under the newest.
type rekeyDevice struct {
	id      string
	mu      sync.Mutex
	keys    map[string]cipher.AEAD
	current string
	rekeyed chan string // new versions installed
}

func (d *rekeyDevice) onRekey(_ mqtt.Client, m mqtt.Message) {
	msg, err := rekey.Parse(m.Payload())
	if err != nil || msg.DeviceID != d.id || msg.KeyID != dek.DeviceKeyID(d.id) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, have := d.keys[msg.NewVersion]; have {
		return // a repeat
	}
	wrap, ok := d.keys[msg.WrapKeyVersion]
	if !ok {
		return
	}
	k, err := msg.Open(wrap)
	if err != nil {
		return
	}
	a, err := seal.NewAEAD(k)
	clear(k)
	if err != nil {
		return
	}
	d.keys[msg.NewVersion], d.current = a, msg.NewVersion
	d.rekeyed <- msg.NewVersion
}

// seal makes one shape A message under version (the current one if "").
func (d *rekeyDevice) seal(t *testing.T, version string, seq int) []byte {
	t.Helper()
	d.mu.Lock()
	if version == "" {
		version = d.current
	}
	a := d.keys[version]
	d.mu.Unlock()
	p, err := seal.New(rand.Reader).AppendShapeA(nil, a, seal.Envelope{DeviceID: d.id, Timestamp: time.Now().Unix(), KeyVersion: version},
		[]byte(fmt.Sprintf(`{"seq":%d}`, seq)), nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDaemonRotation runs the daemon with rotation enabled under a policy
// shortened to seconds (real Mosquitto with mutual TLS, local KMS, file
// registry, file lease): one device, provisioned two hours "ago" under a
// one-hour max age, gets its rekey on its command topic at QoS 2 from the
// daemon's own rotation connection, switches to v2; the daemon records the
// adoption from the first v2 message, demotes v1 to decrypt_only (a
// buffered v1 message still decrypts) and revokes it after the grace
// period (a v1 message then fails as key_revoked). The metrics say so and
// the audit chain verifies.
func TestDaemonRotation(t *testing.T) {
	const grace = 3 * time.Second
	b := mosquittotest.Start(t, mosquittotest.Options{})
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	past := func() time.Time { return time.Now().Add(-2 * time.Hour) }
	ke := keyenv.Open(ctx, t, dir, keyenv.Options{Now: past})
	store, regPath, aw, ops := ke.Store, ke.RegistryPath, ke.Audit, ke.Ops
	cred, err := ops.Provision(ctx, keyops.ProvisionRequest{DeviceID: "pump-1"})
	if err != nil {
		t.Fatal(err)
	}
	a1, err := seal.NewAEAD(cred.DEK)
	cred.Wipe()
	aw.Close()
	if err != nil {
		t.Fatal(err)
	}
	dev := &rekeyDevice{id: "pump-1", keys: map[string]cipher.AEAD{cred.KeyVersion: a1}, current: cred.KeyVersion, rekeyed: make(chan string, 4)}

	// The device: subscribed to its command topic before the daemon runs.
	dc := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.SSLURL).SetClientID("pump-1").
		SetTLSConfig(b.ClientTLS("pump-1")).SetCleanSession(true).SetConnectTimeout(10 * time.Second))
	if tok := dc.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("device connect: %v", tok.Error())
	}
	defer dc.Disconnect(100)
	cmd := rekey.Topic(config.DefaultCommandTopic, "monitor", "pump-1")
	if tok := dc.Subscribe(cmd, 2, dev.onRekey); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", cmd, tok.Error())
	}
	publish := func(payload []byte) {
		t.Helper()
		if tok := dc.Publish(topicOfDevice("pump-1"), 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}

	cfg := testConfig(t, dir, b, b.ClientCert("decryptd"))
	cfg.Rotation = config.Rotation{Enabled: true, MaxDEKAge: time.Hour, GracePeriod: grace, SharePerDay: 1,
		RetryInterval: 5 * time.Second, MessageLimit: config.DefaultRotationMessageLimit, PauseThreshold: 0.5, PauseMinSample: 20,
		CommandTopic: config.DefaultCommandTopic, DeviceType: "monitor", RotateRootKey: new(bool),
		RootKeyMaxAge: config.DefaultRotationRootKeyMaxAge, Tick: 200 * time.Millisecond, FlushInterval: 500 * time.Millisecond}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	_, stop := daemontest.Start(ctx, t, daemon.Options{Config: cfg, Registry: reg, Version: "test"})

	publish(dev.seal(t, "v1", 0)) // under v1 (the rekey may already be in)
	var v2 string
	select {
	case v2 = <-dev.rekeyed:
	case <-time.After(20 * time.Second):
		t.Fatal("no rekey reached the device within 20 s")
	}
	if v2 != "v2" {
		t.Fatalf("rekey installed %q, want v2", v2)
	}
	publish(dev.seal(t, "", 1))   // the first under v2: adoption
	publish(dev.seal(t, "v1", 2)) // buffered under v1, sent late: within grace

	entry := func(version string) registry.Entry {
		e, err := store.Get(ctx, "device/pump-1", version)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	wait.Within(t, 15*time.Second, "v2 adopted, v1 decrypt_only", func() bool {
		e2, e1 := entry("v2"), entry("v1")
		return !e2.Rotation.Pending && !e2.Rotation.AdoptedAt.IsZero() && e1.State == dek.StateDecryptOnly
	})
	wait.Within(t, 20*time.Second, "v1 revoked after the grace period", func() bool { return entry("v1").State == dek.StateRevoked })
	publish(dev.seal(t, "v1", 3)) // after grace: refused

	recPath, dlPath := cfg.Sinks[0].Config.(*sink.FileConfig).Path, cfg.DeadLetter.Path
	wait.Within(t, 15*time.Second, "3 records and 1 dead letter", func() bool {
		return len(readLines(t, recPath)) >= 3 && len(readLines(t, dlPath)) >= 1
	})
	byVersion := map[string]int{}
	for _, l := range readLines(t, recPath) {
		var r struct {
			KeyVersion string `json:"key_version"`
		}
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatal(err)
		}
		byVersion[r.KeyVersion]++
	}
	if byVersion["v1"] != 2 || byVersion["v2"] != 1 {
		t.Fatalf("records by version %v, want v1:2 v2:1", byVersion)
	}
	var dl sink.DeadLetter
	if err := json.Unmarshal(readLines(t, dlPath)[0], &dl); err != nil {
		t.Fatal(err)
	}
	if dl.Reason != "key_revoked" {
		t.Fatalf("dead letter reason %q, want key_revoked", dl.Reason)
	}

	for name, want := range map[string]float64{
		"decryptd_rotation_leader":                            1,
		"decryptd_rotation_adoptions_total":                   1,
		"decryptd_rotation_revoked_total":                     1,
		`decryptd_rotation_started_total{trigger="age"}`:      1,
		`decryptd_rotation_dek_versions{state="revoked"}`:     1,
		`decryptd_rotation_dek_versions{state="active"}`:      1,
		`decryptd_rotation_failures_total{operation="rekey"}`: 0,
	} {
		// Gauges describe the last scan: give the next one time.
		deadline := time.Now().Add(5 * time.Second)
		for gathered(t, reg, name) != want && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if got := gathered(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := gathered(t, reg, "decryptd_rotation_rekeys_sent_total"); got < 1 {
		t.Errorf("decryptd_rotation_rekeys_sent_total = %v, want >= 1", got)
	}
	if _, err := os.Stat(regPath + daemon.LeaseSuffix); err != nil {
		t.Errorf("lease file: %v", err)
	}

	stop()
	// The daemon's audit log holds the rotation's events (rotate, unwraps
	// for the rekey, adopt, supersede, revoke) and its chain verifies.
	n, err := verifyAudit(cfg.Audit.Path)
	if err != nil {
		t.Fatalf("audit log: %v (after %d lines)", err, n)
	}
	data, _ := os.ReadFile(cfg.Audit.Path)
	for _, want := range []string{"rekey for device pump-1", "adopted", "superseded by v2"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("audit log lacks %q", want)
		}
	}
}

// TestDaemonRotationDisabled: without rotation.enabled nothing of rotation
// is built: no rotation metric, no lease file.
func TestDaemonRotationDisabled(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{})
	dir := t.TempDir()
	if _, err := local.Create(filepath.Join(dir, "root-key.json"), "test-root"); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, dir, b, b.ClientCert("decryptd"))
	reg := prometheus.NewRegistry()
	d, err := daemon.New(context.Background(), daemon.Options{Config: cfg, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(context.Background())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "decryptd_rotation_") {
			t.Errorf("rotation disabled, yet %s is registered", mf.GetName())
		}
	}
	if _, err := os.Stat(cfg.Registry.Path + daemon.LeaseSuffix); !os.IsNotExist(err) {
		t.Errorf("rotation disabled, yet a lease file: %v", err)
	}
}

func topicOfDevice(id string) string {
	return "iot-2/type/monitor/id/" + id + "/evt/telemetry/fmt/json"
}

// gathered is metrictest.Series reading an absent series as -1, which no
// check wants, so that the check waits for the series to appear.
func gathered(t *testing.T, reg *prometheus.Registry, series string) float64 {
	t.Helper()
	name, labels, err := metrictest.ParseSeries(series)
	if err != nil {
		t.Fatal(err)
	}
	v, ok, err := metrictest.Lookup(reg, name, labels...)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return -1
	}
	return v
}
