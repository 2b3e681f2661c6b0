package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/pki"
	"github.com/decryptd/decryptd/internal/sink"
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
	// max_inflight_messages for both drainers (default MaxInFlight).
	Workers, MaxInFlight, BrokerInflight int
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
	Side     string  `json:"side"` // "bare" or "decryptd"
	Round    int     `json:"round"`
	Messages int     `json:"messages"`
	Seconds  float64 `json:"seconds"`
	Rate     float64 `json:"msg_per_s"`
	// CPUPerMsg is this process's CPU time (user+system, getrusage) over
	// the drain divided by the messages; the broker is another process,
	// reported apart.
	CPUPerMsgUS       float64 `json:"cpu_us_per_msg"`
	BrokerCPUPerMsgUS float64 `json:"broker_cpu_us_per_msg"`
	// BaseRSS is the process RSS just before the drain (after a full GC);
	// PeakRSS the high-water mark during it (VmHWM, reset before).
	BaseRSS int64 `json:"base_rss_bytes"`
	PeakRSS int64 `json:"peak_rss_bytes"`
	// Receipt is the latency from the message's timestamp to its receipt
	// by the drainer's MQTT client. Sink (decryptd) is to the record being
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
	Runs           []DrainRun `json:"runs"`
	BareMedian     float64    `json:"bare_median_msg_per_s"`
	DecryptdMedian float64    `json:"decryptd_median_msg_per_s"`
	// Ratio is DecryptdMedian / BareMedian; RoundRatios the same per a,b
	// pair.
	Ratio       float64   `json:"ratio"`
	RoundRatios []float64 `json:"round_ratios"`
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
	b, err := StartBroker(BrokerOptions{Dir: filepath.Join(o.Dir, "broker"), MaxInflight: o.BrokerInflight, MaxQueued: 2*o.Messages + 1000, Autosave: o.Autosave, CPUs: o.BrokerCPUs})
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
		BrokerCPUs: o.BrokerCPUs, GOMAXPROCS: runtime.GOMAXPROCS(0)}
	var bare, dec []float64
	for r := 1; r <= o.Rounds; r++ {
		for _, side := range []string{"bare", "decryptd"} {
			id := fmt.Sprintf("bench-%s-%d", side, r)
			label := fmt.Sprintf("round %d/%d %s", r, o.Rounds, side)
			if err := prepareSession(b.URL, drainTLS, id); err != nil {
				return nil, err
			}
			pstart := time.Now()
			sent, err := publishBacklog(ctx, b.URL, pubTLS, f, o.Messages, o.PublishConns, uint64(r*10), o.Progress, label)
			if err != nil {
				return nil, err
			}
			prate := float64(o.Messages) / time.Since(pstart).Seconds()
			say("%s: backlog of %d messages (%.0f B average) queued at %.0f msg/s", label, o.Messages, float64(sent)/float64(o.Messages), prate)
			var run *DrainRun
			stopProfile, err := startProfile(o.ProfileDir, fmt.Sprintf("%s-%d", side, r))
			if err != nil {
				return nil, err
			}
			if side == "bare" {
				run, err = drainBare(ctx, b, drainTLS, id, o.Messages, o.Progress, label)
			} else {
				run, err = drainDaemon(ctx, b, drainFiles, id, o, rootFile, regFile, r, label)
			}
			stopProfile()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", label, err)
			}
			if err := wipeSession(b.URL, drainTLS, id); err != nil {
				return nil, err
			}
			run.Round, run.PublishRate, run.PayloadAvg = r, prate, float64(sent)/float64(o.Messages)
			say("%s: drained %d in %.2f s = %.0f msg/s, %.1f µs CPU/msg, latency p50 %.0f ms p99 %.0f ms, peak RSS %d MiB",
				label, run.Messages, run.Seconds, run.Rate, run.CPUPerMsgUS, run.Receipt.P50, run.Receipt.P99, run.PeakRSS>>20)
			if side == "bare" {
				bare = append(bare, run.Rate)
			} else {
				dec = append(dec, run.Rate)
				if run.KMSUnwraps != uint64(res.DistinctKeys) {
					res.UnwrapsMatch = false
				}
				res.RoundRatios = append(res.RoundRatios, run.Rate/bare[len(bare)-1])
			}
			res.Runs = append(res.Runs, *run)
		}
	}
	res.BareMedian, res.DecryptdMedian = median(bare), median(dec)
	res.Ratio = res.DecryptdMedian / res.BareMedian
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

