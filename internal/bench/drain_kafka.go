package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/fleet"
	"github.com/decryptd/decryptd/internal/kms/local"
)

// The Kafka drain's topic and the header holding each record's MQTT topic
// (kafka.topic_header's default), as a bridge from MQTT writes them.
const (
	kafkaTopic       = "device-events"
	kafkaTopicHeader = "mqtt_topic"
)

// KafkaDrainOptions configure the Kafka drain: one backlog in an in-process
// Kafka (kfake, one broker on a 127.0.0.1 port) or in the Kafka that
// Brokers names, drained from the start of the topic by a bare franz-go
// group consumer and by decryptd (input.type kafka), alternately, each in a
// consumer group of its own.
type KafkaDrainOptions struct {
	Dir        string
	Messages   int // backlog (default 200,000)
	Devices    int // default 5,000
	Partitions int // default 12
	Rounds     int // a,b pairs (default 3)
	// MaxInFlight is decryptd's kafka.max_in_flight (default: the
	// configuration's kafka default).
	MaxInFlight int
	// Brokers, when set, is a Kafka the bench does not start: a kfake in a
	// process of its own (ServeKfake: pinned to CPUs of its own, as the MQTT
	// drain pins Mosquitto, its fetch work is then neither charged to the
	// drainers' CPU nor slowed by their garbage collection) or a real
	// cluster (plaintext, no SASL). The bench creates a topic of its own
	// there (decryptd-bench-<nanoseconds>, Partitions partitions,
	// replication factor 1 unless the cluster's default applies) and
	// deletes it at the end.
	Brokers []string
	// BrokerPID, when set, is the local broker process whose CPU time each
	// drain reports per record (KafkaDrainRun.BrokerCPUPerMsgUS).
	BrokerPID  int
	ProfileDir string
	Progress   io.Writer
	Logger     *zap.Logger
}

func (o *KafkaDrainOptions) defaults() {
	if o.Messages <= 0 {
		o.Messages = 200_000
	}
	if o.Devices <= 0 {
		o.Devices = 5_000
	}
	if o.Partitions <= 0 {
		o.Partitions = 12
	}
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
}

// KafkaDrainRun is one timed drain of the Kafka backlog.
type KafkaDrainRun struct {
	Side     string `json:"side"` // "bare" or "decryptd"
	Round    int    `json:"round"`
	Messages int    `json:"messages"`
	// Seconds is the whole drain, from the client's (or daemon's) start
	// to the last record; JoinSeconds its part before the first record
	// (joining the group, the first fetch; for decryptd also the start and
	// the first batch written). Rate is taken after it: the records from
	// the first poll (bare) or the first sink write (decryptd) on, over
	// the time since, so the group join, the same for both, does not
	// dominate a short drain.
	Seconds     float64 `json:"seconds"`
	JoinSeconds float64 `json:"join_seconds"`
	Rate        float64 `json:"msg_per_s"`
	// CPUPerMsgUS is this process's CPU time over the drain per message:
	// the drainer's, and the broker's too when kfake runs in this process
	// (KafkaDrainResult.Broker says where it ran).
	CPUPerMsgUS float64 `json:"cpu_us_per_msg"`
	// BrokerCPUPerMsgUS is the broker process's CPU time over the drain
	// per message, when KafkaDrainOptions.BrokerPID names it.
	BrokerCPUPerMsgUS float64 `json:"broker_cpu_us_per_msg,omitempty"`
	PeakRSS           int64   `json:"peak_rss_bytes"`
	// decryptd only, from its metrics.
	KMSUnwraps  uint64  `json:"kms_unwraps,omitempty"`
	Delivered   float64 `json:"delivered,omitempty"`
	DeadLetters float64 `json:"dead_letters,omitempty"`
	Duplicates  float64 `json:"duplicates,omitempty"`
	SinkBatch   float64 `json:"sink_batch_mean,omitempty"`
	SinkWriteMS float64 `json:"sink_write_mean_ms,omitempty"`
	DecryptUS   float64 `json:"decrypt_mean_us,omitempty"`
	// KeysSeconds is when (since the start) the daemon had unwrapped
	// every distinct key of the backlog, the end of its cold phase;
	// RateAfterKeys the records delivered after that over the time to the
	// end: the drain's rate without the cold phase (0 when fewer than a
	// tenth of the records were left by then).
	KeysSeconds   float64 `json:"keys_loaded_seconds,omitempty"`
	RateAfterKeys float64 `json:"msg_per_s_after_keys,omitempty"`
}

