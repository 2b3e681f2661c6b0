package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/consumer"
	"github.com/decryptd/decryptd/internal/fleet"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/pki"
)

// The topic filter both drainers subscribe to, through one shared
// subscription group, as decryptd is deployed.
const (
	topicFilter = "iot-2/type/+/id/+/evt/+/fmt/+"
	shareGroup  = "bench"
)

var sharedFilter = "$share/" + shareGroup + "/" + topicFilter

// DrainOptions configure the drain benchmark.
type DrainOptions struct {
	Dir          string // working directory (broker, keys, sinks)
	Messages     int    // backlog size per drain (default 200,000)
	Devices      int    // distinct devices and keys (default 5,000)
	Rounds       int    // a,b pairs (default 3: a median of three)
	PublishConns int    // publisher connections (default 8)
	// Workers and MaxInFlight are decryptd's mqtt.workers and
	// mqtt.max_in_flight; BrokerInflight is Mosquitto's
	// max_inflight_messages for every drainer (default MaxInFlight).
	Workers, MaxInFlight, BrokerInflight int
	// Connections is decryptd's mqtt.connections (0: its default,
	// GOMAXPROCS/2 between 1 and 8); the backlog is queued for that many
	// sessions, split by the broker's shared subscription.
	Connections int
	// Plain drains over plain TCP (every drainer; the backlog is still
	// published over TLS), as issue 17's figures were taken; default
	// mutual TLS, as deployed.
	Plain bool
	// NoCSub leaves the mosquitto_sub side out (it is also left out, with a
	// progress line, when MosquittoSub finds no binary).
	NoCSub bool
	// Autosave is Mosquitto's autosave_interval in seconds (default 60,
	// the production setting of docs/mqtt-notes §5).
	Autosave int
	// BrokerCPUs, when set, pins Mosquitto to these CPUs (taskset -c);
	// start the bench itself under taskset on the others to give each its
	// own CPUs.
	BrokerCPUs string
	// AuditDir, when set, holds decryptd's audit log instead of its working
	// directory: a diagnostic (a tmpfs there shows what the audit log's
	// fsync per KMS unwrap costs), never the default.
	AuditDir string
	// ProfileDir, when set, receives a CPU profile of each drain
	// (<side>-<round>.pprof), taken over the timed part only.
	ProfileDir string
	Progress   io.Writer   // progress lines (nil: none)
	Logger     *zap.Logger // the daemon's logger (nil: none)
}

