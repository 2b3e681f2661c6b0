package rotation_test

import (
	"context"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
	"github.com/decryptd/decryptd/internal/rotation"
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
