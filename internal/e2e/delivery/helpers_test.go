package delivery_test

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/e2e/e2etest"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/testutil/daemonproc"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/recordfile"
)

func topicOf(deviceID string) string {
	return "iot-2/type/monitor/id/" + deviceID + "/evt/telemetry/fmt/json"
}

// fleet is a set of provisioned devices and the key files every daemon of
// a test shares: one local root key, one file registry.
type fleet struct {
	dir      string
	broker   *mosquittotest.Broker
	rootKey  string
	registry string
	devices  []device
}

type device struct {
	id, version string
	aead        cipher.AEAD
}

// newFleet provisions n devices, each with a key of its own, through keyops
// as dekctl does (local root key, file registry).
func newFleet(t *testing.T, b *mosquittotest.Broker, n int) *fleet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	f := &fleet{dir: dir, broker: b, rootKey: e2etest.RootKeyPath(dir), registry: e2etest.RegistryPath(dir)}
	lp, dk := e2etest.LocalKeys(ctx, t, dir, "delivery-root")
	defer dk.Close()
	ops, err := keyops.New(keyops.Options{KMS: lp, Roots: lp, Registry: dk.Registry, Audit: dk.Audit, Operator: "e2e-delivery"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id := fmt.Sprintf("dev-%04d", i)
		cred, err := ops.Provision(ctx, keyops.ProvisionRequest{DeviceID: id})
		if err != nil {
			t.Fatalf("provision %s: %v", id, err)
		}
		aead, err := seal.NewAEAD(cred.DEK)
		cred.Wipe()
		if err != nil {
			t.Fatal(err)
		}
		f.devices = append(f.devices, device{id: id, version: cred.KeyVersion, aead: aead})
	}
	return f
}

// message seals reading seq of device seq mod len(devices) (shape A, its own
// key) and returns its topic, its payload and the record id the spec gives
// it: hex SHA-256 of key id, 0x00, key version, 0x00, nonce. The nonce is
// drawn here and fed to the sealer, so the id is known without decrypting.
func (f *fleet) message(seq int) (topic string, payload []byte, id string, err error) {
	d := f.devices[seq%len(f.devices)]
	nonce := make([]byte, seal.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return "", nil, "", err
	}
	s := seal.New(bytes.NewReader(nonce))
	readings := fmt.Sprintf(`{"seq":%d,"heart_rate":%d,"spo2":%d}`, seq, 60+seq%40, 93+seq%7)
	payload, err = s.AppendShapeA(nil, d.aead, seal.Envelope{DeviceID: d.id, Timestamp: time.Now().Unix(), KeyVersion: d.version}, []byte(readings), []byte(`{"fw":"e2e"}`))
	if err != nil {
		return "", nil, "", err
	}
	h := sha256.New()
	h.Write([]byte(dek.DeviceKeyID(d.id)))
	h.Write([]byte{0})
	h.Write([]byte(d.version))
	h.Write([]byte{0})
	h.Write(nonce)
	return topicOf(d.id), payload, hex.EncodeToString(h.Sum(nil)), nil
}

// publisher is a device gateway: one mutual-TLS connection publishing at
// QoS 1.
type publisher struct {
	c mqtt.Client
	f *fleet
}

func newPublisher(t *testing.T, f *fleet, name string) *publisher {
	t.Helper()
	o := mqtt.NewClientOptions().
		AddBroker(f.broker.SSLURL).
		SetClientID(name).
		SetTLSConfig(f.broker.ClientTLS(name)).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectTimeout(10 * time.Second).
		SetWriteTimeout(10 * time.Second)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher %s: connect: %v", name, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(250) })
	return &publisher{c: c, f: f}
}

// publish seals and publishes messages from..to-1, storing each record id in
// ids[seq], with at most window PUBACKs outstanding. It returns once the
// broker acknowledged every one. Safe to call from any goroutine.
func (p *publisher) publish(from, to int, ids []string) error {
	const window = 500
	toks := make([]mqtt.Token, 0, window)
	wait := func(tok mqtt.Token) error {
		if !tok.WaitTimeout(30 * time.Second) {
			return errors.New("publish: no PUBACK within 30s")
		}
		return tok.Error()
	}
	for seq := from; seq < to; seq++ {
		topic, payload, id, err := p.f.message(seq)
		if err != nil {
			return err
		}
		ids[seq] = id
		if len(toks) == window {
			if err := wait(toks[0]); err != nil {
				return fmt.Errorf("message %d: %w", seq-window, err)
			}
			toks = append(toks[:0], toks[1:]...)
		}
		toks = append(toks, p.c.Publish(topic, 1, false, payload))
	}
	for _, tok := range toks {
		if err := wait(tok); err != nil {
			return err
		}
	}
	return nil
}

// replicaConfig is one daemon's part of a configuration file; the rest is
// the fleet's (broker, keys, registry).
type replicaConfig struct {
	ClientID    string
	MaxInFlight int    // default 100
	Workers     int    // default 8
	Sinks       string // the sinks list in YAML (indented two spaces); default: one file sink
}

