package deploytest

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/util/teststorage"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/rekey"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

// scrape is one /metrics response of the live daemon.
type scrape struct {
	at   time.Time
	body []byte
}

// liveRun is what one run of a real daemon left: its scrapes (one a
// scrapeEvery, the last one after everything happened) and a TSDB holding
// them as Prometheus would have stored them (job="decryptd",
// instance="decryptd-N" for each replica scraped, plus up); scrapes are
// decryptd-0's.
type liveRun struct {
	scrapes []scrape
	store   *teststorage.TestStorage
	start   time.Time
	end     time.Time
}

func (r *liveRun) last() []byte { return r.scrapes[len(r.scrapes)-1].body }

// The run: long enough for several rate windows of scrapeEvery.
const (
	scrapeEvery = time.Second
	runFor      = 40 * time.Second
	// rotationAfter: when the devices' keys come due, from provisioning.
	rotationAfter = 10 * time.Second
)

// runDaemon runs the daemon for runFor: real Mosquitto with mutual TLS,
// the local KMS, a file registry, rotation on under a policy shortened to
// seconds. Devices whose keys come due under a one-hour max age rotationAfter into the run
// get rekeys on their command topic, install them and adopt (one device
// never listens: a pending rotation, then a straggler); superseded
// versions go decrypt_only and are revoked after a three-second grace;
// good messages flow all along, bad ones are dead-lettered (auth_failed,
// unknown_key, key_revoked, topic_mismatch, malformed) and an exact repeat
// is counted as a duplicate. Prometheus's part is played by a scrape of
// /metrics every scrapeEvery into a TSDB.
func runDaemon(t *testing.T) *liveRun {
	t.Helper()
	ft := t
	b := mosquittotest.Start(t, mosquittotest.Options{})
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), runFor+60*time.Second)
	defer cancel()

	// The keys become due (one hour old under a max age of one hour) a few
	// seconds into the run, so the scrapes see the rotations start.
	born := time.Now().Add(-time.Hour + rotationAfter)
	ops, aw, regPath := openKeys(ctx, ft, dir, func() time.Time { return born })
	var err error

	// Devices: four that follow rekeys, one that never listens, one whose
	// key is revoked.
	var devs []*device
	for i := range 5 {
		devs = append(devs, provisionDevice(ctx, ft, ops, fmt.Sprintf("pump-%d", i+1)))
	}
	revoked := provisionDevice(ctx, ft, ops, "pump-revoked")
	_, err = ops.Revoke(ctx, keyops.Selector{DeviceID: revoked.id})
	check(ft, err)
	aw.Close()

	// The fleet's connection: listens to the command topics of the first
	// four devices.
	fc := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.SSLURL).SetClientID("fleet").
		SetTLSConfig(b.ClientTLS("fleet")).SetCleanSession(true).SetConnectTimeout(10 * time.Second))
	if tok := fc.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		ft.Fatalf("fleet connect: %v", tok.Error())
	}
	defer fc.Disconnect(100)
	for _, d := range devs[:4] {
		cmd := rekey.Topic(config.DefaultCommandTopic, "monitor", d.id)
		if tok := fc.Subscribe(cmd, 2, d.onRekey); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			ft.Fatalf("subscribe %s: %v", cmd, tok.Error())
		}
	}
	publish := func(topic string, payload []byte) {
		if tok := fc.Publish(topic, 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			ft.Fatalf("publish: %v", tok.Error())
		}
	}

	// The configuration as an operator writes it (YAML, not Go structs:
	// the file format is the contract).
	client := b.ClientCert("decryptd")
	yml := fmt.Sprintf(`
mqtt:
  brokers: [%q]
  client_id: decryptd-0
  topics: [iot-2/type/+/id/+/evt/+/fmt/+]
  shared_group: decryptd
  keep_alive: 5s
  tls: {ca_file: %q, cert_file: %q, key_file: %q}
kms:
  provider: local
  local: {root_key_file: %q}
registry: {driver: file, path: %q}
sinks:
  - {name: records, type: file, path: %q, fsync: true}
dead_letter: {type: file, path: %q, fsync: true}
metrics: {listen: "127.0.0.1:0"}
audit: {path: %q}
spool: {dir: %q}
shutdown_timeout: 10s
rotation:
  enabled: true
  max_dek_age: 1h
  grace_period: 3s
  share_per_day: 1
  retry_interval: 5s
  pause_threshold: 0.9
  pause_min_sample: 20
  device_type: monitor
  rotate_root_key: false
  tick: 200ms
  flush_interval: 500ms
`, b.SSLURL, client.CA, client.Cert, client.Key, filepath.Join(dir, "root-key.json"), regPath,
		filepath.Join(dir, "records.jsonl"), filepath.Join(dir, "dead-letter.jsonl"), filepath.Join(dir, "audit.log"), filepath.Join(dir, "spool"))
	cfg, err := config.Parse([]byte(yml), nil)
	if err != nil {
		t.Fatalf("configuration: %v\n%s", err, yml)
	}

	reg := prometheus.NewRegistry()
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	d, err := daemon.New(dctx, daemon.Options{Config: cfg, Registry: reg, Version: "deploytest"})
	check(ft, err)
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(dctx) }()
	defer func() {
		stop()
		select {
		case err := <-runErr:
			check(ft, err)
		case <-time.After(30 * time.Second):
			ft.Fatalf("daemon did not stop within 30 s")
		}
	}()
	for deadline := time.Now().Add(15 * time.Second); !d.Ready(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			ft.Fatalf("daemon not ready within 15 s")
		}
	}
	url := "http://" + d.Addr().String() + "/metrics"

	run := &liveRun{store: teststorage.New(t), start: time.Now()}
	t.Cleanup(func() { run.store.Close() })
	tg := &target{store: run.store, instance: "decryptd-0"}
	scrapeNow := func() {
		body := get(ft, url)
		at := time.Now()
		run.scrapes = append(run.scrapes, scrape{at: at, body: body})
		check(ft, tg.appendScrape(at, body))
	}

	wrong, err := seal.NewAEAD(make([]byte, 32))
	check(ft, err)
	ghost := &device{id: "ghost-1", keys: map[string]cipher.AEAD{"v1": wrong}, current: "v1"}
	var replayed []byte
	seq := 0
	next := time.Now()
	for tick := 0; time.Since(run.start) < runFor; tick++ {
		// Good messages: every device, under its newest version; the
		// straggler keeps sending under v1.
		for _, dv := range devs {
			publish(topicOf(dv.id), dv.seal(ft, "", seq))
			seq++
		}
		// A late message under v1 from a device that adopted v2 (within
		// its grace period it decrypts; after, it is key_revoked).
		if tick%5 == 2 {
			publish(topicOf(devs[0].id), devs[0].seal(ft, "v1", seq))
		}
		// One bad message a tick, in turn.
		switch tick % 6 {
		case 0:
			cur := devs[1].currentVersion()
			tampered := &device{id: devs[1].id, keys: map[string]cipher.AEAD{cur: wrong}, current: cur}
			publish(topicOf(devs[1].id), tampered.seal(ft, "", seq)) // auth_failed
		case 1:
			publish(topicOf(ghost.id), ghost.seal(ft, "", seq)) // unknown_key
		case 2:
			publish(topicOf(revoked.id), revoked.seal(ft, "", seq)) // key_revoked
		case 3:
			publish(topicOf(devs[2].id), devs[3].seal(ft, "", seq)) // topic_mismatch
		case 4:
			publish(topicOf(devs[2].id), []byte(`{"not":"an envelope"}`)) // malformed
		case 5:
			if replayed == nil {
				replayed = devs[4].seal(ft, "", seq)
			}
			publish(topicOf(devs[4].id), replayed) // the same message again: a duplicate (cause repeat)
		}
		if time.Now().After(next) {
			scrapeNow()
			next = next.Add(scrapeEvery)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Let the last messages finish and the rotation gauges catch up.
	time.Sleep(2 * time.Second)
	scrapeNow()
	run.end = time.Now()
	for _, dv := range devs[:4] {
		if dv.currentVersion() == "v1" {
			ft.Errorf("device %s never got its rekey", dv.id)
		}
	}
	return run
}

func get(ft *testing.T, url string) []byte {
	resp, err := http.Get(url)
	check(ft, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	check(ft, err)
	if resp.StatusCode != http.StatusOK {
		ft.Fatalf("GET %s: %s", url, resp.Status)
	}
	return body
}

// target is one scraped replica: its instance label, and the series its
// last scrape held (for staleness markers).
type target struct {
	store    *teststorage.TestStorage
	instance string
	last     map[string]labels.Labels
}

// appendScrape stores one exposition as Prometheus's scrape loop would:
// every sample with the target's labels (job decryptd, instance),
// histograms as _bucket, _sum and _count series, up 1, and a staleness
// marker for each series the previous scrape held and this one does not
// (a Kafka partition's lag after it moved to another replica ends there,
// not five minutes of lookback later).
func (tg *target) appendScrape(at time.Time, body []byte) error {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return err
	}
	app := tg.store.Appender(context.Background())
	ts := at.UnixMilli()
	cur := map[string]labels.Labels{}
	add := func(name string, m *dto.Metric, v float64, extra ...string) error {
		b := labels.NewBuilder(labels.FromStrings("__name__", name, "job", "decryptd", "instance", tg.instance))
		for _, l := range m.GetLabel() {
			b.Set(l.GetName(), l.GetValue())
		}
		for i := 0; i+1 < len(extra); i += 2 {
			b.Set(extra[i], extra[i+1])
		}
		ls := b.Labels()
		cur[ls.String()] = ls
		_, err := app.Append(0, ls, ts, v)
		return err
	}
	if _, err := app.Append(0, labels.FromStrings("__name__", "up", "job", "decryptd", "instance", tg.instance), ts, 1); err != nil {
		return err
	}

	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var err error
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				err = add(name, m, m.GetCounter().GetValue())
			case dto.MetricType_GAUGE:
				err = add(name, m, m.GetGauge().GetValue())
			case dto.MetricType_UNTYPED:
				err = add(name, m, m.GetUntyped().GetValue())
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				for _, bk := range h.GetBucket() {
					if err = add(name+"_bucket", m, float64(bk.GetCumulativeCount()), "le", strconv.FormatFloat(bk.GetUpperBound(), 'g', -1, 64)); err != nil {
						return err
					}
				}
				if err = add(name+"_bucket", m, float64(h.GetSampleCount()), "le", "+Inf"); err != nil {
					return err
				}
				if err = add(name+"_sum", m, h.GetSampleSum()); err != nil {
					return err
				}
				err = add(name+"_count", m, float64(h.GetSampleCount()))
			case dto.MetricType_SUMMARY:
				s := m.GetSummary()
				if err = add(name+"_sum", m, s.GetSampleSum()); err != nil {
					return err
				}
				err = add(name+"_count", m, float64(s.GetSampleCount()))
			}
			if err != nil {
				return err
			}
		}
	}
	for k, ls := range tg.last {
		if _, ok := cur[k]; !ok {
			if _, err := app.Append(0, ls, ts, math.Float64frombits(value.StaleNaN)); err != nil {
				return err
			}
		}
	}
	tg.last = cur
	return app.Commit()
}