// KafkaDrainResult is the Kafka drain benchmark.
type KafkaDrainResult struct {
	Messages   int `json:"messages"`
	Devices    int `json:"devices"`
	Partitions int `json:"partitions"`
	// Broker is where the backlog was: "kfake in process", or the
	// brokers given (KafkaDrainOptions.Brokers); Topic its topic.
	Broker       string          `json:"broker"`
	Topic        string          `json:"topic"`
	DistinctKeys int             `json:"distinct_key_versions"`
	MaxInFlight  int             `json:"max_in_flight"`
	GOMAXPROCS   int             `json:"gomaxprocs"`
	ProduceRate  float64         `json:"produce_msg_per_s"`
	PayloadAvg   float64         `json:"payload_avg_bytes"`
	Runs         []KafkaDrainRun `json:"runs"`
	BareMedian   float64         `json:"bare_median_msg_per_s"`
	// Ratio is DecryptdMedian / BareMedian; RoundRatios the same per pair.
	DecryptdMedian float64   `json:"decryptd_median_msg_per_s"`
	Ratio          float64   `json:"ratio"`
	RoundRatios    []float64 `json:"round_ratios"`
}

// KafkaDrain runs the Kafka drain benchmark: one broker, one fleet, one
// backlog, then Rounds pairs of drains, the bare consumer first.
func KafkaDrain(ctx context.Context, o KafkaDrainOptions) (*KafkaDrainResult, error) {
	o.defaults()
	say := func(format string, args ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", args...)
		}
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = config.Default().Kafka.MaxInFlight
	}
	brokers, topic, broker := o.Brokers, kafkaTopic, "kfake in process"
	if len(brokers) == 0 {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(int32(o.Partitions), kafkaTopic))
		if err != nil {
			return nil, fmt.Errorf("kfake: %w", err)
		}
		defer c.Close()
		brokers = c.ListenAddrs()
	} else {
		topic, broker = fmt.Sprintf("decryptd-bench-%d", time.Now().UnixNano()), strings.Join(brokers, ",")
		if err := createTopic(ctx, brokers, topic, o.Partitions); err != nil {
			return nil, err
		}
		defer deleteTopic(brokers, topic)
	}
	t := kafkaTarget{brokers: brokers, topic: topic, brokerPID: o.BrokerPID}

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
	f, err := provision(ctx, o.Devices, lp, regFile, 16, nil)
	if err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	res := &KafkaDrainResult{Messages: o.Messages, Devices: o.Devices, Partitions: o.Partitions, Broker: broker, Topic: topic, DistinctKeys: f.Keys(),
		MaxInFlight: o.MaxInFlight, GOMAXPROCS: runtime.GOMAXPROCS(0)}
	start := time.Now()
	size, err := produceKafkaBacklog(ctx, t, f, o.Messages, o.Progress)
	if err != nil {
		return nil, err
	}
	res.ProduceRate = float64(o.Messages) / time.Since(start).Seconds()
	res.PayloadAvg = float64(size) / float64(o.Messages)
	say("kafka drain: backlog of %d records (%.0f B average) over %d partitions produced at %.0f msg/s",
		o.Messages, res.PayloadAvg, o.Partitions, res.ProduceRate)

	var bare, dec []float64
	for r := 1; r <= o.Rounds; r++ {
		for _, side := range []string{"bare", "decryptd"} {
			label := fmt.Sprintf("kafka round %d/%d %s", r, o.Rounds, side)
			stopProfile, err := startProfile(o.ProfileDir, fmt.Sprintf("kafka-%s-%d", side, r))
			if err != nil {
				return nil, err
			}
			var run *KafkaDrainRun
			if side == "bare" {
				run, err = drainKafkaBare(ctx, t, fmt.Sprintf("bench-bare-%d", r), o.Messages, o.Progress, label)
			} else {
				run, err = drainKafkaDaemon(ctx, t, fmt.Sprintf("bench-decryptd-%d", r), o, rootFile, regFile, r, label, res.DistinctKeys)
			}
			stopProfile()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", label, err)
			}
			run.Round = r
			say("%s: drained %d in %.2f s (first record after %.2f s), %.0f msg/s after it, %.1f µs CPU/msg (%s), peak RSS %d MiB",
				label, run.Messages, run.Seconds, run.JoinSeconds, run.Rate, run.CPUPerMsgUS, cpuScope(len(o.Brokers) == 0, run.BrokerCPUPerMsgUS), run.PeakRSS>>20)
			if run.KeysSeconds > 0 {
				say("%s: every key loaded after %.2f s, %.0f msg/s after that", label, run.KeysSeconds, run.RateAfterKeys)
			}
			if side == "bare" {
				bare = append(bare, run.Rate)
			} else {
				dec = append(dec, run.Rate)
				res.RoundRatios = append(res.RoundRatios, run.Rate/bare[len(bare)-1])
			}
			res.Runs = append(res.Runs, *run)
		}
	}
	res.BareMedian, res.DecryptdMedian = median(bare), median(dec)
	res.Ratio = res.DecryptdMedian / res.BareMedian
	return res, nil
}

