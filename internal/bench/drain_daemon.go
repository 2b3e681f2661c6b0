package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/pki"
	"github.com/decryptd/decryptd/internal/sink"
)

// drainDaemon drains the backlog with decryptd, in process, built from a
// configuration made in code as an operator would write it: mutual TLS,
// shared subscription, local KMS, the file registry, a file sink and a
// dead-letter file both fsynced per batch, the audit log. It is done
// when the records sink has acknowledged holding n records and n messages
// were acknowledged to the broker.
func drainDaemon(ctx context.Context, b *Broker, client pki.Files, id string, o DrainOptions, rootFile, regFile string, round int, label string) (*DrainRun, error) {
	d, reg, records, err := newDrainDaemon(ctx, b, client, id, o, rootFile, regFile, round)
	if err != nil {
		return nil, err
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
	stopDaemon := runDaemon(ctx, d)
	profileGoroutines(o.ProfileDir, round)
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
		return stopDaemon()
	}

	w, err := waitDrained(ctx, reg, sizes, o.Messages, start, &delivered)
	if err != nil {
		_ = shutdown()
		return nil, err
	}
	cpu1, bcpu1 := cpuTime(), procCPU(b.Pid())
	peak := peakRSS()
	run := &DrainRun{
		Side: "decryptd", Messages: o.Messages, Seconds: w.end.Sub(start).Seconds(),
		CPUPerMsgUS:       float64((cpu1 - cpu0).Microseconds()) / float64(o.Messages),
		BrokerCPUPerMsgUS: float64((bcpu1 - bcpu0).Microseconds()) / float64(o.Messages),
		BaseRSS:           base, PeakRSS: peak,
		KMSUnwraps: d.KMSUnwraps(),
	}
	run.Rate = float64(o.Messages) / run.Seconds
	if w.inflightN > 0 {
		run.InFlightMean, run.InFlightMax = w.inflightSum/float64(w.inflightN), w.inflightMax
	}
	daemonFigures(reg, run)
	if err := shutdown(); err != nil {
		return nil, fmt.Errorf("daemon shutdown: %w", err)
	}
	receipt, sink, lines, err := recordLatencies(records, sizes.samples, start)
	if err != nil {
		return nil, err
	}
	if lines < int64(o.Messages) {
		return nil, fmt.Errorf("sink file holds %d records, the sink acknowledged %.0f", lines, w.last.delivered)
	}
	run.Receipt, run.Sink = receipt, &sink
	return run, nil
}

// newDrainDaemon builds round's daemon (not yet running) on the local root
// key and the registry the fleet was provisioned into; records is its
// records sink's file.
func newDrainDaemon(ctx context.Context, b *Broker, client pki.Files, id string, o DrainOptions, rootFile, regFile string, round int) (_ *daemon.Daemon, _ *prometheus.Registry, records string, _ error) {
	dir := filepath.Join(o.Dir, fmt.Sprintf("decryptd-%d", round))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, "", err
	}
	cfg := daemonConfig(dir, b.URL, client, id, o.Workers, o.MaxInFlight, regFile)
	cfg.MQTT.Connections = o.Connections
	if o.Plain {
		cfg.MQTT.Brokers, cfg.MQTT.AllowPlaintext = []string{b.PlainURL}, true
	}
	cfg.KMS = config.KMS{Provider: config.ProviderLocal, Local: config.LocalKMS{RootKeyFile: rootFile}}
	if o.AuditDir != "" {
		cfg.Audit.Path = filepath.Join(o.AuditDir, fmt.Sprintf("audit-drain-%d.log", round))
	}
	if err := cfg.Validate(); err != nil {
		return nil, nil, "", fmt.Errorf("config: %w", err)
	}
	reg := prometheus.NewRegistry()
	d, err := daemon.New(ctx, daemon.Options{Config: cfg, Registry: reg, Logger: o.Logger, Version: "bench"})
	if err != nil {
		return nil, nil, "", fmt.Errorf("daemon.New: %w", err)
	}
	return d, reg, filepath.Join(dir, "records.jsonl"), nil
}