// drainBare drains the backlog with a bare paho client: persistent
// session, QoS 1, the handler on paho's router (OrderMatters true, as
// decryptd's consumer) counting the message and reading its timestamp,
// paho acknowledging it when the handler returns. The transport's own
// limit.
func drainBare(ctx context.Context, b *Broker, tc *tls.Config, id string, n int, progress io.Writer, label string) (*DrainRun, error) {
	lat := make([]float64, n)
	var count atomic.Int64
	done := make(chan struct{})
	var end time.Time
	handler := func(_ mqtt.Client, m mqtt.Message) {
		now := time.Now()
		i := count.Add(1) - 1
		if i >= int64(n) {
			return // a redelivery beyond the backlog: counted, not timed
		}
		lat[i] = float64(now.UnixMicro()-timestampOf(m.Payload())*1000) / 1000
		if i == int64(n)-1 {
			end = now
			close(done)
		}
	}
	opts := mqtt.NewClientOptions().AddBroker(b.URL).SetClientID(id).SetTLSConfig(tc).
		SetCleanSession(false).SetOrderMatters(true).SetDefaultPublishHandler(handler).
		SetKeepAlive(30 * time.Second).SetConnectTimeout(10 * time.Second).SetAutoReconnect(false)
	c := mqtt.NewClient(opts)

	settle()
	if err := resetPeakRSS(); err != nil {
		return nil, fmt.Errorf("reset peak RSS: %w", err)
	}
	base := rss()
	cpu0, bcpu0 := cpuTime(), procCPU(b.Pid())
	start := time.Now()
	stop := reportEvery(progress, time.Second, func() string {
		k := count.Load()
		return fmt.Sprintf("%s: drained %d/%d (%.0f msg/s)", label, k, n, float64(k)/time.Since(start).Seconds())
	})
	if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		stop()
		return nil, fmt.Errorf("connect: %v", tok.Error())
	}
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	case <-time.After(10 * time.Minute):
		err = fmt.Errorf("drained %d of %d in 10 minutes", count.Load(), n)
	}
	cpu1, bcpu1 := cpuTime(), procCPU(b.Pid())
	peak := peakRSS()
	stop()
	c.Disconnect(500)
	if err != nil {
		return nil, err
	}
	secs := end.Sub(start).Seconds()
	return &DrainRun{
		Side: "bare", Messages: n, Seconds: secs, Rate: float64(n) / secs,
		CPUPerMsgUS:       float64((cpu1 - cpu0).Microseconds()) / float64(n),
		BrokerCPUPerMsgUS: float64((bcpu1 - bcpu0).Microseconds()) / float64(n),
		BaseRSS:           base, PeakRSS: peak,
		Receipt: summarise(lat),
	}, nil
}

