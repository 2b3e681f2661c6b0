package demo

import (
	"context"
	"crypto/cipher"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/fieldpolicy"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/pki"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/sink"
)

// Options configure a demo run. The zero value works.
type Options struct {
	Stdout io.Writer // records and the summary (default os.Stdout)
	Stderr io.Writer // the daemon's log (default os.Stderr)
	// Listen is the metrics listener (default 127.0.0.1:0: a free port).
	Listen  string
	Version string
	// Dir is the working folder (keys, registry, records, dead letters,
	// audit log). Empty: a temporary folder, removed at the end.
	Dir string
	// Interval is the fleet's pace: every device sends one reading, and
	// one bad message is sent, per Interval (default 250ms).
	Interval time.Duration
	// LogLevel of the daemon's log (default info).
	LogLevel zapcore.Level
}

// Summary is what the demo saw, read from the daemon's metrics at the end.
type Summary struct {
	MetricsURL   string
	Dir          string
	Published    int            // good messages the fleet sent
	BadPublished map[string]int // bad messages sent, by the reason expected
	Delivered    int            // records the file sink holds
	DeadLettered int
	Failures     map[string]int // decrypt failures by reason
	Duplicates   int
	KMSUnwraps   int
	// Rotation shown live: rekeys the daemon sent, versions adopted, and
	// records delivered under the rotated device's new version.
	RekeysSent       int
	Adoptions        int
	RotatedDevice    string
	RotatedRecords   int // records of RotatedDevice under its new version
	RotatedToVersion string
	// One record as the care sink holds it and as the analytics sink holds
	// it (same record id), to show what the analytics policy removes.
	CareSample, AnalyticsSample string

	temporary bool // Dir is removed when Run returns
}