// produceKafkaBacklog writes n records as a bridge from MQTT does: the
// fleet's devices in turn, value = the envelope v1 payload, key = the
// device id, header mqtt_topic = its MQTT topic; franz-go's producer
// defaults (acks=all, idempotent, the key hashed to a partition as the
// Java client does). It returns the payload bytes once every record is
// acknowledged.
func produceKafkaBacklog(ctx context.Context, t kafkaTarget, f *fleet.Fleet, n int, progress io.Writer) (int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(t.brokers...), kgo.DefaultProduceTopic(t.topic),
		kgo.ProducerLinger(5*time.Millisecond), kgo.MaxBufferedRecords(50_000))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	devices := f.Devices()
	g, err := fleet.NewGenerator(devices, fleet.DefaultMix(), 7, nil)
	if err != nil {
		return 0, err
	}
	var acked atomic.Int64
	var failed atomic.Value
	start := time.Now()
	stop := reportEvery(progress, time.Second, func() string {
		a := acked.Load()
		return fmt.Sprintf("kafka backlog: produced %d/%d (%.0f msg/s)", a, n, float64(a)/time.Since(start).Seconds())
	})
	defer stop()
	var size int64
	for i := range n {
		d := devices[i%len(devices)]
		m, err := g.Next(d, time.Now().Unix())
		if err != nil {
			return 0, err
		}
		size += int64(len(m.Payload))
		r := &kgo.Record{Key: []byte(d.ID), Value: m.Payload, Headers: []kgo.RecordHeader{{Key: kafkaTopicHeader, Value: []byte(m.Topic)}}}
		cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
			if err != nil {
				failed.CompareAndSwap(nil, err)
				return
			}
			acked.Add(1)
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return 0, err
	}
	if err, _ := failed.Load().(error); err != nil {
		return 0, fmt.Errorf("produce: %w", err)
	}
	return size, nil
}

// drainKafkaBare drains the topic with a bare franz-go group consumer:
// a group of its own starting at the beginning of each partition, the
// cooperative-sticky balancer (as decryptd's input), records counted and
// nothing else done with them, offsets committed by franz-go's
// auto-commit every second and once more at the end. The transport's own
// limit. It reads committed records only, as decryptd's input does (a
// bridge that produces in transactions must not have its aborted records
// decrypted): like with like, since the isolation level changes the
// broker's fetch work (how much, for kfake, was within this machine's
// noise: BENCHMARKS.md).
func drainKafkaBare(ctx context.Context, t kafkaTarget, group string, n int, progress io.Writer, label string) (*KafkaDrainRun, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(t.brokers...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(t.topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.AutoCommitInterval(time.Second), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var count atomic.Int64
	settle()
	if err := resetPeakRSS(); err != nil {
		return nil, fmt.Errorf("reset peak RSS: %w", err)
	}
	cpu0, bcpu0 := cpuTime(), t.brokerCPU()
	start := time.Now()
	stop := reportEvery(progress, time.Second, func() string {
		k := count.Load()
		return fmt.Sprintf("%s: drained %d/%d (%.0f msg/s)", label, k, n, float64(k)/time.Since(start).Seconds())
	})
	defer stop()
	deadline := start.Add(10 * time.Minute)
	var sum int
	var first time.Time
	var atFirst int64
	for count.Load() < int64(n) {
		pctx, cancel := context.WithDeadline(ctx, deadline)
		fs := cl.PollFetches(pctx)
		cancel()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("drained %d of %d in 10 minutes", count.Load(), n)
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) {
				ferr = err
			}
		})
		if ferr != nil {
			return nil, ferr
		}
		fs.EachRecord(func(r *kgo.Record) { sum += len(r.Value) })
		k := count.Add(int64(fs.NumRecords()))
		if first.IsZero() && k > 0 {
			first, atFirst = time.Now(), k
		}
	}
	end := time.Now()
	cpu1, bcpu1 := cpuTime(), t.brokerCPU()
	peak := peakRSS()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := cl.CommitUncommittedOffsets(cctx); err != nil {
		return nil, fmt.Errorf("final commit: %w", err)
	}
	if sum == 0 {
		return nil, errors.New("drained empty records")
	}
	run := &KafkaDrainRun{Side: "bare", Messages: n, Seconds: end.Sub(start).Seconds(), JoinSeconds: first.Sub(start).Seconds(),
		CPUPerMsgUS: float64((cpu1 - cpu0).Microseconds()) / float64(n), PeakRSS: peak, BrokerCPUPerMsgUS: t.perMsgUS(bcpu1-bcpu0, n)}
	run.Rate = rateAfterFirst(n, float64(atFirst), first, end, start)
	return run, nil
}