// drainDaemon drains the backlog with decryptd, in process, built from a
// configuration made in code as an operator would write it: mutual TLS,
// shared subscription, local KMS, the file registry, a file sink and a
// dead-letter file both fsynced per batch, the audit log. It is done
// when the records sink has acknowledged holding n records and n messages
// were acknowledged to the broker.
func drainDaemon(ctx context.Context, b *Broker, client pki.Files, id string, o DrainOptions, rootFile, regFile string, round int, label string) (*DrainRun, error) {
	dir := filepath.Join(o.Dir, fmt.Sprintf("decryptd-%d", round))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	records := filepath.Join(dir, "records.jsonl")
	cfg := daemonConfig(dir, b.URL, client, id, o.Workers, o.MaxInFlight, regFile)
	cfg.KMS = config.KMS{Provider: config.ProviderLocal, Local: config.LocalKMS{RootKeyFile: rootFile}}
	if o.AuditDir != "" {
		cfg.Audit.Path = filepath.Join(o.AuditDir, fmt.Sprintf("audit-drain-%d.log", round))
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	reg := prometheus.NewRegistry()
	d, err := daemon.New(ctx, daemon.Options{Config: cfg, Registry: reg, Logger: o.Logger, Version: "bench"})
	if err != nil {
		return nil, fmt.Errorf("daemon.New: %w", err)
	}
	sizes, err := openSizeTimeline(records)
	if err != nil {
		_ = d.Close(context.Background())
		return nil, err
	}
	defer sizes.close()

	settle()
	if err := resetPeakRSS(); err != nil {
		return nil, fmt.Errorf("reset peak RSS: %w", err)
	}
	base := rss()
	cpu0, bcpu0 := cpuTime(), procCPU(b.Pid())
	start := time.Now()
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(runCtx) }()
	if o.ProfileDir != "" {
		// Where the goroutines wait: early on, while keys are being
		// loaded, and later, in the steady state of a long drain.
		for _, at := range []time.Duration{1500 * time.Millisecond, 10 * time.Second} {
			time.AfterFunc(at, func() {
				if f, err := os.Create(filepath.Join(o.ProfileDir, fmt.Sprintf("goroutines-%d-at-%s.txt", round, at))); err == nil {
					_ = pprof.Lookup("goroutine").WriteTo(f, 1)
					f.Close()
				}
			})
		}
	}
	// The records sink's delivered count as of the loop's last gather: the
	// progress line reads it rather than gathering (or reading the file)
	// itself.
	var delivered atomic.Int64
	stopProgress := reportEvery(o.Progress, time.Second, func() string {
		k := delivered.Load()
		return fmt.Sprintf("%s: drained %d/%d (%.0f msg/s)", label, k, o.Messages, float64(k)/time.Since(start).Seconds())
	})
	shutdown := func() error {
		stopProgress()
		stopRun()
		select {
		case err := <-runErr:
			return err
		case <-time.After(time.Minute):
			return errors.New("daemon did not stop within a minute")
		}
	}

	// Wait until the records sink has acknowledged every record and every
	// message was acknowledged to the broker. This loop runs in the process
	// whose CPU is charged to decryptd, so it does little: every 2 ms one
	// lseek of the sink file, to record the timeline of its size (the file
	// is read once, after the drain, to date each line by it), and a gather
	// of the daemon's registry, which costs hundreds of µs, only every
	// 100 ms (the in-flight sample) and, as the end nears, at half the time
	// the remaining records should take at the recent pace: a dozen more
	// gathers, with the end seen within about a poll.
	deadline := start.Add(10 * time.Minute)
	var end time.Time
	var inflightSum, inflightMax float64
	var inflightN int
	var last drainGauges
	var gatherErr error
	var rate float64 // records/s delivered over the last window of at least 100 ms
	from, fromAt := drainGauges{}, start
	nextSample, nextCheck := start, start
	for {
		if err := sizes.poll(start); err != nil {
			_ = shutdown()
			return nil, err
		}
		now := time.Now()
		sample, check := !now.Before(nextSample), !now.Before(nextCheck)
		for !nextSample.After(now) {
			nextSample = nextSample.Add(sampleEvery)
		}
		if sample || check {
			g, err := gatherDrain(reg)
			gatherErr = err
			if err == nil {
				last = g
				delivered.Store(int64(g.delivered))
				if g.delivered >= float64(o.Messages) && g.acked >= float64(o.Messages) {
					end = time.Now()
					break
				}
				if sample {
					inflightSum, inflightN, inflightMax = inflightSum+g.inflight, inflightN+1, max(inflightMax, g.inflight)
				}
				if span := now.Sub(fromAt); span >= sampleEvery {
					rate = (g.delivered - from.delivered) / span.Seconds()
					from, fromAt = g, now
				}
			}
			nextCheck = now.Add(checkIn(float64(o.Messages)-last.delivered, rate))
		}
		if err := ctx.Err(); err != nil {
			_ = shutdown()
			return nil, err
		}
		if now.After(deadline) {
			_ = shutdown()
			return nil, fmt.Errorf("after 10 minutes the sink acknowledged %.0f of %d records and %.0f messages were acknowledged (last gather: %v)",
				last.delivered, o.Messages, last.acked, gatherErr)
		}
		time.Sleep(pollEvery)
	}
	cpu1, bcpu1 := cpuTime(), procCPU(b.Pid())
	peak := peakRSS()
	run := &DrainRun{
		Side: "decryptd", Messages: o.Messages, Seconds: end.Sub(start).Seconds(),
		CPUPerMsgUS:       float64((cpu1 - cpu0).Microseconds()) / float64(o.Messages),
		BrokerCPUPerMsgUS: float64((bcpu1 - bcpu0).Microseconds()) / float64(o.Messages),
		BaseRSS:           base, PeakRSS: peak,
		KMSUnwraps: d.KMSUnwraps(),
	}
	run.Rate = float64(o.Messages) / run.Seconds
	if inflightN > 0 {
		run.InFlightMean, run.InFlightMax = inflightSum/float64(inflightN), inflightMax
	}
	run.Delivered, _ = metricSum(reg, "decryptd_records_delivered_total")
	run.DeadLetters, _ = metricSum(reg, "decryptd_dead_letters_total")
	run.Duplicates, _ = metricSum(reg, "decryptd_duplicates_total")
	run.Released, _ = metricSum(reg, "decryptd_mqtt_messages_released_total")
	run.SinkBatch = histogramMean(reg, "decryptd_sink_batch_records", recordsSink)
	run.SinkWriteMS = histogramMean(reg, "decryptd_sink_write_duration_seconds", recordsSink) * 1000
	run.AckLatencyMS = histogramMean(reg, "decryptd_mqtt_ack_latency_seconds", "") * 1000
	run.DecryptUS = histogramMean(reg, "decryptd_decrypt_duration_seconds", "") * 1e6
	if bounds, cum, err := histogram(reg, "decryptd_end_to_end_latency_seconds"); err == nil {
		run.HistP50MS = histogramQuantile(.5, bounds, cum) * 1000
		run.HistP99MS = histogramQuantile(.99, bounds, cum) * 1000
	}
	if err := shutdown(); err != nil {
		return nil, fmt.Errorf("daemon shutdown: %w", err)
	}
	receipt, sink, lines, err := recordLatencies(records, sizes.samples, start)
	if err != nil {
		return nil, err
	}
	if lines < int64(o.Messages) {
		return nil, fmt.Errorf("sink file holds %d records, the sink acknowledged %.0f", lines, last.delivered)
	}
	run.Receipt, run.Sink = receipt, &sink
	return run, nil
}