func (o *DrainOptions) defaults() {
	if o.Messages <= 0 {
		o.Messages = 200_000
	}
	if o.Devices <= 0 {
		o.Devices = 5_000
	}
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.PublishConns <= 0 {
		o.PublishConns = 8
	}
	daemonDefaults(&o.Workers, &o.MaxInFlight)
	if o.Connections <= 0 {
		o.Connections = consumer.DefaultConnections()
	}
	if o.BrokerInflight <= 0 {
		o.BrokerInflight = o.MaxInFlight
	}
	if o.Autosave <= 0 {
		o.Autosave = 60
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
}

// daemonDefaults fills unset mqtt.workers and mqtt.max_in_flight with the
// daemon's own defaults, so that a benchmark runs what an operator gets
// without setting them.
func daemonDefaults(workers, maxInFlight *int) {
	def := config.Default().MQTT
	if *workers <= 0 {
		*workers = def.Workers
	}
	if *maxInFlight <= 0 {
		*maxInFlight = def.MaxInFlight
	}
}

// DrainRun is one timed drain.
type DrainRun struct {
	Side     string  `json:"side"` // "bare", "mosquitto_sub" or "decryptd"
	Round    int     `json:"round"`
	Messages int     `json:"messages"`
	Seconds  float64 `json:"seconds"`
	Rate     float64 `json:"msg_per_s"`
	// CPUPerMsg is this process's CPU time (user+system, getrusage) over
	// the drain divided by the messages (mosquitto_sub: the child
	// process's); the broker is another process, reported apart.
	CPUPerMsgUS       float64 `json:"cpu_us_per_msg"`
	BrokerCPUPerMsgUS float64 `json:"broker_cpu_us_per_msg"`
	// BaseRSS is the process RSS just before the drain (after a full GC);
	// PeakRSS the high-water mark during it (VmHWM, reset before).
	BaseRSS int64 `json:"base_rss_bytes"`
	PeakRSS int64 `json:"peak_rss_bytes"`
	// Receipt is the latency from the message's timestamp to its receipt
	// by the drainer's MQTT client (not measured for mosquitto_sub, whose
	// output is discarded: Count 0). Sink (decryptd) is to the record being
	// written to the sink file, seen by the harness taking the file's size
	// every 2 ms (the line is seen at the first size that holds its end);
	// the batch's fsync follows.
	Receipt Latency  `json:"latency_receipt"`
	Sink    *Latency `json:"latency_sink,omitempty"`
	// HistP50/HistP99 (decryptd) estimate the same from the daemon's own
	// decryptd_end_to_end_latency_seconds buckets (to sink acceptance).
	HistP50MS   float64 `json:"hist_p50_ms,omitempty"`
	HistP99MS   float64 `json:"hist_p99_ms,omitempty"`
	KMSUnwraps  uint64  `json:"kms_unwraps,omitempty"`
	Delivered   float64 `json:"delivered,omitempty"`
	DeadLetters float64 `json:"dead_letters,omitempty"`
	Duplicates  float64 `json:"duplicates,omitempty"`
	Released    float64 `json:"released,omitempty"`
	// SinkBatch is the mean records per write of the records sink (one
	// fsync each).
	SinkBatch float64 `json:"sink_batch_mean,omitempty"`
	// InFlightMean and InFlightMax sample decryptd_inflight_messages (held
	// between receipt and acknowledgement) every 100 ms: how much of the
	// windows (broker and max_in_flight) the drain actually used.
	InFlightMean float64 `json:"in_flight_mean,omitempty"`
	InFlightMax  float64 `json:"in_flight_max,omitempty"`
	// SinkWriteMS is the mean duration of one records sink write (the
	// write and its fsync).
	SinkWriteMS float64 `json:"sink_write_mean_ms,omitempty"`
	// AckLatencyMS is the mean time from receipt to the PUBACK handed to
	// the client (decryptd_mqtt_ack_latency_seconds): how long a message
	// holds one of the broker's in-flight slots inside decryptd.
	AckLatencyMS float64 `json:"ack_latency_mean_ms,omitempty"`
	// DecryptUS is the mean duration of one decryption
	// (decryptd_decrypt_duration_seconds), key lookup included.
	DecryptUS   float64 `json:"decrypt_mean_us,omitempty"`
	PublishRate float64 `json:"publish_msg_per_s"`
	PayloadAvg  float64 `json:"payload_avg_bytes"`
}

// DrainResult is the whole drain benchmark.
type DrainResult struct {
	Messages       int        `json:"messages"`
	Devices        int        `json:"devices"`
	DistinctKeys   int        `json:"distinct_key_versions"`
	Workers        int        `json:"workers"`
	MaxInFlight    int        `json:"max_in_flight"`
	BrokerInflight int        `json:"broker_max_inflight_messages"`
	Autosave       int        `json:"broker_autosave_interval_s"`
	BrokerCPUs     string     `json:"broker_cpus,omitempty"`
	GOMAXPROCS     int        `json:"gomaxprocs"`
	Plain          bool       `json:"plain_tcp,omitempty"` // the drainers used plain TCP
	Connections    int        `json:"connections"`         // decryptd's mqtt.connections as run
	Runs           []DrainRun `json:"runs"`
	BareMedian     float64    `json:"bare_median_msg_per_s"`
	DecryptdMedian float64    `json:"decryptd_median_msg_per_s"`
	// Ratio is DecryptdMedian / BareMedian; RoundRatios the same per a,b
	// pair.
	Ratio       float64   `json:"ratio"`
	RoundRatios []float64 `json:"round_ratios"`
	// CSubMedian is mosquitto_sub's median (0: not run); CSubRatio is
	// DecryptdMedian / CSubMedian, CSubRoundRatios the same per round.
	CSubMedian      float64   `json:"mosquitto_sub_median_msg_per_s,omitempty"`
	CSubRatio       float64   `json:"ratio_to_mosquitto_sub,omitempty"`
	CSubRoundRatios []float64 `json:"round_ratios_to_mosquitto_sub,omitempty"`
	// CPUMedianUS is the median CPU µs per message of each side.
	CPUMedianUS map[string]float64 `json:"cpu_us_per_msg_median,omitempty"`
	// UnwrapsMatch: every decryptd run made exactly DistinctKeys unwraps.
	UnwrapsMatch bool `json:"unwraps_match_distinct_keys"`
}

// Drain runs the drain benchmark: one broker, one fleet, then Rounds
// pairs of drains, the bare subscriber first, then decryptd.
func Drain(ctx context.Context, o DrainOptions) (*DrainResult, error) {
	o.defaults()
	if o.Messages < o.Devices {
		return nil, fmt.Errorf("bench: %d messages cannot cover %d devices", o.Messages, o.Devices)
	}
	say := func(format string, args ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", args...)
		}
	}
	b, err := StartBroker(BrokerOptions{Dir: filepath.Join(o.Dir, "broker"), MaxInflight: o.BrokerInflight, MaxQueued: 2*o.Messages + 1000, Autosave: o.Autosave, CPUs: o.BrokerCPUs, Plain: o.Plain})
	if err != nil {
		return nil, err
	}
	defer b.Stop()
	_, pubTLS, err := b.ClientTLS("telemsim")
	if err != nil {
		return nil, err
	}
	// One client identity for both drainers: same certificate, same TLS.
	drainFiles, drainTLS, err := b.ClientTLS("drainer")
	if err != nil {
		return nil, err
	}

	keysDir := filepath.Join(o.Dir, "keys")
	if err := os.MkdirAll(keysDir, 0o700); err != nil {
		return nil, err
	}
	rootFile := filepath.Join(keysDir, "root-key.json")
	lp, err := local.Create(rootFile, "bench-root")
	if err != nil {
		return nil, err
	}
	regFile := filepath.Join(keysDir, "registry.json")
	start := time.Now()
	f, err := provision(ctx, o.Devices, lp, regFile, 16, nil)
	if err != nil {
		return nil, fmt.Errorf("bench: provision: %w", err)
	}
	say("drain: provisioned %d device keys (local KMS, file registry written in one go) in %s", o.Devices, time.Since(start).Round(time.Millisecond))

	res := &DrainResult{Messages: o.Messages, Devices: o.Devices, DistinctKeys: f.Keys(), Workers: o.Workers,
		MaxInFlight: o.MaxInFlight, BrokerInflight: o.BrokerInflight, Autosave: o.Autosave, UnwrapsMatch: true,
		BrokerCPUs: o.BrokerCPUs, GOMAXPROCS: runtime.GOMAXPROCS(0), Connections: o.Connections, Plain: o.Plain}
	ds := &drainSetup{o: o, b: b, pubTLS: pubTLS, drainTLS: drainTLS, drainFiles: drainFiles, f: f, rootFile: rootFile, regFile: regFile, say: say}
	sides := []string{"bare", "decryptd"}
	switch {
	case o.NoCSub:
	case MosquittoSub() == "":
		say("drain: no mosquitto_sub found (PATH, %s; decryptd-bench -mosquitto-sub): the C-client baseline is left out", MosquittoSubBinary)
	default:
		ds.csub = MosquittoSub()
		sides = []string{"bare", SideCSub, "decryptd"}
	}
	rates, cpus := map[string][]float64{}, map[string][]float64{}
	for r := 1; r <= o.Rounds; r++ {
		for _, side := range sides {
			run, err := ds.round(ctx, side, r)
			if err != nil {
				return nil, err
			}
			rates[side] = append(rates[side], run.Rate)
			cpus[side] = append(cpus[side], run.CPUPerMsgUS)
			if side == "decryptd" {
				if run.KMSUnwraps != uint64(res.DistinctKeys) {
					res.UnwrapsMatch = false
				}
				res.RoundRatios = append(res.RoundRatios, run.Rate/rates["bare"][r-1])
				if ds.csub != "" {
					res.CSubRoundRatios = append(res.CSubRoundRatios, run.Rate/rates[SideCSub][r-1])
				}
			}
			res.Runs = append(res.Runs, *run)
		}
	}
	res.BareMedian, res.DecryptdMedian = median(rates["bare"]), median(rates["decryptd"])
	res.Ratio = res.DecryptdMedian / res.BareMedian
	if ds.csub != "" {
		res.CSubMedian = median(rates[SideCSub])
		res.CSubRatio = res.DecryptdMedian / res.CSubMedian
	}
	res.CPUMedianUS = map[string]float64{}
	for side, v := range cpus {
		res.CPUMedianUS[side] = median(v)
	}
	return res, nil
}