// drainKafkaDaemon drains the topic with decryptd in process, configured
// as an operator would (a YAML file: input.type kafka, a group of its own,
// the local KMS and the file registry the fleet was provisioned into, a
// file sink and a dead-letter file both fsynced per batch, the audit log),
// until its records sink has acknowledged holding every record.
func drainKafkaDaemon(ctx context.Context, t kafkaTarget, group string, o KafkaDrainOptions, rootFile, regFile string, round int, label string, keys int) (*KafkaDrainRun, error) {
	dir := filepath.Join(o.Dir, fmt.Sprintf("decryptd-kafka-%d", round))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(kafkaDaemonConfig(dir, t.brokers, t.topic, group, o.MaxInFlight, rootFile, regFile)), 0o600); err != nil {
		return nil, err
	}
	cfg, err := config.Load(path, func(string) (string, bool) { return "", false })
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	reg := prometheus.NewRegistry()
	d, err := daemon.New(ctx, daemon.Options{Config: cfg, Registry: reg, Logger: o.Logger, Version: "bench"})
	if err != nil {
		return nil, fmt.Errorf("daemon.New: %w", err)
	}
	settle()
	if err := resetPeakRSS(); err != nil {
		_ = d.Close(context.Background())
		return nil, fmt.Errorf("reset peak RSS: %w", err)
	}
	cpu0, bcpu0 := cpuTime(), t.brokerCPU()
	start := time.Now()
	stopDaemon := runDaemon(ctx, d)
	if o.ProfileDir != "" {
		// Where the goroutines wait, once the drain is under way.
		time.AfterFunc(2*time.Second, func() {
			if f, err := os.Create(filepath.Join(o.ProfileDir, fmt.Sprintf("kafka-goroutines-%d.txt", round))); err == nil {
				_ = pprof.Lookup("goroutine").WriteTo(f, 1)
				f.Close()
			}
		})
	}
	var delivered atomic.Int64
	stopProgress := reportEvery(o.Progress, time.Second, func() string {
		k := delivered.Load()
		return fmt.Sprintf("%s: drained %d/%d (%.0f msg/s)", label, k, o.Messages, float64(k)/time.Since(start).Seconds())
	})
	shutdown := func() error {
		stopProgress()
		return stopDaemon()
	}
	records := filepath.Join(dir, "records.jsonl")
	keysLoaded := func() bool { return d.KMSUnwraps() >= uint64(keys) }
	w, err := waitKafkaDrained(ctx, reg, records, o.Messages, start, &delivered, keysLoaded)
	if err != nil {
		_ = shutdown()
		return nil, err
	}
	cpu1, bcpu1 := cpuTime(), t.brokerCPU()
	run := &KafkaDrainRun{Side: "decryptd", Messages: o.Messages, Seconds: w.end.Sub(start).Seconds(), JoinSeconds: w.first.Sub(start).Seconds(),
		CPUPerMsgUS: float64((cpu1 - cpu0).Microseconds()) / float64(o.Messages), PeakRSS: peakRSS(), KMSUnwraps: d.KMSUnwraps(),
		BrokerCPUPerMsgUS: t.perMsgUS(bcpu1-bcpu0, o.Messages)}
	run.Rate = rateAfterFirst(o.Messages, w.atFirst, w.first, w.end, start)
	if !w.keys.IsZero() {
		run.KeysSeconds = w.keys.Sub(start).Seconds()
		if rest, span := float64(o.Messages)-w.atKeys, w.end.Sub(w.keys).Seconds(); rest >= float64(o.Messages)/10 && span > 0 {
			run.RateAfterKeys = rest / span
		}
	}
	run.Delivered, _ = metricSum(reg, "decryptd_records_delivered_total")
	run.DeadLetters, _ = metricSum(reg, "decryptd_dead_letters_total")
	run.Duplicates, _ = metricSum(reg, "decryptd_duplicates_total")
	run.SinkBatch = histogramMean(reg, "decryptd_sink_batch_records", recordsSink)
	run.SinkWriteMS = histogramMean(reg, "decryptd_sink_write_duration_seconds", recordsSink) * 1000
	run.DecryptUS = histogramMean(reg, "decryptd_decrypt_duration_seconds", "") * 1e6
	if err := shutdown(); err != nil {
		return nil, fmt.Errorf("daemon shutdown: %w", err)
	}
	if run.DeadLetters != 0 {
		return nil, fmt.Errorf("%.0f messages dead-lettered", run.DeadLetters)
	}
	return run, nil
}