// daemonConfig is the configuration both benchmarks run decryptd with,
// less the KMS: mutual TLS to the broker, the shared subscription, the file
// registry, a file sink (records.jsonl in dir) and a dead-letter file both
// fsynced per batch before acknowledging (the production policy), the
// audit log, metrics on an ephemeral port.
func daemonConfig(dir, brokerURL string, client pki.Files, id string, workers, maxInFlight int, regFile string) *config.Config {
	on := true
	cfg := config.Default()
	cfg.MQTT.Brokers = []string{brokerURL}
	cfg.MQTT.ClientID = id
	cfg.MQTT.Topics = []string{topicFilter}
	cfg.MQTT.SharedGroup = shareGroup
	cfg.MQTT.TLS = config.TLS{CAFile: client.CA, CertFile: client.Cert, KeyFile: client.Key, ServerName: "127.0.0.1"}
	cfg.MQTT.Workers, cfg.MQTT.MaxInFlight = workers, maxInFlight
	cfg.Registry = config.Registry{Driver: config.DriverFile, Path: regFile}
	// Large enough that the file never rotates under the harness following
	// it by its size.
	cfg.Sinks = []config.Sink{{Name: recordsSink, Type: config.SinkFile, Config: &sink.FileConfig{Path: filepath.Join(dir, "records.jsonl"), MaxBytes: 16 << 30, Keep: 1, Fsync: &on}}}
	cfg.DeadLetter = config.DeadLetter{Type: config.SinkFile, Path: filepath.Join(dir, "dead-letter.jsonl"), Fsync: &on}
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Audit.Path = filepath.Join(dir, "audit.log")
	cfg.ShutdownTimeout = 30 * time.Second
	return cfg
}