// startProfile starts a CPU profile into dir/name.pprof (dir empty: none).
func startProfile(dir, name string) (stop func(), err error) {
	if dir == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(dir, name+".pprof"))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// prepareSession creates the drainer's persistent session and its shared
// subscription, then disconnects, so the backlog queues for it.
func prepareSession(url string, tc *tls.Config, id string) error {
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetTLSConfig(tc).
		SetCleanSession(false).SetConnectTimeout(10 * time.Second).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		return fmt.Errorf("bench: session %s: connect: %v", id, tok.Error())
	}
	defer c.Disconnect(250)
	if tok := c.Subscribe(sharedFilter, 1, nil); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		return fmt.Errorf("bench: session %s: subscribe: %v", id, tok.Error())
	}
	return nil
}

// wipeSession ends a drainer's session (clean connect), so later backlogs
// no longer queue for it.
func wipeSession(url string, tc *tls.Config, id string) error {
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetTLSConfig(tc).
		SetCleanSession(true).SetConnectTimeout(10 * time.Second).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		return fmt.Errorf("bench: wipe session %s: %v", id, tok.Error())
	}
	c.Disconnect(250)
	return nil
}

// drainSetup is what every round of Drain shares: the broker, the TLS of
// the publisher and of the drainers, the fleet and its keys.
type drainSetup struct {
	o                DrainOptions
	b                *Broker
	pubTLS, drainTLS *tls.Config
	drainFiles       pki.Files
	f                *fleet.Fleet
	rootFile         string
	regFile          string
	csub             string // mosquitto_sub's path; empty: not run
	say              func(format string, args ...any)
}

