package rotation_test

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
	"github.com/decryptd/decryptd/internal/rotation"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

// connectClient connects the MQTT client cn to b over mutual TLS (clean
// session, reconnecting, unordered), running onConnect (when not nil) on
// every connection; it disconnects when the test ends.
func connectClient(t *testing.T, b *mosquittotest.Broker, cn string, onConnect func(mqtt.Client)) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(b.SSLURL).SetClientID(cn).SetTLSConfig(b.ClientTLS(cn)).
		SetOrderMatters(false).SetCleanSession(true).SetAutoReconnect(true)
	if onConnect != nil {
		o.SetOnConnectHandler(onConnect)
	}
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", cn, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// startBackend builds the decrypting side of a rotation test (key cache
// over the registry and KMS, decryption core, adoption tracker with the
// given grace period) and runs the cache and the tracker on bg until
// runCtx ends; the cache is closed when the test ends. The metrics are
// the tracker's, for the controller to share.
func startBackend(runCtx context.Context, t *testing.T, bg *sync.WaitGroup, store *pgstore.Store, k *local.Provider, adopter rotation.Adopter, grace time.Duration) (rotation.ObservingOpener, *rotation.Metrics) {
	t.Helper()
	cache, err := keycache.New(keycache.Options{Registry: store, KMS: k, Changes: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cache.Close() })
	dec, err := decrypt.New(cache, decrypt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := rotation.NewMetrics(nil)
	tracker, err := rotation.NewTracker(rotation.TrackerOptions{Registry: store, Adopter: adopter, Grace: grace, Metrics: metrics, FlushInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	bg.Add(2)
	go func() { defer bg.Done(); cache.Run(runCtx) }()
	go func() { defer bg.Done(); tracker.Run(runCtx) }()
	return rotation.ObservingOpener{Opener: dec, Tracker: tracker}, metrics
}

// tally is what the backend opened: record ids, records by key version
// and by key_id@key_version, failures by reason. Hold mu to read it.
type tally struct {
	mu       sync.Mutex
	records  map[string]bool
	byVer    map[string]int
	byRef    map[string]int
	failures map[string]int
}

func (tl *tally) add(rec decrypt.Record, err error) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if err != nil {
		tl.failures[decrypt.Reason(err)]++
		return
	}
	tl.records[rec.ID] = true
	tl.byVer[rec.KeyVersion]++
	tl.byRef[rec.KeyID+"@"+rec.KeyVersion]++
}

// connectBackend connects the client "backend" to b and subscribes it to
// every device's events at QoS 1, opening each message through opener
// (retrying a transient failure every 50 ms until runCtx ends) and
// counting the outcome in the tally it returns.
func connectBackend(runCtx context.Context, t *testing.T, b *mosquittotest.Broker, opener rotation.ObservingOpener) *tally {
	t.Helper()
	tl := &tally{records: map[string]bool{}, byVer: map[string]int{}, byRef: map[string]int{}, failures: map[string]int{}}
	connectClient(t, b, "backend", func(c mqtt.Client) {
		c.Subscribe("iot-2/type/+/id/+/evt/+/fmt/+", 1, func(_ mqtt.Client, m mqtt.Message) {
			for {
				rec, err := opener.Open(runCtx, decrypt.Message{Topic: m.Topic(), Payload: m.Payload()})
				if errors.Is(err, decrypt.ErrTransient) && runCtx.Err() == nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				tl.add(rec, err)
				return
			}
		}).Wait()
	})
	return tl
}

// createKey stores version v1 of keyID (active, allowed for devices,
// created at created) wrapped by the test's KMS and returns its AEAD.
func createKey(ctx context.Context, t *testing.T, e *env, keyID string, devices []string, created time.Time) cipher.AEAD {
	t.Helper()
	a, err := newKey(ctx, e, keyID, devices, created)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// newKey is createKey for a goroutine: it returns the error.
func newKey(ctx context.Context, e *env, keyID string, devices []string, created time.Time) (cipher.AEAD, error) {
	key := make([]byte, keyops.DEKSize)
	rand.Read(key)
	defer clear(key)
	ref := dek.Ref{KeyID: keyID, Version: "v1"}
	wr, err := e.kms.Wrap(ctx, key, kms.DEKAAD(ref))
	if err != nil {
		return nil, err
	}
	if err := e.store.Create(ctx, registry.Entry{KeyID: keyID, Version: "v1", State: dek.StateActive, Wrapped: wr, Devices: devices, CreatedAt: created}); err != nil {
		return nil, err
	}
	return seal.NewAEAD(key)
}

// sendTelemetry has every online device publish a message (sealed with
// sealer, numbered by round) every interval, on bg, until ctx ends.
func sendTelemetry(ctx context.Context, t *testing.T, bg *sync.WaitGroup, devices []*simDevice, sealer *seal.Sealer, every time.Duration, publish func(*simDevice, []byte)) {
	bg.Add(1)
	go func() {
		defer bg.Done()
		for seq := 0; ctx.Err() == nil; seq++ {
			for _, d := range devices {
				if d.offline.Load() {
					continue
				}
				msg, err := d.message(sealer, seq)
				if err != nil {
					t.Error(err)
					return
				}
				publish(d, msg)
			}
			sleepCtx(ctx, every)
		}
	}()
}