// The drain loop's periods: the sink file's size is taken every pollEvery;
// the daemon's registry is gathered every sampleEvery (and more often only
// near the end, see checkIn).
const (
	pollEvery   = 2 * time.Millisecond
	sampleEvery = 100 * time.Millisecond
)

// recordsSink is the name of the sink the drain waits on.
const recordsSink = "records"

// checkIn is how long the drain loop waits before gathering again to see
// whether it is done: half the time the remaining records take at rate,
// between pollEvery and sampleEvery. Halving keeps the gathers near the
// end few while the end is still seen within a poll or two; once every
// record is delivered (the acknowledgements follow the sink's fsync) it is
// every poll. Without a rate (nothing delivered yet, or a stall) it is
// sampleEvery.
func checkIn(remaining, rate float64) time.Duration {
	if remaining <= 0 {
		return pollEvery
	}
	if rate <= 0 {
		return sampleEvery
	}
	half := time.Duration(remaining / rate / 2 * float64(time.Second))
	return min(max(half, pollEvery), sampleEvery)
}

// drainGauges is what one gather of the daemon's registry tells the drain
// loop.
type drainGauges struct {
	delivered float64 // records the records sink acknowledged holding
	acked     float64 // messages acknowledged to the broker
	inflight  float64 // messages held between receipt and acknowledgement
}

// gatherDrain reads them; a family not exported yet counts as zero.
func gatherDrain(g prometheus.Gatherer) (drainGauges, error) {
	var d drainGauges
	mfs, err := g.Gather()
	if err != nil {
		return d, fmt.Errorf("gather metrics: %w", err)
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "decryptd_records_delivered_total":
			d.delivered = familySum(mf, "sink", recordsSink)
		case "decryptd_mqtt_ack_latency_seconds":
			d.acked = familySum(mf, "", "")
		case "decryptd_inflight_messages":
			d.inflight = familySum(mf, "", "")
		}
	}
	return d, nil
}

// sizeTimeline follows a growing file by its size alone, one lseek a poll
// and nothing read, keeping a sample each time the size changed. After the
// drain, the line ending at offset e was seen (could first have been read
// whole) at the first sample whose size reaches e.
type sizeTimeline struct {
	f       *os.File
	size    int64
	samples []sizeSample
}

type sizeSample struct {
	at   time.Duration // since the drain started
	size int64         // bytes
}

func openSizeTimeline(path string) (*sizeTimeline, error) {
	// The sink creates the file in daemon.New.
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open sink file: %w", err)
	}
	// Room for a long drain's samples, so that the loop does not grow it.
	return &sizeTimeline{f: f, samples: make([]sizeSample, 0, 1<<14)}, nil
}

func (t *sizeTimeline) poll(start time.Time) error {
	n, err := t.f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("sink file size: %w", err)
	}
	if n != t.size {
		t.size = n
		t.samples = append(t.samples, sizeSample{at: time.Since(start), size: n})
	}
	return nil
}

func (t *sizeTimeline) close() { t.f.Close() }

// tailer counts the lines of a growing file by reading what was appended
// since its last poll. The cold start waits on it; the drain does not
// (sizeTimeline), since these reads would be charged to decryptd's CPU.
type tailer struct {
	f     *os.File
	buf   []byte
	lines atomic.Int64
}