// Run runs the demo until ctx ends, then stops it cleanly and returns the
// summary (also printed).
func Run(ctx context.Context, o Options) (Summary, error) {
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	if o.Interval <= 0 {
		o.Interval = 250 * time.Millisecond
	}
	dir := o.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "decryptd-demo-")
		if err != nil {
			return Summary{}, err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return Summary{}, err
	}
	// Setting up must not be cut short by a Ctrl-C racing it half way; a
	// bounded context keeps a stuck step from hanging.
	setup, cancelSetup := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancelSetup()

	// Certificates: one CA, the broker, the daemon, the fleet.
	ca, err := pki.NewCA(filepath.Join(dir, "pki"), "decryptd demo CA")
	if err != nil {
		return Summary{}, err
	}
	brokerFiles, err := ca.IssueServer("broker")
	if err != nil {
		return Summary{}, err
	}
	daemonFiles, err := ca.IssueClient("decryptd")
	if err != nil {
		return Summary{}, err
	}
	fleetFiles, err := ca.IssueClient("fleet")
	if err != nil {
		return Summary{}, err
	}

	broker, brokerURL, err := startBroker(brokerFiles)
	if err != nil {
		return Summary{}, err
	}
	defer broker.Close()

	devs, err := provision(setup, dir)
	if err != nil {
		return Summary{}, fmt.Errorf("provision: %w", err)
	}

	cfg, err := daemonConfig(dir, brokerURL, daemonFiles, o.Listen)
	if err != nil {
		return Summary{}, err
	}
	reg := prometheus.NewRegistry()
	log := zap.New(zapcore.NewCore(consoleEncoder(), zapcore.AddSync(o.Stderr), o.LogLevel))
	d, err := daemon.New(setup, daemon.Options{Config: cfg, Logger: log, Registry: reg, Version: o.Version, Stdout: o.Stdout})
	if err != nil {
		return Summary{}, err
	}
	// The daemon outlives ctx: when ctx ends the fleet stops first and what
	// it sent is drained before the daemon shuts down.
	dctx, stopDaemon := context.WithCancel(context.WithoutCancel(ctx))
	defer stopDaemon()
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(dctx) }()

	sum := Summary{MetricsURL: "http://" + d.Addr().String() + "/metrics", Dir: dir, temporary: o.Dir == ""}
	fmt.Fprintf(o.Stdout, "decryptd demo: broker %s (mutual TLS), working folder %s\n", brokerURL, dir)
	fmt.Fprintf(o.Stdout, "metrics: %s  (also /healthz, /readyz)\n", sum.MetricsURL)

	if err := waitReady(ctx, d); err != nil {
		stopDaemon()
		return sum, errors.Join(err, <-runErr)
	}
	fmt.Fprintln(o.Stdout, "daemon ready; the fleet starts sending (records below: device, key version, decrypted data)")
	fmt.Fprintf(o.Stdout, "care records: %s; analytics records (patient id pseudonymized, notes and metadata dropped, other encrypted fields dropped): %s\n",
		filepath.Join(dir, "records.jsonl"), filepath.Join(dir, "analytics.jsonl"))

	tlsc, err := pki.ClientConfig(fleetFiles, "localhost")
	if err != nil {
		stopDaemon()
		return sum, errors.Join(err, <-runErr)
	}
	f, err := newFleet(setup, brokerURL, tlsc, devs, o.Stdout)
	if err != nil {
		stopDaemon()
		return sum, errors.Join(err, <-runErr)
	}
	// A rotation, live: after ten rounds the demo rotates one device's key
	// as an operator would (`dekctl rotate --device monitor-001`); the
	// daemon's rotation controller sends the rekey, the device installs
	// the new version and seals under it, and its next record adopts it.
	rotated := make(chan string, 1)
	go func() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * o.Interval):
		}
		v, err := rotateAsOperator(setup, dir, rotatedDevice)
		if err != nil {
			fmt.Fprintf(o.Stdout, "demo: rotating %s failed: %v\n", rotatedDevice, err)
			return
		}
		rotated <- v
		fmt.Fprintf(o.Stdout, "demo: rotating %s's key now, as `dekctl rotate --device %s` would: %s created, pending; the daemon sends the rekey\n",
			rotatedDevice, rotatedDevice, v)
	}()
	f.run(ctx, o.Interval)
	f.close()
	select {
	case v := <-rotated:
		sum.RotatedDevice, sum.RotatedToVersion = rotatedDevice, v
		sum.RotatedRecords = f.recordsUnder(rotatedDevice, v)
	default:
	}

	// Drain: wait until the daemon has finished every message sent.
	sent := f.good + f.badTotal()
	deadline := time.Now().Add(10 * time.Second)
	for gatherSum(reg, "decryptd_messages_processed_total") < float64(sent) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	stopDaemon()
	err = <-runErr

	sum.Published, sum.BadPublished = f.good, f.bad
	sum.Delivered = int(gather(reg, "decryptd_records_delivered_total", "sink", "records"))
	sum.DeadLettered = int(gather(reg, "decryptd_records_delivered_total", "sink", daemon.DeadLetterSinkName))
	sum.Duplicates = int(gather(reg, "decryptd_duplicates_total"))
	sum.KMSUnwraps = int(gather(reg, "decryptd_kms_requests_total", "operation", "unwrap"))
	sum.RekeysSent = int(gather(reg, "decryptd_rotation_rekeys_sent_total"))
	sum.Adoptions = int(gather(reg, "decryptd_rotation_adoptions_total"))
	sum.Failures = map[string]int{}
	for _, r := range decrypt.Reasons() {
		sum.Failures[r] = int(gather(reg, "decryptd_decrypt_failures_total", "reason", r))
	}
	sum.CareSample, sum.AnalyticsSample = samplePair(filepath.Join(dir, "records.jsonl"), filepath.Join(dir, "analytics.jsonl"))
	printSummary(o.Stdout, sum)
	return sum, err
}

// samplePair finds the first care record that carries notes and the
// analytics sink's record with the same id ("" when there is none).
func samplePair(carePath, analyticsPath string) (care, analytics string) {
	byID := func(path string) (map[string]string, []string) {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, nil
		}
		m := map[string]string{}
		var order []string
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var r struct {
				ID string `json:"id"`
			}
			if json.Unmarshal([]byte(line), &r) == nil && r.ID != "" {
				m[r.ID] = line
				order = append(order, r.ID)
			}
		}
		return m, order
	}
	cares, order := byID(carePath)
	an, _ := byID(analyticsPath)
	for _, id := range order {
		if a, ok := an[id]; ok && strings.Contains(cares[id], `"notes"`) {
			return cares[id], a
		}
	}
	return "", ""
}

