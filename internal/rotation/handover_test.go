package rotation_test

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
	"github.com/decryptd/decryptd/internal/rotation"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/testutil/metrictest"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// replica is one decryptd's rotation side: its own registry connection
// pool, key cache, decryptor, tracker, controller (with its own lease and
// MQTT publisher) and metrics, subscribed to the fleet's telemetry through
// a shared subscription.
type replica struct {
	name   string
	reg    *prometheus.Registry
	ctl    *rotation.Controller
	lease  *rotation.PGLease
	cancel context.CancelFunc
	done   sync.WaitGroup
	failed func() int
}

func startReplica(t *testing.T, e *env, b *mosquittotest.Broker, name string, p rotation.Policy) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{name: name, reg: prometheus.NewRegistry(), cancel: cancel}
	t.Cleanup(func() { r.stop() })
	store, err := pgstore.Open(ctx, e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := keyops.New(keyops.Options{KMS: e.kms, Roots: e.kms, Registry: store, Audit: e.aud, Operator: name})
	if err != nil {
		t.Fatal(err)
	}
	m, err := rotation.NewMetrics(r.reg)
	if err != nil {
		t.Fatal(err)
	}
	cache, err := keycache.New(keycache.Options{Registry: store, KMS: e.kms, Changes: store})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := decrypt.New(cache, decrypt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := rotation.NewTracker(rotation.TrackerOptions{Registry: store, Adopter: ops, Grace: p.GracePeriod, Metrics: m, FlushInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	opener := rotation.ObservingOpener{Opener: dec, Tracker: tr}
	pub, err := rotation.NewMQTTPublisher(ctx, rotation.MQTTOptions{Brokers: []string{b.SSLURL}, ClientID: name + "-rotation", TLS: b.ClientTLS(name)})
	if err != nil {
		t.Fatal(err)
	}
	r.lease = &rotation.PGLease{DSN: e.dsn}
	r.ctl, err = rotation.NewController(rotation.ControllerOptions{Policy: p, Ops: ops, Lease: r.lease, Publisher: pub,
		DeviceType: "monitor", Metrics: m, LeaseRetry: 200 * time.Millisecond, Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	failures := 0
	r.failed = func() int { mu.Lock(); defer mu.Unlock(); return failures }
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.SSLURL).SetClientID(name).SetTLSConfig(b.ClientTLS(name)).
		SetCleanSession(true).SetOrderMatters(false).SetOnConnectHandler(func(c mqtt.Client) {
		c.Subscribe("$share/decryptd/iot-2/type/+/id/+/evt/+/fmt/+", 1, func(_ mqtt.Client, msg mqtt.Message) {
			for {
				_, err := opener.Open(ctx, decrypt.Message{Topic: msg.Topic(), Payload: msg.Payload()})
				if errors.Is(err, decrypt.ErrTransient) && ctx.Err() == nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				if err != nil && ctx.Err() == nil {
					mu.Lock()
					failures++
					mu.Unlock()
					t.Logf("%s: %s: %v", name, decrypt.Reason(err), err)
				}
				return
			}
		})
	}))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s connect: %v", name, tok.Error())
	}
	r.done.Add(3)
	go func() { defer r.done.Done(); cache.Run(ctx) }()
	go func() { defer r.done.Done(); tr.Run(ctx) }()
	go func() { defer r.done.Done(); r.ctl.Run(ctx) }()
	var once sync.Once
	stopFn := func() {
		once.Do(func() {
			sub.Disconnect(0)
			cancel()
			r.done.Wait()
			pub.Close()
			cache.Close()
			store.Close()
		})
	}
	r.cancel = stopFn
	return r
}

func (r *replica) stop() { r.cancel() }

// terminateLease ends the database session holding the rotation lease,
// as a crash of the leader's host would (the server drops its advisory
// lock with the session).
func terminateLease(t *testing.T, dsn string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	err = conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND ((classid::bigint << 32) | objid::bigint) = $1`, rotation.LeaseKey).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("terminated %d sessions holding the lease, want 1", n)
	}
}

// TestLeaseHandover runs two replicas sharing one PostgreSQL registry and
// one broker. Only one controller leads (decryptd_rotation_leader is 1 on
// exactly one, and only it sends rekeys). The rollout is throttled so that
// it is under way when the leader is killed: its lease session is
// terminated and the replica stopped, as a crash would. The other replica
// takes the lease within a few seconds (measured) and finishes the rollout:
// rotations the old leader started but that were not adopted (their
// devices were offline) are delivered again and adopted, and every device
// ends on v2 with no message failing.
func TestLeaseHandover(t *testing.T) {
	const nDevices = 24
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	past := func() time.Time { return time.Now().Add(-2 * time.Hour) }
	e := newEnv(t, past)
	b := mosquittotest.Start(t, mosquittotest.Options{})

	devices := make([]*simDevice, nDevices)
	byID := map[string]*simDevice{}
	for i := range devices {
		id := fmt.Sprintf("hd-%02d", i)
		a := createKey(ctx, t, e, dek.DeviceKeyID(id), nil, past())
		devices[i] = &simDevice{id: id, keys: map[string]cipher.AEAD{"v1": a}, current: "v1"}
		byID[id] = devices[i]
	}
	// A quarter of the fleet is offline when the rollout starts: their
	// rotations stay pending across the handover.
	for _, d := range devices[:nDevices/4] {
		d.offline.Store(true)
	}

	// The devices: one connection carries every command topic.
	cmd := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.SSLURL).SetClientID("fleet-cmd").SetTLSConfig(b.ClientTLS("fleet-cmd")).
		SetCleanSession(true).SetOrderMatters(false))
	if tok := cmd.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer cmd.Disconnect(100)
	if tok := cmd.Subscribe("iot-2/type/monitor/id/+/cmd/rekey/fmt/json", 2, func(_ mqtt.Client, m mqtt.Message) {
		id := strings.Split(m.Topic(), "/")[4]
		if d := byID[id]; d != nil && !d.offline.Load() {
			if err := d.handleRekey(m.Payload()); err != nil {
				t.Errorf("rekey for %s: %v", id, err)
			}
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	pubc := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.SSLURL).SetClientID("fleet-pub").SetTLSConfig(b.ClientTLS("fleet-pub")))
	if tok := pubc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pubc.Disconnect(100)
	sealer := seal.New(rand.Reader)
	tctx, stopTelemetry := context.WithCancel(ctx)
	var telemetry sync.WaitGroup
	// Every online device, every 300 ms.
	sendTelemetry(tctx, t, &telemetry, devices, sealer, 300*time.Millisecond, func(d *simDevice, msg []byte) {
		pubc.Publish(topicOf(d.id), 1, false, msg).WaitTimeout(10 * time.Second)
	})
	defer func() { stopTelemetry(); telemetry.Wait() }()

	// A budget of a quarter of the fleet per 4 s: the rollout takes about
	// ten seconds, so the leader dies in the middle of it.
	policy := rotation.Policy{MaxAge: time.Hour, GracePeriod: time.Minute, SharePerWindow: 0.25, ShareWindow: 4 * time.Second,
		RetryInterval: time.Second, PauseThreshold: 1, Tick: 200 * time.Millisecond, RootRotationOff: true}
	ra := startReplica(t, e, b, "replica-a", policy)
	rb := startReplica(t, e, b, "replica-b", policy)
	replicas := []*replica{ra, rb}

	leaderOf := func() (*replica, int) {
		var l *replica
		n := 0
		for _, r := range replicas {
			if metrictest.Value(t, r.reg, "decryptd_rotation_leader") == 1 {
				l, n = r, n+1
			}
		}
		return l, n
	}
	var leader *replica
	wait.Detail(t, 10*time.Second, "a leader", func() (bool, string) {
		l, n := leaderOf()
		leader = l
		return n == 1, fmt.Sprintf("%d leaders", n)
	})
	follower := ra
	if leader == ra {
		follower = rb
	}
	// For a while: still exactly one leader, and only it sends rekeys.
	for range 10 {
		if _, n := leaderOf(); n != 1 {
			t.Fatalf("%d leaders", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	wait.Detail(t, 10*time.Second, "the leader to send rekeys", func() (bool, string) {
		n := metrictest.Value(t, leader.reg, "decryptd_rotation_rekeys_sent_total")
		return n > 0, fmt.Sprintf("%v sent", n)
	})
	if n := metrictest.Value(t, follower.reg, "decryptd_rotation_rekeys_sent_total"); n != 0 {
		t.Fatalf("the follower sent %v rekeys", n)
	}

	versions := func() (adopted, pending, fresh int) {
		es, err := e.store.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range es {
			switch {
			case x.Version == "v2" && !x.Rotation.AdoptedAt.IsZero():
				adopted++
			case x.Version == "v2" && x.Rotation.Pending:
				pending++
			}
		}
		return adopted, pending, nDevices - adopted - pending
	}
	adopted, pending, notStarted := versions()
	t.Logf("at the kill: %d adopted, %d pending, %d not started", adopted, pending, notStarted)
	if notStarted == 0 {
		t.Fatalf("the rollout finished before the kill; the test needs it under way")
	}

	// Kill the leader: its lease session dies, then the replica.
	killed := time.Now()
	terminateLease(t, e.dsn)
	leader.stop()
	wait.Detail(t, 15*time.Second, "the follower to lead", func() (bool, string) {
		return metrictest.Value(t, follower.reg, "decryptd_rotation_leader") == 1, "not yet"
	})
	handover := time.Since(killed)
	t.Logf("lease handed over in %s", handover.Round(time.Millisecond))
	if handover > 5*time.Second {
		t.Fatalf("handover took %s, want at most a few seconds", handover)
	}

	// The offline devices come back; the new leader finishes the rollout.
	for _, d := range devices[:nDevices/4] {
		d.offline.Store(false)
	}
	wait.Detail(t, 45*time.Second, "every device to adopt v2", func() (bool, string) {
		a, p, n := versions()
		return a == nDevices, fmt.Sprintf("adopted %d pending %d not started %d", a, p, n)
	})
	if n := metrictest.Value(t, follower.reg, "decryptd_rotation_rekeys_sent_total"); n == 0 {
		t.Fatal("the new leader sent no rekeys")
	}
	for _, d := range devices {
		d.mu.Lock()
		cur := d.current
		d.mu.Unlock()
		if cur != "v2" {
			t.Errorf("%s seals under %s", d.id, cur)
		}
	}
	if n := follower.failed(); n != 0 {
		t.Fatalf("%d messages failed on the surviving replica", n)
	}
}