func openTail(path string) (*tailer, error) {
	// The sink creates the file in daemon.New.
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open sink file: %w", err)
	}
	return &tailer{f: f, buf: make([]byte, 1<<20)}, nil
}

func (t *tailer) poll() error {
	for {
		k, err := t.f.Read(t.buf)
		t.lines.Add(int64(bytes.Count(t.buf[:k], []byte{'\n'})))
		if err == io.EOF || k == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read sink file: %w", err)
		}
	}
}

func (t *tailer) close() { t.f.Close() }

// recordLatencies reads the records back once, after the drain: it counts
// them, and takes from each the latency from its timestamp to received_at
// (the daemon's receipt) and to when the harness saw the line, the first
// of samples whose size reaches the line's end.
func recordLatencies(path string, samples []sizeSample, start time.Time) (receipt, sink Latency, lines int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return receipt, sink, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	sc.Split(scanRawLines)
	var rec, snk []float64
	var end int64 // the current line's end offset, its newline included
	si := 0
	for sc.Scan() {
		line := sc.Bytes()
		lines++
		end += int64(len(line))
		for si < len(samples) && samples[si].size < end {
			si++
		}
		ts := timestampOf(line) // the record's "timestamp" member, as sent
		if ts == 0 {
			continue
		}
		sent := time.UnixMilli(ts)
		if i := bytes.Index(line, []byte(`"received_at":"`)); i >= 0 {
			rest := line[i+len(`"received_at":"`):]
			if j := bytes.IndexByte(rest, '"'); j > 0 {
				if at, err := time.Parse(time.RFC3339Nano, string(rest[:j])); err == nil {
					rec = append(rec, float64(at.Sub(sent).Microseconds())/1000)
				}
			}
		}
		if si < len(samples) {
			seen := start.Add(samples[si].at)
			snk = append(snk, float64(seen.Sub(sent).Microseconds())/1000)
		}
	}
	if err := sc.Err(); err != nil {
		return receipt, sink, lines, fmt.Errorf("read sink file: %w", err)
	}
	return summarise(rec), summarise(snk), lines, nil
}

// scanRawLines is bufio.ScanLines keeping each line's bytes as they are,
// newline included, so that their lengths add up to file offsets.
func scanRawLines(data []byte, atEOF bool) (advance int, token []byte, err error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i+1], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// metricSum adds up every sample of a counter or gauge family, or the
// sample counts of a histogram family.
func metricSum(g prometheus.Gatherer, name string) (float64, error) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return familySum(mf, "", ""), nil
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// familySum adds up the samples of a counter or gauge family, or the
// sample counts of a histogram family, over the series labelled
// label=value (every series when label is empty).
func familySum(mf *dto.MetricFamily, label, value string) float64 {
	sum := 0.0
	for _, m := range mf.GetMetric() {
		if label != "" && !hasLabel(m, label, value) {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// histogram returns the cumulative buckets of a one-series histogram,
// +Inf last.
func histogram(g prometheus.Gatherer, name string) ([]float64, []uint64, error) {
	mfs, err := g.Gather()
	if err != nil {
		return nil, nil, err
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) == 0 {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		var bounds []float64
		var cum []uint64
		for _, b := range h.GetBucket() {
			bounds = append(bounds, b.GetUpperBound())
			cum = append(cum, b.GetCumulativeCount())
		}
		bounds = append(bounds, math.Inf(1))
		cum = append(cum, h.GetSampleCount())
		return bounds, cum, nil
	}
	return nil, nil, fmt.Errorf("histogram %s not found", name)
}

// histogramMean is sum/count of the series of a histogram family whose
// labels include sink=<sinkName> (any series when sinkName is empty).
func histogramMean(g prometheus.Gatherer, name, sinkName string) float64 {
	mfs, err := g.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := sinkName == "" || hasLabel(m, "sink", sinkName)
			if h := m.GetHistogram(); match && h != nil && h.GetSampleCount() > 0 {
				return h.GetSampleSum() / float64(h.GetSampleCount())
			}
		}
	}
	return 0
}
