package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/pki"
	"github.com/decryptd/decryptd/internal/sink/kafka"
	"github.com/decryptd/decryptd/internal/sink/postgres"
)

// SinkDrainOptions configure the sink drain: one backlog drained by
// decryptd into the file sink, the Kafka sink (an in-process kfake
// cluster) and the PostgreSQL sink, in turn, Rounds times; each analytics
// sink's rate is reported as a ratio to the file sink's in the same run.
type SinkDrainOptions struct {
	Dir      string
	Messages int // backlog per drain (default 50,000)
	Devices  int // default 1,000
	Rounds   int // default 5
	// PostgresDSN is the server the PostgreSQL sink writes to (a table per
	// drain); empty leaves PostgreSQL out.
	PostgresDSN string
	Progress    io.Writer
	Logger      *zap.Logger
}

// SinkDrainRun is one drain into one sink.
type SinkDrainRun struct {
	Sink    string  `json:"sink"` // file, kafka or postgres
	Round   int     `json:"round"`
	Seconds float64 `json:"seconds"`
	Rate    float64 `json:"msg_per_s"`
	// SinkBatch and SinkWriteMS are the mean records per write and the
	// mean duration of one write of the sink.
	SinkBatch   float64 `json:"sink_batch_mean"`
	SinkWriteMS float64 `json:"sink_write_mean_ms"`
}

// SinkDrainResult is the sink drain benchmark.
type SinkDrainResult struct {
	Messages int            `json:"messages"`
	Devices  int            `json:"devices"`
	Runs     []SinkDrainRun `json:"runs"`
	// Medians by sink, and each analytics sink's median over the file
	// sink's (RoundRatios: the same per round).
	Medians     map[string]float64   `json:"median_msg_per_s"`
	Ratios      map[string]float64   `json:"ratio_to_file"`
	RoundRatios map[string][]float64 `json:"round_ratios_to_file"`
}

// SinkDrain runs the sink drain benchmark.
func SinkDrain(ctx context.Context, o SinkDrainOptions) (*SinkDrainResult, error) {
	if o.Messages <= 0 {
		o.Messages = 50_000
	}
	if o.Devices <= 0 {
		o.Devices = 1_000
	}
	if o.Rounds <= 0 {
		o.Rounds = 5
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	say := func(format string, args ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", args...)
		}
	}
	workers, maxInFlight := 0, 0
	daemonDefaults(&workers, &maxInFlight)
	b, err := StartBroker(BrokerOptions{Dir: filepath.Join(o.Dir, "broker"), MaxInflight: maxInFlight, MaxQueued: 2*o.Messages + 1000, Autosave: 60})
	if err != nil {
		return nil, err
	}
	defer b.Stop()
	_, pubTLS, err := b.ClientTLS("telemsim")
	if err != nil {
		return nil, err
	}
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
	f, err := provision(ctx, o.Devices, lp, regFile, 16, nil)
	if err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	sinks := []string{"file", kafka.Type}
	if o.PostgresDSN != "" {
		sinks = append(sinks, postgres.Type)
	}
	res := &SinkDrainResult{Messages: o.Messages, Devices: o.Devices, Medians: map[string]float64{},
		Ratios: map[string]float64{}, RoundRatios: map[string][]float64{}}
	rates := map[string][]float64{}
	for r := 1; r <= o.Rounds; r++ {
		for _, kind := range sinks {
			id := fmt.Sprintf("bench-sink-%s-%d", kind, r)
			label := fmt.Sprintf("sinks round %d/%d %s", r, o.Rounds, kind)
			if err := prepareSession(b.URL, drainTLS, id); err != nil {
				return nil, err
			}
			if _, err := publishBacklog(ctx, b.URL, pubTLS, f, o.Messages, 8, uint64(r*100+len(kind)), nil, label); err != nil {
				return nil, err
			}
			run, err := drainInto(ctx, b, drainFiles, id, kind, r, o, workers, maxInFlight, rootFile, regFile)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", label, err)
			}
			if err := wipeSession(b.URL, drainTLS, id); err != nil {
				return nil, err
			}
			say("%s: drained %d in %.2f s = %.0f msg/s (%.0f records per write, %.2f ms per write)",
				label, o.Messages, run.Seconds, run.Rate, run.SinkBatch, run.SinkWriteMS)
			res.Runs = append(res.Runs, *run)
			rates[kind] = append(rates[kind], run.Rate)
			if kind != "file" {
				res.RoundRatios[kind] = append(res.RoundRatios[kind], run.Rate/rates["file"][len(rates["file"])-1])
			}
		}
	}
	for _, kind := range sinks {
		res.Medians[kind] = median(rates[kind])
		if kind != "file" {
			res.Ratios[kind] = res.Medians[kind] / res.Medians["file"]
		}
	}
	return res, nil
}