// profileGoroutines (with a profile directory) writes where the goroutines
// wait: early on, while keys are being loaded, and later, in the steady
// state of a long drain.
func profileGoroutines(dir string, round int) {
	if dir == "" {
		return
	}
	for _, at := range []time.Duration{1500 * time.Millisecond, 10 * time.Second} {
		time.AfterFunc(at, func() {
			if f, err := os.Create(filepath.Join(dir, fmt.Sprintf("goroutines-%d-at-%s.txt", round, at))); err == nil {
				_ = pprof.Lookup("goroutine").WriteTo(f, 1)
				f.Close()
			}
		})
	}
}

// drainWatch is what waitDrained saw: when the drain ended, the in-flight
// samples and the last gather.
type drainWatch struct {
	end                      time.Time
	inflightSum, inflightMax float64
	inflightN                int
	last                     drainGauges
}

// waitDrained waits until the records sink has acknowledged every record
// and every message was acknowledged to the broker. This loop runs in the
// process whose CPU is charged to decryptd, so it does little: every 2 ms
// one lseek of the sink file, to record the timeline of its size (the file
// is read once, after the drain, to date each line by it), and a gather of
// the daemon's registry, which costs hundreds of µs, only every 100 ms (the
// in-flight sample) and, as the end nears, at half the time the remaining
// records should take at the recent pace: a dozen more gathers, with the
// end seen within about a poll. delivered follows the sink's count.
func waitDrained(ctx context.Context, reg prometheus.Gatherer, sizes *sizeTimeline, messages int, start time.Time, delivered *atomic.Int64) (drainWatch, error) {
	deadline := start.Add(10 * time.Minute)
	var w drainWatch
	var gatherErr error
	var rate float64 // records/s delivered over the last window of at least 100 ms
	from, fromAt := drainGauges{}, start
	nextSample, nextCheck := start, start
	for {
		if err := sizes.poll(start); err != nil {
			return w, err
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
				w.last = g
				delivered.Store(int64(g.delivered))
				if g.delivered >= float64(messages) && g.acked >= float64(messages) {
					w.end = time.Now()
					// The sink counts a record once its write returned: the
					// lines written since this loop's size poll are in the
					// file now, and one more poll gives each a sample (else
					// the last few records had no sink latency).
					return w, sizes.poll(start)
				}
				if sample {
					w.inflightSum, w.inflightN, w.inflightMax = w.inflightSum+g.inflight, w.inflightN+1, max(w.inflightMax, g.inflight)
				}
				if span := now.Sub(fromAt); span >= sampleEvery {
					rate = (g.delivered - from.delivered) / span.Seconds()
					from, fromAt = g, now
				}
			}
			nextCheck = now.Add(checkIn(float64(messages)-w.last.delivered, rate))
		}
		if err := ctx.Err(); err != nil {
			return w, err
		}
		if now.After(deadline) {
			return w, fmt.Errorf("after 10 minutes the sink acknowledged %.0f of %d records and %.0f messages were acknowledged (last gather: %v)",
				w.last.delivered, messages, w.last.acked, gatherErr)
		}
		time.Sleep(pollEvery)
	}
}

// daemonFigures reads the daemon's own metrics into run.
func daemonFigures(reg prometheus.Gatherer, run *DrainRun) {
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
	// One session, the one the harness prepared and wipes (the drain sets
	// its own count and prepares each session): a default that followed
	// GOMAXPROCS would leave sessions in the group that later backlogs
	// are split into.
	cfg.MQTT.Connections = 1
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

// runDaemon runs d until the returned stop is called; stop waits up to a
// minute for Run to return and gives its error.
func runDaemon(ctx context.Context, d *daemon.Daemon) (stop func() error) {
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(runCtx) }()
	return func() error {
		stopRun()
		select {
		case err := <-runErr:
			return err
		case <-time.After(time.Minute):
			return errors.New("daemon did not stop within a minute")
		}
	}
}