func consoleEncoder() zapcore.Encoder {
	ec := zap.NewDevelopmentEncoderConfig()
	ec.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
	return zapcore.NewConsoleEncoder(ec)
}

// startBroker runs mochi-mqtt with one TLS listener on a free loopback
// port that requires a client certificate from the demo CA.
func startBroker(files pki.Files) (*mochi.Server, string, error) {
	tc, err := pki.ServerConfig(files)
	if err != nil {
		return nil, "", err
	}
	s := mochi.New(&mochi.Options{
		InlineClient: false,
		Logger:       slog.New(slog.DiscardHandler),
	})
	if err := s.AddHook(new(allowHook), nil); err != nil {
		return nil, "", err
	}
	l := listeners.NewTCP(listeners.Config{ID: "tls", Address: "127.0.0.1:0", TLSConfig: tc})
	if err := s.AddListener(l); err != nil {
		return nil, "", fmt.Errorf("broker: %w", err)
	}
	if err := s.Serve(); err != nil {
		return nil, "", fmt.Errorf("broker: %w", err)
	}
	return s, "ssl://" + l.Address(), nil
}

// allowHook lets every client in and everywhere: the TLS listener already
// refused any client without a certificate from the demo CA, which is the
// authentication. (mochi's own auth hooks pull in a YAML module the project
// does not otherwise need.)
type allowHook struct{ mochi.HookBase }

func (h *allowHook) ID() string { return "demo-allow-certified" }