// exposed lists the series names a scrape holds (histograms as their
// _bucket, _sum and _count) with the label names each carries.
func exposed(t *testing.T, body []byte) map[string]map[string]bool {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]bool{}
	put := func(name string, m *dto.Metric, extra ...string) {
		if out[name] == nil {
			out[name] = map[string]bool{}
		}
		for _, l := range m.GetLabel() {
			out[name][l.GetName()] = true
		}
		for _, e := range extra {
			out[name][e] = true
		}
	}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetType() {
			case dto.MetricType_HISTOGRAM:
				put(name+"_bucket", m, "le")
				put(name+"_sum", m)
				put(name+"_count", m)
			case dto.MetricType_SUMMARY:
				put(name, m, "quantile")
				put(name+"_sum", m)
				put(name+"_count", m)
			default:
				put(name, m)
			}
		}
	}
	return out
}

func names(m map[string]map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func topicOf(id string) string { return "iot-2/type/monitor/id/" + id + "/evt/telemetry/fmt/json" }

// device implements docs/rekey-v1.md on the device side: it keeps every
// version it was given and seals under the newest.
type device struct {
	id      string
	mu      sync.Mutex
	keys    map[string]cipher.AEAD
	current string
}

// openKeys is what dekctl holds for a live run in dir: a local root key
// (root-key.json), a file registry (registry.json, whose path it returns,
// closed with the test) and dekctl's audit log, which the caller closes
// once the fleet is provisioned. now is keyops' clock (nil: time.Now).
func openKeys(ctx context.Context, ft *testing.T, dir string, now func() time.Time) (*keyops.Ops, *audit.Writer, string) {
	lp, err := local.Create(filepath.Join(dir, "root-key.json"), "deploytest-root")
	check(ft, err)
	regPath := filepath.Join(dir, "registry.json")
	store, err := filestore.Open(ctx, regPath, filestore.WithoutFSNotify())
	check(ft, err)
	ft.Cleanup(func() { store.Close() })
	aw, err := audit.Open(ctx, filepath.Join(dir, "dekctl-audit.log"), audit.WithActor("dekctl"))
	check(ft, err)
	ops, err := keyops.New(keyops.Options{KMS: lp, Roots: lp, Registry: store, Audit: aw, Now: now})
	check(ft, err)
	return ops, aw, regPath
}

func provisionDevice(ctx context.Context, ft *testing.T, ops *keyops.Ops, id string) *device {
	cred, err := ops.Provision(ctx, keyops.ProvisionRequest{DeviceID: id})
	check(ft, err)
	a, err := seal.NewAEAD(cred.DEK)
	cred.Wipe()
	check(ft, err)
	return &device{id: id, keys: map[string]cipher.AEAD{cred.KeyVersion: a}, current: cred.KeyVersion}
}

func (d *device) onRekey(_ mqtt.Client, m mqtt.Message) {
	msg, err := rekey.Parse(m.Payload())
	if err != nil || msg.DeviceID != d.id || msg.KeyID != dek.DeviceKeyID(d.id) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, have := d.keys[msg.NewVersion]; have {
		return
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
}

func (d *device) currentVersion() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.current
}

// seal makes one shape A message under version (the newest if "").
func (d *device) seal(ft *testing.T, version string, seq int) []byte {
	d.mu.Lock()
	if version == "" {
		version = d.current
	}
	a := d.keys[version]
	d.mu.Unlock()
	p, err := seal.New(rand.Reader).AppendShapeA(nil, a, seal.Envelope{DeviceID: d.id, Timestamp: time.Now().Unix(), KeyVersion: version},
		fmt.Appendf(nil, `{"seq":%d}`, seq), nil)
	check(ft, err)
	return p
}

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