// rateAfterFirst is the drain's rate from its first records on: the n
// records less the atFirst already there at first, over the time from
// first to end. When the first poll or write already held nearly all of
// them (a tiny backlog), it is the whole drain's rate from start.
func rateAfterFirst(n int, atFirst float64, first, end, start time.Time) float64 {
	rest, span := float64(n)-atFirst, end.Sub(first).Seconds()
	if rest < float64(n)/10 || span <= 0 {
		return float64(n) / end.Sub(start).Seconds()
	}
	return rest / span
}

// kafkaWatch is what waitKafkaDrained saw: when the sink's file first held
// a record and the records the sink had acknowledged then, and when the
// sink had acknowledged every record.
type kafkaWatch struct {
	first, end time.Time
	atFirst    float64
	// keys: when keysLoaded first held, and the records acknowledged then.
	keys   time.Time
	atKeys float64
}

// waitKafkaDrained waits until the records sink has acknowledged n records.
// It runs in the process whose CPU is charged to decryptd, so it does
// little: every 2 ms a stat of the sink file until it holds a record, then
// a gather of the daemon's registry (hundreds of µs) at half the time the
// remaining records should take at the recent pace (checkIn), so the end
// is seen within a poll or two.
//
// keysLoaded (an atomic load) is asked at every poll until it holds; then
// one gather notes the records acknowledged at that time (kafkaWatch.keys).
func waitKafkaDrained(ctx context.Context, reg prometheus.Gatherer, records string, n int, start time.Time, delivered *atomic.Int64, keysLoaded func() bool) (kafkaWatch, error) {
	var w kafkaWatch
	deadline := start.Add(10 * time.Minute)
	var rate, from float64
	var fromAt, nextCheck time.Time
	for {
		now := time.Now()
		if w.keys.IsZero() && keysLoaded != nil && keysLoaded() {
			g, err := gatherDrain(reg)
			if err != nil {
				return w, err
			}
			w.keys, w.atKeys = now, g.delivered
		}
		if w.first.IsZero() {
			if fi, err := os.Stat(records); err == nil && fi.Size() > 0 {
				g, err := gatherDrain(reg)
				if err != nil {
					return w, err
				}
				w.first, w.atFirst, from, fromAt, nextCheck = now, g.delivered, g.delivered, now, now
			}
		} else if !now.Before(nextCheck) {
			g, err := gatherDrain(reg)
			if err != nil {
				return w, err
			}
			delivered.Store(int64(g.delivered))
			if g.delivered >= float64(n) {
				w.end = time.Now()
				return w, nil
			}
			if span := now.Sub(fromAt); span >= sampleEvery {
				rate, from, fromAt = (g.delivered-from)/span.Seconds(), g.delivered, now
			}
			nextCheck = now.Add(checkIn(float64(n)-g.delivered, rate))
		}
		if err := ctx.Err(); err != nil {
			return w, err
		}
		if now.After(deadline) {
			return w, fmt.Errorf("after 10 minutes the sink acknowledged %d of %d records", delivered.Load(), n)
		}
		time.Sleep(pollEvery)
	}
}