// drainURL is the broker URL the drainers use: plain TCP with
// DrainOptions.Plain, else mutual TLS.
func (s *drainSetup) drainURL() string {
	if s.o.Plain {
		return s.b.PlainURL
	}
	return s.b.URL
}

// sessionIDs are the client ids whose persistent sessions drain side's
// backlog in round r: one, or decryptd's connections (its client id, then
// "<id>-1" ...), each of which gets its share of the backlog.
func (s *drainSetup) sessionIDs(side string, r int) []string {
	id := fmt.Sprintf("bench-%s-%d", side, r)
	ids := []string{id}
	if side == "decryptd" {
		for n := 1; n < s.o.Connections; n++ {
			ids = append(ids, fmt.Sprintf("%s-%d", id, n))
		}
	}
	return ids
}

// round queues a fresh backlog in side's session ("bare" or "decryptd")
// and drains it.
func (s *drainSetup) round(ctx context.Context, side string, r int) (*DrainRun, error) {
	ids := s.sessionIDs(side, r)
	id := ids[0]
	label := fmt.Sprintf("round %d/%d %s", r, s.o.Rounds, side)
	for _, id := range ids {
		if err := prepareSession(s.b.URL, s.drainTLS, id); err != nil {
			return nil, err
		}
	}
	pstart := time.Now()
	sent, err := publishBacklog(ctx, s.b.URL, s.pubTLS, s.f, s.o.Messages, s.o.PublishConns, uint64(r*10), s.o.Progress, label)
	if err != nil {
		return nil, err
	}
	prate := float64(s.o.Messages) / time.Since(pstart).Seconds()
	s.say("%s: backlog of %d messages (%.0f B average) queued at %.0f msg/s", label, s.o.Messages, float64(sent)/float64(s.o.Messages), prate)
	var run *DrainRun
	stopProfile, err := startProfile(s.o.ProfileDir, fmt.Sprintf("%s-%d", side, r))
	if err != nil {
		return nil, err
	}
	switch side {
	case "bare":
		run, err = drainBare(ctx, s.b, s.drainURL(), s.drainTLS, id, s.o.Messages, s.o.Progress, label)
	case SideCSub:
		run, err = drainCSub(ctx, s.csub, s.b, s.drainURL(), s.drainFiles, id, s.o.Messages, s.o.Progress, label)
	default:
		run, err = drainDaemon(ctx, s.b, s.drainFiles, id, s.o, s.rootFile, s.regFile, r, label)
	}
	stopProfile()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	for _, id := range ids {
		if err := wipeSession(s.b.URL, s.drainTLS, id); err != nil {
			return nil, err
		}
	}
	run.Round, run.PublishRate, run.PayloadAvg = r, prate, float64(sent)/float64(s.o.Messages)
	s.say("%s: drained %d in %.2f s = %.0f msg/s, %.1f µs CPU/msg, latency p50 %.0f ms p99 %.0f ms, peak RSS %d MiB",
		label, run.Messages, run.Seconds, run.Rate, run.CPUPerMsgUS, run.Receipt.P50, run.Receipt.P99, run.PeakRSS>>20)
	return run, nil
}
