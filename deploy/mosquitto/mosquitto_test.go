package mosquitto_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/pki"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/rekey"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/testutil/metrictest"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// broker is the shipped configuration running in a temporary folder.
type broker struct {
	url string
	ca  *pki.CA
	log string
}

// localized rewrites the settings of the shipped mosquitto.conf that name
// the image's paths and port, each of which must occur exactly once; every
// other line is run as shipped.
func localized(t *testing.T, shipped string, repl map[string]string) string {
	t.Helper()
	seen := map[string]int{}
	var out strings.Builder
	for _, line := range strings.Split(shipped, "\n") {
		key, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if v, ok := repl[key]; ok && !strings.HasPrefix(strings.TrimSpace(line), "#") {
			seen[key]++
			line = key + " " + v
		}
		out.WriteString(line + "\n")
	}
	for k := range repl {
		if seen[k] != 1 {
			t.Fatalf("mosquitto.conf: %q set %d times, want once", k, seen[k])
		}
	}
	if os.Geteuid() == 0 {
		// Started as root, Mosquitto drops to user "mosquitto", who cannot
		// read the test's 0700 folder.
		out.WriteString("user root\n")
	}
	return out.String()
}

func startBroker(t *testing.T) *broker {
	t.Helper()
	if _, err := os.Stat(mosquittotest.Binary); err != nil {
		t.Fatalf("mosquitto not found at %s (%v): run ./scripts/test.sh, which installs it", mosquittotest.Binary, err)
	}
	dir := t.TempDir()
	ca, err := pki.NewCA(filepath.Join(dir, "pki"), "acl test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.IssueServer("broker")
	if err != nil {
		t.Fatal(err)
	}
	shipped, err := os.ReadFile("mosquitto.conf")
	if err != nil {
		t.Fatal(err)
	}
	acl, err := os.ReadFile("acl")
	if err != nil {
		t.Fatal(err)
	}
	aclPath := filepath.Join(dir, "acl")
	if err := os.WriteFile(aclPath, acl, 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	logPath := filepath.Join(dir, "mosquitto.log")
	conf := localized(t, string(shipped), map[string]string{
		"acl_file":             aclPath,
		"persistence_location": data + "/",
		"listener":             strconv.Itoa(port) + " 127.0.0.1",
		"cafile":               srv.CA,
		"certfile":             srv.Cert,
		"keyfile":              srv.Key,
		"log_dest":             "file " + logPath,
	})
	confPath := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(mosquittotest.Binary, "-c", confPath)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("mosquitto log:\n%s%s", b, stderr.String())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("mosquitto exited at start with the shipped config:\n%s%s", b, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto not listening after 15s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &broker{url: fmt.Sprintf("ssl://127.0.0.1:%d", port), ca: ca, log: logPath}
}

// client is a device (or a test tool) connected with a certificate whose
// CN is cn; it keeps every message it receives, by topic.
type client struct {
	c   mqtt.Client
	mu  sync.Mutex
	got map[string][][]byte
}

func (b *broker) connect(t *testing.T, cn string) *client {
	t.Helper()
	files, err := b.ca.IssueClient(cn)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := pki.ClientConfig(files, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cl := &client{got: map[string][][]byte{}}
	o := mqtt.NewClientOptions().AddBroker(b.url).SetClientID(cn + "-test").SetTLSConfig(tc).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			cl.mu.Lock()
			cl.got[m.Topic()] = append(cl.got[m.Topic()], m.Payload())
			cl.mu.Unlock()
		})
	cl.c = mqtt.NewClient(o)
	if tok := cl.c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: connect: %v", cn, tok.Error())
	}
	t.Cleanup(func() { cl.c.Disconnect(100) })
	return cl
}

// subscribe subscribes at QoS 1 and returns the broker's SUBACK code
// (0-2 granted, 0x80 refused).
func (cl *client) subscribe(t *testing.T, filter string) byte {
	t.Helper()
	tok := cl.c.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return tok.(*mqtt.SubscribeToken).Result()[filter]
}

func (cl *client) publish(t *testing.T, topic string, payload []byte) {
	t.Helper()
	tok := cl.c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func (cl *client) messages(topic string) [][]byte {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return append([][]byte(nil), cl.got[topic]...)
}

func (cl *client) total() int {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	n := 0
	for _, m := range cl.got {
		n += len(m)
	}
	return n
}

func evtTopic(id string) string { return "iot-2/type/monitor/id/" + id + "/evt/telemetry/fmt/json" }
func cmdTopic(id string) string { return rekey.Topic("", "monitor", id) }

// device is a provisioned device's key.
type device struct {
	id, version string
	aead        cipher.AEAD
}

func (d device) message(t *testing.T, seq int) []byte {
	t.Helper()
	p, err := seal.New(rand.Reader).AppendShapeA(nil, d.aead,
		seal.Envelope{DeviceID: d.id, Timestamp: time.Now().Unix(), KeyVersion: d.version},
		[]byte(fmt.Sprintf(`{"seq":%d}`, seq)), []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type record struct {
	DeviceID   string `json:"device_id"`
	KeyVersion string `json:"key_version"`
}

func readRecords(t *testing.T, path string) []record {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []record
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("record %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// TestShippedACL runs deploy/mosquitto/mosquitto.conf and acl as shipped
// (only paths and the port changed) with certificates made on the spot:
// device A (CN dev-a) cannot read device B's command topic or events nor
// publish on B's event or command topics; decryptd (CN decryptd) receives
// A's events through its shared subscription and publishes rekeys that A
// receives, opens and adopts, its next record arriving under the new
// version; a client with decryptd's identity reads no command topic and
// publishes no event. The two rotations, started as dekctl rotate does,
// count in decryptd_rotation_started_total{trigger="operator"}, and the
// daemon's shutdown line gives its deadline as a duration.
func TestShippedACL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	b := startBroker(t)

	// Keys: a local root key, a file registry, two devices.
	dir := t.TempDir()
	rootKey := filepath.Join(dir, "root-key.json")
	lp, err := local.Create(rootKey, "acl-root")
	if err != nil {
		t.Fatal(err)
	}
	regPath := filepath.Join(dir, "registry.json")
	store, err := filestore.Open(ctx, regPath, filestore.WithoutFSNotify())
	if err != nil {
		t.Fatal(err)
	}
	aw, err := audit.Open(ctx, filepath.Join(dir, "dekctl-audit.log"), audit.WithActor("dekctl"))
	if err != nil {
		t.Fatal(err)
	}
	ops, err := keyops.New(keyops.Options{KMS: lp, Roots: lp, Registry: store, Audit: aw, Operator: "acl-test"})
	if err != nil {
		t.Fatal(err)
	}
	devs := map[string]*device{}
	for _, id := range []string{"dev-a", "dev-b"} {
		cred, err := ops.Provision(ctx, keyops.ProvisionRequest{DeviceID: id})
		if err != nil {
			t.Fatal(err)
		}
		a, err := seal.NewAEAD(cred.DEK)
		cred.Wipe()
		if err != nil {
			t.Fatal(err)
		}
		devs[id] = &device{id: id, version: cred.KeyVersion, aead: a}
	}
	store.Close()
	aw.Close()

	// No certificate, no connection (mutual TLS only, no anonymous
	// clients, no plain listener).
	{
		o := mqtt.NewClientOptions().AddBroker(b.url).SetClientID("anonymous").SetAutoReconnect(false).
			SetConnectTimeout(5 * time.Second).
			SetTLSConfig(&tls.Config{RootCAs: b.ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
			c.Disconnect(0)
			t.Fatal("a client without a certificate connected")
		}
	}

	// The devices connect first, so that they are subscribed before any
	// rekey is published.
	a := b.connect(t, "dev-a")
	bb := b.connect(t, "dev-b")
	if code := a.subscribe(t, cmdTopic("dev-a")); code > 2 {
		t.Fatalf("dev-a may not subscribe to its own command topic: SUBACK %#x", code)
	}
	if code := bb.subscribe(t, cmdTopic("dev-b")); code > 2 {
		t.Fatalf("dev-b may not subscribe to its own command topic: SUBACK %#x", code)
	}
	// Whatever the SUBACK says, A must receive nothing on these.
	a.subscribe(t, cmdTopic("dev-b"))
	a.subscribe(t, evtTopic("dev-b"))
	a.subscribe(t, "iot-2/type/+/id/+/cmd/+/fmt/+")
	a.subscribe(t, "#")
	// A client with decryptd's identity reads no command topic.
	svc := b.connect(t, "decryptd")
	svc.subscribe(t, "iot-2/type/+/id/+/cmd/+/fmt/+")

	// decryptd, configured as deploy/kubernetes does (shared group
	// decryptd), with rotation on.
	certs, err := b.ca.IssueClient("decryptd")
	if err != nil {
		t.Fatal(err)
	}
	records := filepath.Join(dir, "records.jsonl")
	deadLetters := filepath.Join(dir, "dead-letter.jsonl")
	cfgText := fmt.Sprintf(`mqtt:
  brokers: [%q]
  client_id: decryptd-0
  topics: [iot-2/type/+/id/+/evt/+/fmt/+]
  shared_group: decryptd
  tls: {ca_file: %q, cert_file: %q, key_file: %q, server_name: 127.0.0.1}
kms: {provider: local, local: {root_key_file: %q}}
registry: {driver: file, path: %q}
sinks: [{name: records, type: file, path: %q}]
dead_letter: {type: file, path: %q}
metrics: {listen: "127.0.0.1:0"}
audit: {path: %q}
rotation: {enabled: true, tick: 200ms, retry_interval: 1h, device_type: monitor, rotate_root_key: false}
`, b.url, certs.CA, certs.Cert, certs.Key, rootKey, regPath, records, deadLetters, filepath.Join(dir, "audit.log"))
	cfg, err := config.Parse([]byte(cfgText), nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	dctx, stop := context.WithCancel(ctx)
	obs, logs := observer.New(zap.InfoLevel)
	log := zap.New(zapcore.NewTee(obs, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Core()))
	d, err := daemon.New(dctx, daemon.Options{Config: cfg, Logger: log, Registry: reg, Version: "acl-test"})
	if err != nil {
		stop()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(dctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
		// The shutdown line gives its deadline as a duration, and a clean
		// stop with rotation on reports no error.
		l := logs.FilterMessage("shutting down").All()
		if len(l) != 1 || l[0].ContextMap()["deadline"] != "30s" {
			t.Errorf("shutting down lines %v, want one with deadline \"30s\"", l)
		}
		if n := logs.FilterMessage("stopped with errors").Len(); n != 0 {
			t.Errorf("stopped with errors: %v", logs.FilterMessage("stopped with errors").All())
		}
	}()
	wait.Within(t, 20*time.Second, "decryptd ready (connected and subscribed)", func() bool {
		resp, err := http.Get("http://" + d.Addr().String() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	// 1. A publishes a message on B's event topic (sealed under its own
	// key: decryptd would dead-letter it as topic_mismatch), then on B's
	// command topic (a forged rekey), then one on its own event topic.
	// The broker drops the first two; decryptd receives exactly the third.
	a.publish(t, evtTopic("dev-b"), devs["dev-a"].message(t, 0))
	svc.publish(t, evtTopic("dev-a"), devs["dev-a"].message(t, 100)) // decryptd's identity publishes no event
	a.publish(t, cmdTopic("dev-b"), []byte(`{"type":"rekey","forged":true}`))
	a.publish(t, evtTopic("dev-a"), devs["dev-a"].message(t, 1))
	wait.Within(t, 20*time.Second, "A's record", func() bool { return len(readRecords(t, records)) == 1 })
	if r := readRecords(t, records)[0]; r.DeviceID != "dev-a" || r.KeyVersion != "v1" {
		t.Fatalf("record %+v, want dev-a v1", r)
	}
	if n := counter(t, reg, "decryptd_mqtt_messages_received_total"); n != 1 {
		t.Fatalf("decryptd received %v messages, want 1 (A's own): the broker let A publish on B's topic", n)
	}
	if dl := must(os.ReadFile(deadLetters)); len(dl) != 0 {
		t.Fatalf("dead letters: %s", dl)
	}

	// 2. An operator rotates both keys; decryptd publishes both rekeys.
	ops2 := reopenOps(ctx, t, rootKey, regPath, filepath.Join(dir, "dekctl-audit.log"))
	for _, id := range []string{"dev-a", "dev-b"} {
		if _, created, err := ops2.RotateKey(ctx, dek.DeviceKeyID(id), "acl test"); err != nil || !created {
			t.Fatalf("rotate %s: %v %v", id, created, err)
		}
	}
	wait.Within(t, 20*time.Second, "both rekeys delivered", func() bool {
		return len(a.messages(cmdTopic("dev-a"))) == 1 && len(bb.messages(cmdTopic("dev-b"))) == 1
	})
	// The two operator rotations are counted as such, once each.
	if n := metrictest.Value(t, reg, "decryptd_rotation_started_total", "trigger", "operator"); n != 2 {
		t.Fatalf("decryptd_rotation_started_total{trigger=operator} = %v after two operator rotations, want 2", n)
	}
	// B got decryptd's rekey and nothing else (not A's forgery).
	if m, err := rekey.Parse(bb.messages(cmdTopic("dev-b"))[0]); err != nil || m.DeviceID != "dev-b" {
		t.Fatalf("dev-b's command topic carried %q (%v), want its rekey only", bb.messages(cmdTopic("dev-b"))[0], err)
	}
	// A opens its rekey and adopts: its next message, under v2, arrives.
	m, err := rekey.Parse(a.messages(cmdTopic("dev-a"))[0])
	if err != nil {
		t.Fatal(err)
	}
	k, err := m.Open(devs["dev-a"].aead)
	if err != nil {
		t.Fatalf("dev-a cannot open its rekey: %v", err)
	}
	na, err := seal.NewAEAD(k)
	clear(k)
	if err != nil {
		t.Fatal(err)
	}
	devs["dev-a"].aead, devs["dev-a"].version = na, m.NewVersion
	a.publish(t, evtTopic("dev-a"), devs["dev-a"].message(t, 2))
	wait.Within(t, 20*time.Second, "A's record under the new version", func() bool { return len(readRecords(t, records)) == 2 })
	if r := readRecords(t, records)[1]; r.DeviceID != "dev-a" || r.KeyVersion != m.NewVersion {
		t.Fatalf("record %+v, want dev-a %s", r, m.NewVersion)
	}

	// 3. Through all of it A received its own rekey and nothing else: not
	// B's rekey, not B's events, not its own events echoed by "#".
	time.Sleep(500 * time.Millisecond)
	if n := a.total(); n != 1 {
		a.mu.Lock()
		t.Fatalf("dev-a received %d messages, want only its rekey: %v", n, keys(a.got))
	}
	if n := svc.total(); n != 0 {
		t.Fatalf("a client with decryptd's identity read %d command messages", n)
	}
}

func keys(m map[string][][]byte) []string {
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("%s (%d)", k, len(v)))
	}
	return out
}

func must(b []byte, err error) []byte {
	if err != nil && !os.IsNotExist(err) {
		panic(err)
	}
	return b
}

func reopenOps(ctx context.Context, t *testing.T, rootKey, regPath, auditPath string) *keyops.Ops {
	t.Helper()
	lp, err := local.Open(rootKey)
	if err != nil {
		t.Fatal(err)
	}
	store, err := filestore.Open(ctx, regPath, filestore.WithoutFSNotify())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	aw, err := audit.Open(ctx, auditPath, audit.WithActor("dekctl"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { aw.Close() })
	ops, err := keyops.New(keyops.Options{KMS: lp, Roots: lp, Registry: store, Audit: aw, Operator: "acl-test"})
	if err != nil {
		t.Fatal(err)
	}
	return ops
}