// drainInto runs decryptd in process with one sink of the kind, named
// "records", until it holds the whole backlog and every message is
// acknowledged.
func drainInto(ctx context.Context, b *Broker, client pki.Files, id, kind string, round int, o SinkDrainOptions,
	workers, maxInFlight int, rootFile, regFile string) (*SinkDrainRun, error) {
	dir := filepath.Join(o.Dir, fmt.Sprintf("%s-%d", kind, round))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cfg := daemonConfig(dir, b.URL, client, id, workers, maxInFlight, regFile)
	cfg.KMS = config.KMS{Provider: config.ProviderLocal, Local: config.LocalKMS{RootKeyFile: rootFile}}
	switch kind {
	case kafka.Type:
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(6, "telemetry"))
		if err != nil {
			return nil, err
		}
		defer c.Close()
		cfg.Sinks = []config.Sink{{Name: recordsSink, Type: kafka.Type,
			Config: &kafka.Config{Brokers: c.ListenAddrs(), Topic: "telemetry", AllowPlaintext: true}}}
	case postgres.Type:
		cfg.Sinks = []config.Sink{{Name: recordsSink, Type: postgres.Type,
			Config: &postgres.Config{DSNEnv: "DECRYPTD_BENCH_PG_DSN", Table: fmt.Sprintf("bench_records_%d_%d", time.Now().Unix(), round)}}}
		// The DSN may carry a password, which the sink takes only from the
		// environment (dsn_env), as an operator would pass it.
		os.Setenv("DECRYPTD_BENCH_PG_DSN", o.PostgresDSN)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	reg := prometheus.NewRegistry()
	d, err := daemon.New(ctx, daemon.Options{Config: cfg, Registry: reg, Logger: o.Logger, Version: "bench"})
	if err != nil {
		return nil, fmt.Errorf("daemon.New: %w", err)
	}
	settle()
	start := time.Now()
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(runCtx) }()
	shutdown := func() error {
		stopRun()
		select {
		case err := <-runErr:
			return err
		case <-time.After(time.Minute):
			return errors.New("daemon did not stop within a minute")
		}
	}
	deadline := start.Add(10 * time.Minute)
	var end time.Time
	for {
		g, err := gatherDrain(reg)
		if err == nil && g.delivered >= float64(o.Messages) && g.acked >= float64(o.Messages) {
			end = time.Now()
			break
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			_ = shutdown()
			return nil, fmt.Errorf("drain into %s did not finish (delivered %.0f of %d): %v", kind, g.delivered, o.Messages, ctx.Err())
		}
		time.Sleep(5 * time.Millisecond)
	}
	run := &SinkDrainRun{Sink: kind, Round: round, Seconds: end.Sub(start).Seconds()}
	run.Rate = float64(o.Messages) / run.Seconds
	run.SinkBatch = histogramMean(reg, "decryptd_sink_batch_records", recordsSink)
	run.SinkWriteMS = histogramMean(reg, "decryptd_sink_write_duration_seconds", recordsSink) * 1000
	if err := shutdown(); err != nil {
		return nil, fmt.Errorf("daemon shutdown: %w", err)
	}
	return run, nil
}

// WriteSummary prints the sink drain's medians and ratios.
func (r *SinkDrainResult) WriteSummary(w io.Writer) {
	fmt.Fprintf(w, "sink drain (%d messages, %d devices): file %.0f msg/s", r.Messages, r.Devices, r.Medians["file"])
	for _, k := range []string{kafka.Type, postgres.Type} {
		if m, ok := r.Medians[k]; ok {
			fmt.Fprintf(w, "; %s %.0f msg/s = %.2fx the file sink (rounds %s)", k, m, r.Ratios[k], fmtRatios(r.RoundRatios[k]))
		}
	}
	fmt.Fprintln(w)
}