func (h *allowHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (h *allowHook) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (h *allowHook) OnACLCheck(*mochi.Client, string, bool) bool { return true }

// device is one simulated device and the cipher it seals with.
type device struct {
	mu      sync.Mutex // the fleet's sender and its rekey handler
	id      string
	keyID   string // empty: its own key (not written in messages)
	version string
	aead    cipher.AEAD
	shapeB  bool
	millis  bool // timestamps in milliseconds
}

// provision makes the root key, and through keyops (as dekctl does) the
// devices' keys: three with keys of their own, two on the group key
// group/icu-monitors, and one whose key is then revoked.
func provision(ctx context.Context, dir string) ([]*device, error) {
	lp, err := local.Create(filepath.Join(dir, "root-key.json"), "demo-root")
	if err != nil {
		return nil, err
	}
	store, err := filestore.Open(ctx, filepath.Join(dir, "registry.json"), filestore.WithoutFSNotify())
	if err != nil {
		return nil, err
	}
	defer store.Close()
	aw, err := audit.Open(ctx, filepath.Join(dir, "audit.log"), audit.WithActor("dekctl"))
	if err != nil {
		return nil, err
	}
	defer aw.Close()
	ops, err := keyops.New(keyops.Options{KMS: lp, Roots: lp, Registry: store, Audit: aw, Operator: "demo"})
	if err != nil {
		return nil, err
	}
	// The analytics sink's pseudonymization key (dekctl pseudonym rotate).
	if _, err := ops.RotatePseudonymKey(ctx, "analytics"); err != nil {
		return nil, err
	}
	specs := []struct {
		id, group   string
		shapeB      bool
		millis      bool
		revokeAfter bool
	}{
		{id: "monitor-001"},
		{id: "monitor-002", shapeB: true},
		{id: "monitor-003", millis: true},
		{id: "bed-12", group: "icu-monitors", shapeB: true},
		{id: "bed-14", group: "icu-monitors"},
		{id: "monitor-099", revokeAfter: true},
	}
	var devs []*device
	for _, s := range specs {
		cred, err := ops.Provision(ctx, keyops.ProvisionRequest{DeviceID: s.id, Group: s.group})
		if err != nil {
			return nil, err
		}
		aead, err := seal.NewAEAD(cred.DEK)
		cred.Wipe()
		if err != nil {
			return nil, err
		}
		d := &device{id: s.id, version: cred.KeyVersion, aead: aead, shapeB: s.shapeB, millis: s.millis}
		if s.group != "" {
			d.keyID = cred.KeyID
		}
		if s.revokeAfter {
			if _, err := ops.Revoke(ctx, keyops.Selector{DeviceID: s.id}); err != nil {
				return nil, err
			}
		}
		devs = append(devs, d)
	}
	return devs, nil
}

// rotatedDevice is the device whose key the demo rotates.
const rotatedDevice = "monitor-001"

// rotateAsOperator starts a rotation of deviceID's key exactly as `dekctl
// rotate --device ID` does (keyops, the same registry, KMS and audit log
// as the running daemon) and returns the new version.
func rotateAsOperator(ctx context.Context, dir, deviceID string) (string, error) {
	lp, err := local.Open(filepath.Join(dir, "root-key.json"))
	if err != nil {
		return "", err
	}
	store, err := filestore.Open(ctx, filepath.Join(dir, "registry.json"), filestore.WithoutFSNotify())
	if err != nil {
		return "", err
	}
	defer store.Close()
	aw, err := audit.Open(ctx, filepath.Join(dir, "audit.log"), audit.WithActor("dekctl"))
	if err != nil {
		return "", err
	}
	defer aw.Close()
	ops, err := keyops.New(keyops.Options{KMS: lp, Roots: lp, Registry: store, Audit: aw, Operator: "demo"})
	if err != nil {
		return "", err
	}
	e, _, err := ops.RotateKey(ctx, "device/"+deviceID, "demo")
	if err != nil {
		return "", err
	}
	return e.Version, nil
}

func daemonConfig(dir, brokerURL string, files pki.Files, listen string) (*config.Config, error) {
	on := true
	cfg := config.Default()
	cfg.MQTT.Brokers = []string{brokerURL}
	cfg.MQTT.ClientID = "decryptd-demo"
	cfg.MQTT.Topics = []string{"iot-2/type/+/id/+/evt/+/fmt/+"}
	cfg.MQTT.SharedGroup = "decryptd"
	cfg.MQTT.TLS = config.TLS{CAFile: files.CA, CertFile: files.Cert, KeyFile: files.Key, ServerName: "localhost"}
	cfg.MQTT.KeepAlive = 10 * time.Second
	cfg.MQTT.Workers = 8
	cfg.KMS = config.KMS{Provider: config.ProviderLocal, Local: config.LocalKMS{RootKeyFile: filepath.Join(dir, "root-key.json")}}
	cfg.Registry = config.Registry{Driver: config.DriverFile, Path: filepath.Join(dir, "registry.json")}
	cfg.Sinks = []config.Sink{
		{Name: "console", Type: "stdout", Config: &sink.StdoutConfig{Format: "pretty"}},
		{Name: "records", Type: config.SinkFile, Config: &sink.FileConfig{Path: filepath.Join(dir, "records.jsonl"),
			MaxBytes: config.DefaultSinkMaxBytes, Keep: config.DefaultSinkKeep, Fsync: &on}},
		// The analytics side gets the minimum necessary: see analyticsPolicy.
		{Name: "analytics", Type: config.SinkFile, Policy: analyticsPolicy(), Config: &sink.FileConfig{Path: filepath.Join(dir, "analytics.jsonl"),
			MaxBytes: config.DefaultSinkMaxBytes, Keep: config.DefaultSinkKeep, Fsync: &on}},
	}
	cfg.DeadLetter = config.DeadLetter{Type: config.SinkFile, Path: filepath.Join(dir, "dead-letter.jsonl"), Fsync: &on}
	cfg.Metrics.Listen = listen
	cfg.Audit.Path = filepath.Join(dir, "audit.log")
	cfg.ShutdownTimeout = 10 * time.Second
	// Rotation on, so the demo can show one: looked at twice a second; no
	// key is old enough to rotate by age, the root key is left alone.
	off := false
	cfg.Rotation.Enabled = true
	cfg.Rotation.Tick = 500 * time.Millisecond
	cfg.Rotation.RotateRootKey = &off
	cfg.Rotation.FlushInterval = time.Second
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("demo configuration: %w", err)
	}
	return cfg, nil
}