// kafkaDaemonConfig is the configuration file of the Kafka drain's daemon:
// the agreed kafka input section, and the rest as daemonConfig (the MQTT
// drain's) has it.
func kafkaDaemonConfig(dir string, brokers []string, topic, group string, maxInFlight int, rootFile, regFile string) string {
	q := make([]string, len(brokers))
	for i, b := range brokers {
		q[i] = fmt.Sprintf("%q", b)
	}
	var b strings.Builder
	b.WriteString("input:\n  type: kafka\n")
	fmt.Fprintf(&b, "kafka:\n  brokers: [%s]\n  group: %q\n  topics: [%q]\n  topic_header: %q\n  max_in_flight: %d\n  allow_plaintext: true\n",
		strings.Join(q, ", "), group, topic, kafkaTopicHeader, maxInFlight)
	fmt.Fprintf(&b, "kms:\n  provider: local\n  local:\n    root_key_file: %q\n", rootFile)
	fmt.Fprintf(&b, "registry:\n  driver: file\n  path: %q\n", regFile)
	// Large enough that the file never rotates during a drain.
	fmt.Fprintf(&b, "sinks:\n  - name: %s\n    type: file\n    path: %q\n    max_bytes: %d\n    keep: 1\n    fsync: true\n",
		recordsSink, filepath.Join(dir, "records.jsonl"), int64(16)<<30)
	fmt.Fprintf(&b, "dead_letter:\n  type: file\n  path: %q\n  fsync: true\n", filepath.Join(dir, "dead-letter.jsonl"))
	b.WriteString("metrics:\n  listen: 127.0.0.1:0\n")
	fmt.Fprintf(&b, "audit:\n  path: %q\n", filepath.Join(dir, "audit.log"))
	b.WriteString("shutdown_timeout: 30s\n")
	return b.String()
}

// WriteSummary prints the Kafka drain's runs, medians and ratio.
func (r *KafkaDrainResult) WriteSummary(w io.Writer) {
	inProcess := r.Broker == "" || r.Broker == "kfake in process"
	fmt.Fprintf(w, "\nkafka drain: %d records (%.0f B average), %d devices, %d partitions (%s), decryptd kafka.max_in_flight %d\n",
		r.Messages, r.PayloadAvg, r.Devices, r.Partitions, r.Broker, r.MaxInFlight)
	cpuHead := "CPU µs/msg"
	if inProcess {
		cpuHead = "CPU µs/msg (+kfake)"
	}
	fmt.Fprintf(w, "  %-5s %-8s %9s %8s %8s %20s %12s %9s %8s %7s %18s\n", "round", "side", "msg/s", "s", "join s", cpuHead, "broker µs/msg", "peak MiB", "unwraps", "keys s", "msg/s after keys")
	for _, run := range r.Runs {
		keys, after := "", ""
		if run.KeysSeconds > 0 {
			keys = fmt.Sprintf("%.2f", run.KeysSeconds)
		}
		if run.RateAfterKeys > 0 {
			after = fmt.Sprintf("%.0f", run.RateAfterKeys)
		}
		broker := ""
		if run.BrokerCPUPerMsgUS > 0 {
			broker = fmt.Sprintf("%.1f", run.BrokerCPUPerMsgUS)
		}
		fmt.Fprintf(w, "  %-5d %-8s %9.0f %8.2f %8.2f %20.1f %12s %9.1f %8d %7s %18s\n", run.Round, run.Side, run.Rate, run.Seconds, run.JoinSeconds,
			run.CPUPerMsgUS, broker, float64(run.PeakRSS)/(1<<20), run.KMSUnwraps, keys, after)
	}
	verdict := "MET"
	if r.Ratio < 0.9 {
		verdict = "NOT MET"
	}
	fmt.Fprintf(w, "  median bare franz-go consumer %.0f msg/s, decryptd %.0f msg/s: ratio %.2f (goal ≥ 0.9: %s); per round %s\n",
		r.BareMedian, r.DecryptdMedian, r.Ratio, verdict, fmtRatios(r.RoundRatios))
}