// replicaFiles are the files a configuration names.
type replicaFiles = e2etest.Files

// writeConfig writes a configuration file for one replica, as an operator
// would, with a client certificate of its own, and returns its files.
func (f *fleet) writeConfig(t *testing.T, rc replicaConfig) replicaFiles {
	t.Helper()
	if rc.MaxInFlight == 0 {
		rc.MaxInFlight = 100
	}
	if rc.Workers == 0 {
		rc.Workers = 8
	}
	rf := e2etest.NewFiles(t, f.dir, rc.ClientID)
	e2etest.WriteConfig(t, rf, e2etest.Config{
		// One connection whatever the machine's cores (the default follows
		// GOMAXPROCS): these tests reason about one session per replica.
		Input: e2etest.MQTTInput(e2etest.MQTT{
			Broker: f.broker, ClientID: rc.ClientID, SharedGroup: "decryptd",
			MaxInFlight: rc.MaxInFlight, Workers: rc.Workers, Connections: 1, KeepAlive: "10s",
		}),
		KMS:      e2etest.LocalKMS(f.rootKey),
		Registry: f.registry,
		Sinks:    rc.Sinks,
		ShowLog:  16 << 10,
	})
	return rf
}

func noEnv(string) (string, bool) { return "", false }

// inProcess is a daemon run in the test process through daemon.New and Run.
type inProcess struct {
	files replicaFiles
	addr  string
	stop  func() error
}

// startInProcess loads the configuration file, runs the daemon until the
// test ends (or stop) and waits until /readyz says ready.
func startInProcess(t *testing.T, rf replicaFiles) *inProcess {
	t.Helper()
	cfg, err := config.Load(rf.Config, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(rf.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(logf), zapcore.InfoLevel))
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.New(ctx, daemon.Options{Config: cfg, Logger: log, Registry: prometheus.NewRegistry(), Version: "e2e"})
	if err != nil {
		cancel()
		logf.Close()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	r := &inProcess{files: rf, addr: d.Addr().String()}
	r.stop = sync.OnceValue(func() error {
		cancel()
		defer logf.Close()
		select {
		case err := <-done:
			return err
		case <-time.After(45 * time.Second):
			return errors.New("daemon did not stop within 45s")
		}
	})
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("daemon %s: %v", rf.Config, err)
		}
	})
	waitReady(t, r.addr, func() bool { return false })
	return r
}

// process is the decryptd binary run with `decryptd run --config F`.
type process struct {
	*daemonproc.Proc
	files replicaFiles
	addr  string
}

// startProcess runs bin with the configuration, learns its HTTP address
// from its "serving" log line (metrics.listen is 127.0.0.1:0) and waits
// until /readyz says ready.
func startProcess(t *testing.T, bin string, rf replicaFiles) *process {
	t.Helper()
	ctx := context.Background()
	dp, err := daemonproc.Start(ctx, bin, daemonproc.Options{Args: []string{"run", "--config", rf.Config}, Log: rf.Log})
	if err != nil {
		t.Fatal(err)
	}
	p := &process{Proc: dp, files: rf}
	t.Cleanup(p.Kill)
	if p.addr, err = p.WaitServing(ctx, 30*time.Second); err != nil {
		t.Fatalf("decryptd %v; log:\n%s", err, mosquittotest.Tail(rf.Log, 8<<10))
	}
	waitReady(t, p.addr, p.Exited)
	return p
}

// httpGet is a GET bounded by 5 s (a hung daemon must not hang the test).
func httpGet(url string) (*http.Response, error) {
	return daemonproc.HTTPGet(context.Background(), url)
}

// waitReady polls /readyz until 200, for at most 30 s.
func waitReady(t *testing.T, addr string, exited func() bool) {
	t.Helper()
	if err := daemonproc.WaitReady(context.Background(), addr, 30*time.Second, 50*time.Millisecond, exited); err != nil {
		t.Fatalf("daemon on %s %v", addr, err)
	}
}

// sinkFile is what a file sink holds (recordfile.Lines).
type sinkFile = recordfile.Lines

func readSink(path string) (sinkFile, error) { return recordfile.Read(path) }

// countLines counts the newlines of a file: cheap enough to poll often.
func countLines(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return bytes.Count(data, []byte{'\n'})
}

// missing returns the ids of want that are not in have.
func missing(want []string, have map[string]int) []string {
	var out []string
	for _, id := range want {
		if have[id] == 0 {
			out = append(out, id)
		}
	}
	return out
}

// waitUntil polls cond every 50 ms until it holds or timeout passes; then
// it fails the test with cond's last status.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, status := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (%s)", what, timeout, status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metrics is one scrape of /metrics (e2etest.Metrics).
type metrics = e2etest.Metrics

func scrape(addr string) (metrics, error) { return e2etest.Scrape(context.Background(), addr) }

func mustScrape(t *testing.T, addr string) metrics {
	t.Helper()
	m, err := scrape(addr)
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	return m
}