func waitReady(ctx context.Context, d *daemon.Daemon) error {
	deadline := time.Now().Add(20 * time.Second)
	for !d.Ready() {
		if time.Now().After(deadline) {
			return errors.New("the daemon did not become ready (MQTT connected and subscribed) within 20s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// gather returns the sum of the metric's samples whose labels include the
// given name=value pairs.
func gather(g prometheus.Gatherer, name string, labels ...string) float64 {
	mfs, err := g.Gather()
	if err != nil {
		return 0
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				total += m.Counter.GetValue()
			case m.Gauge != nil:
				total += m.Gauge.GetValue()
			}
		}
	}
	return total
}

func gatherSum(g prometheus.Gatherer, name string) float64 { return gather(g, name) }

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue() == value
		}
	}
	return false
}

func printSummary(w io.Writer, s Summary) {
	var b strings.Builder
	fmt.Fprintf(&b, "\n--- decryptd demo summary (from the daemon's metrics) ---\n")
	bad := 0
	for _, n := range s.BadPublished {
		bad += n
	}
	fmt.Fprintf(&b, "fleet sent          %d good, %d bad messages\n", s.Published, bad)
	fmt.Fprintf(&b, "records delivered   %d (file sink)\n", s.Delivered)
	fmt.Fprintf(&b, "dead-lettered       %d\n", s.DeadLettered)
	fmt.Fprintf(&b, "duplicates          %d\n", s.Duplicates)
	fmt.Fprintf(&b, "KMS unwraps         %d (one per key version, and two per rekey: the cache serves the rest)\n", s.KMSUnwraps)
	if s.RotatedDevice != "" {
		fmt.Fprintf(&b, "rotation            %s: %d rekey(s) sent, %d adoption(s), %d records under %s\n",
			s.RotatedDevice, s.RekeysSent, s.Adoptions, s.RotatedRecords, s.RotatedToVersion)
	}
	if s.CareSample != "" {
		fmt.Fprintf(&b, "one record, as the care sink holds it:\n  %s\nand as the analytics sink holds it (its field policy applied):\n  %s\n", s.CareSample, s.AnalyticsSample)
	}
	fmt.Fprintf(&b, "failures by reason:\n")
	reasons := make([]string, 0, len(s.Failures))
	for r := range s.Failures {
		reasons = append(reasons, r)
	}
	order := map[string]int{}
	for i, r := range decrypt.Reasons() {
		order[r] = i
	}
	sort.Slice(reasons, func(i, j int) bool { return order[reasons[i]] < order[reasons[j]] })
	for _, r := range reasons {
		fmt.Fprintf(&b, "  %-15s %d (sent %d)\n", r, s.Failures[r], s.BadPublished[r])
	}
	if s.temporary {
		fmt.Fprintf(&b, "the working folder %s is removed now; run with --dir DIR to keep the records, dead letters and audit log\n", s.Dir)
	} else {
		fmt.Fprintf(&b, "records: %s, dead letters: %s, audit log: %s\n",
			filepath.Join(s.Dir, "records.jsonl"), filepath.Join(s.Dir, "dead-letter.jsonl"), filepath.Join(s.Dir, "audit.log"))
	}
	_, _ = io.WriteString(w, b.String())
}

// analyticsPolicy is the demo's analytics sink policy: the patient id
// pseudonymized (analytics can still count and join by patient), the
// free-text notes and the metadata dropped, readings kept, and any other
// field that arrived encrypted dropped unless listed here.
func analyticsPolicy() *config.Policy {
	return &config.Policy{
		PseudonymKey: "analytics",
		Encrypted:    fieldpolicy.Drop,
		Rules: []fieldpolicy.Rule{
			{Pointer: "/data/patient_id", Action: fieldpolicy.Pseudonymize},
			{Pointer: "/data/notes", Action: fieldpolicy.Drop},
			{Pointer: "/metadata", Action: fieldpolicy.Drop},
			{Pointer: "/data/heart_rate", Action: fieldpolicy.Keep},
			{Pointer: "/data/spo2", Action: fieldpolicy.Keep},
			{Pointer: "/data/temperature_c", Action: fieldpolicy.Keep},
			{Pointer: "/data/seq", Action: fieldpolicy.Keep},
		},
	}
}
