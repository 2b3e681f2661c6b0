// Command decryptd-bench runs decryptd's benchmark harness (package
// internal/bench): the end-to-end drain of a backlog by decryptd against
// a bare MQTT subscriber, the same for a Kafka backlog against a bare
// franz-go consumer (-input), and the cold start against the Key Protect
// emulator. It writes the results as JSON and the chart as SVG, and prints
// a summary. scripts/bench.sh (make bench) runs it after the Go
// micro-benchmarks, whose output it takes with -micro.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/decryptd/decryptd/internal/bench"
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	buildversion "github.com/decryptd/decryptd/internal/version"
)

func main() { os.Exit(run()) }

func run() int {
	var do bench.DrainOptions
	var co bench.ColdStartOptions
	// decryptd's own defaults, so that the benchmark measures what an
	// operator gets without setting them.
	def := config.Default()
	fs := flag.NewFlagSet("decryptd-bench", flag.ContinueOnError)
	drain := fs.Bool("drain", true, "run the drain benchmark (of the inputs -input names)")
	input := fs.String("input", "both", "drain: which input's backlog: mqtt (Mosquitto, against a bare paho subscriber), kafka (kfake, against a bare franz-go consumer) or both")
	var ko bench.KafkaDrainOptions
	fs.IntVar(&ko.Partitions, "kafka-partitions", 12, "kafka drain: partitions of the topic")
	fs.IntVar(&ko.MaxInFlight, "kafka-max-in-flight", def.Kafka.MaxInFlight, "kafka drain: decryptd kafka.max_in_flight")
	kafkaBrokers := fs.String("kafka-brokers", "", "kafka drain: a Kafka to use instead of kfake in this process (host:port,...; plaintext): -serve-kfake's, or a cluster; the bench creates and deletes a topic of its own there")
	fs.IntVar(&ko.BrokerPID, "kafka-broker-pid", 0, "kafka drain: the local broker process of -kafka-brokers, whose CPU per record each drain reports")
	serveKfake := fs.String("serve-kfake", "", "run nothing else: serve an empty kfake on this 127.0.0.1:port until interrupted (the Kafka drain's broker in a process of its own, for -kafka-brokers; pin it with taskset)")
	cold := fs.Bool("cold", true, "run the cold start benchmark")
	var so bench.SinkDrainOptions
	sinks := fs.Bool("sinks", true, "run the sink drain: file, Kafka (kfake) and PostgreSQL sinks, as ratios to the file sink")
	fs.IntVar(&so.Messages, "sinks-messages", 50_000, "sink drain: backlog size per drain")
	fs.IntVar(&so.Devices, "sinks-devices", 1_000, "sink drain: devices")
	fs.IntVar(&so.Rounds, "sinks-rounds", 5, "sink drain: rounds (file, kafka, postgres each); the ratios are of the medians")
	fs.StringVar(&so.PostgresDSN, "pg-dsn", os.Getenv("DECRYPTD_TEST_PG_DSN"), "sink drain: PostgreSQL server (empty: leave PostgreSQL out)")
	fs.IntVar(&do.Messages, "messages", 200_000, "drain: backlog size per drain")
	fs.IntVar(&do.Devices, "devices", 5_000, "drain: devices, one key each")
	fs.IntVar(&do.Rounds, "rounds", 3, "drain: pairs of drains (bare, then decryptd); the ratio is of the medians")
	fs.IntVar(&do.Workers, "workers", def.MQTT.Workers, "drain: decryptd mqtt.workers")
	fs.IntVar(&do.MaxInFlight, "max-in-flight", def.MQTT.MaxInFlight, "drain: decryptd mqtt.max_in_flight")
	fs.BoolVar(&do.Plain, "plain", false, "drain: the drainers (bare, mosquitto_sub, decryptd) connect over plain TCP instead of mutual TLS (issue 17's figures were plain TCP)")
	fs.IntVar(&do.Connections, "connections", 0, "drain: decryptd mqtt.connections (0: decryptd's default, GOMAXPROCS/2 between 1 and 4); the backlog is queued for that many sessions")
	fs.StringVar(&bench.MosquittoPath, "mosquitto", "", "the Mosquitto broker binary (default: mosquitto on PATH, else "+bench.MosquittoBinary+")")
	csub := fs.String("mosquitto-sub", "", "drain: the mosquitto_sub binary of the C-client baseline (default: on PATH, else "+bench.MosquittoSubBinary+"; none: leave the baseline out)")
	fs.IntVar(&do.BrokerInflight, "broker-inflight", 0, "drain: Mosquitto max_inflight_messages for both drainers (default: -max-in-flight)")
	fs.IntVar(&do.Autosave, "autosave", 60, "drain: Mosquitto autosave_interval in seconds")
	fs.StringVar(&do.BrokerCPUs, "broker-cpus", "", "drain: run Mosquitto on these CPUs (taskset -c list); start the bench under taskset on the others")
	fs.StringVar(&do.ProfileDir, "profile-dir", "", "drain: write a CPU profile of each timed drain into this directory")
	fs.IntVar(&co.Devices, "cold-devices", 20_000, "cold start: devices, one key and one first message each")
	fs.DurationVar(&co.KMSLatency, "cold-latency", 20*time.Millisecond, "cold start: Key Protect emulator latency")
	fs.IntVar(&co.MaxConcurrentUnwraps, "cold-cap", def.Cache.MaxConcurrentUnwraps, "cold start: cache.max_concurrent_unwraps")
	fs.IntVar(&co.Workers, "cold-workers", def.MQTT.Workers, "cold start: decryptd mqtt.workers")
	fs.IntVar(&co.MaxInFlight, "cold-max-in-flight", def.MQTT.MaxInFlight, "cold start: decryptd mqtt.max_in_flight (and the broker's window)")
	auditDir := fs.String("audit-dir", "", "diagnostic: put decryptd's audit logs in this directory (e.g. a tmpfs) instead of beside its sinks")
	micro := fs.String("micro", "", "file holding `go test -bench` output to include in the results")
	out := fs.String("out", "", "write the results as JSON to this file")
	svg := fs.String("svg", "", "write the drain chart (SVG) to this file")
	render := fs.String("render", "", "run nothing: read this results JSON and write -svg and the summary from it")
	dir := fs.String("dir", "", "working directory (default: a new temporary one, removed at the end)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {} // help on stdout below; errors on stderr
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stdout, "decryptd-bench: the end-to-end benchmark (drain and cold start; see BENCHMARKS.md).\n\nUsage: decryptd-bench [flags]   (no commands)\n\nFlags:")
			fs.SetOutput(os.Stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintln(os.Stderr, "Run 'decryptd-bench --help' for usage.")
		return 2
	}
	if *showVersion {
		fmt.Fprintln(os.Stdout, buildversion.Line("decryptd-bench"))
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "decryptd-bench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	// The daemon runs in this process, with the Ps it would have.
	daemon.RaiseProcs(os.LookupEnv)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	do.AuditDir, co.AuditDir = *auditDir, *auditDir
	if *csub == "none" {
		do.NoCSub = true
	} else {
		bench.MosquittoSubPath = *csub
	}
	if *serveKfake != "" {
		if err := bench.ServeKfake(ctx, *serveKfake, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "decryptd-bench:", err)
			return 1
		}
		return 0
	}
	if *kafkaBrokers != "" {
		ko.Brokers = strings.Split(*kafkaBrokers, ",")
	}
	if *render != "" {
		if err := renderOnly(*render, *svg); err != nil {
			fmt.Fprintln(os.Stderr, "decryptd-bench:", err)
			return 1
		}
		return 0
	}
	if !*sinks {
		so.Rounds = -1
	}
	var mqttDrain, kafkaDrain bool
	switch *input {
	case "mqtt":
		mqttDrain = *drain
	case "kafka":
		kafkaDrain = *drain
	case "both":
		mqttDrain, kafkaDrain = *drain, *drain
	default:
		fmt.Fprintf(os.Stderr, "decryptd-bench: -input %q: want mqtt, kafka or both\n", *input)
		return 2
	}
	// The Kafka drain takes the MQTT drain's sizes (its in-flight bound is
	// -kafka-max-in-flight).
	ko.Messages, ko.Devices, ko.Rounds, ko.ProfileDir = do.Messages, do.Devices, do.Rounds, do.ProfileDir
	if !kafkaDrain {
		ko.Rounds = -1
	}
	if err := runBench(ctx, fs, mqttDrain, *cold, do, co, so, ko, *micro, *out, *svg, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "decryptd-bench:", err)
		return 1
	}
	return 0
}

func runBench(ctx context.Context, fs *flag.FlagSet, drain, cold bool, do bench.DrainOptions, co bench.ColdStartOptions, so bench.SinkDrainOptions, ko bench.KafkaDrainOptions, micro, out, svg, dir string) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "decryptd-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(zapcore.WarnLevel)
	log, err := zc.Build()
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	res := &bench.Results{Date: time.Now().UTC(), Command: commandLine(fs), Machine: bench.DescribeMachine()}
	if micro != "" {
		f, err := os.Open(micro)
		if err != nil {
			return err
		}
		res.Micro, err = bench.ParseGoBench(f)
		f.Close()
		if err != nil {
			return err
		}
	}
	if drain {
		do.Dir, do.Progress, do.Logger = filepath.Join(dir, "drain"), os.Stderr, log.With(zap.String("bench", "drain"))
		if res.Drain, err = bench.Drain(ctx, do); err != nil {
			return fmt.Errorf("drain: %w", err)
		}
	}
	if ko.Rounds >= 0 {
		ko.Dir, ko.Progress, ko.Logger = filepath.Join(dir, "kafka"), os.Stderr, log.With(zap.String("bench", "kafka drain"))
		if res.KafkaDrain, err = bench.KafkaDrain(ctx, ko); err != nil {
			return fmt.Errorf("kafka drain: %w", err)
		}
	}
	if cold {
		co.Dir, co.Progress, co.Logger = filepath.Join(dir, "cold"), os.Stderr, log.With(zap.String("bench", "cold start"))
		if res.ColdStart, err = bench.ColdStart(ctx, co); err != nil {
			return fmt.Errorf("cold start: %w", err)
		}
	}
	if so.Rounds >= 0 {
		so.Dir, so.Progress, so.Logger = filepath.Join(dir, "sinks"), os.Stderr, log.With(zap.String("bench", "sinks"))
		if res.Sinks, err = bench.SinkDrain(ctx, so); err != nil {
			return fmt.Errorf("sink drain: %w", err)
		}
	}
	if out != "" {
		data, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(out, append(data, '\n'), 0o644); err != nil {
			return err
		}
	}
	if svg != "" && res.Drain != nil {
		if err := writeSVG(res, svg); err != nil {
			return err
		}
	}
	fmt.Println()
	res.WriteSummary(os.Stdout)
	if res.KafkaDrain != nil {
		res.KafkaDrain.WriteSummary(os.Stdout)
	}
	if res.Sinks != nil {
		res.Sinks.WriteSummary(os.Stdout)
	}
	return nil
}

func writeSVG(res *bench.Results, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := res.WriteSVG(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// renderOnly redraws the chart and reprints the summary of an earlier run.
func renderOnly(resultsFile, svg string) error {
	data, err := os.ReadFile(resultsFile)
	if err != nil {
		return err
	}
	var res bench.Results
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("%s: %w", resultsFile, err)
	}
	if svg != "" && res.Drain != nil {
		if err := writeSVG(&res, svg); err != nil {
			return err
		}
	}
	res.WriteSummary(os.Stdout)
	if res.KafkaDrain != nil {
		res.KafkaDrain.WriteSummary(os.Stdout)
	}
	return nil
}

// commandLine records how the run was made: the flags that were set.
func commandLine(fs *flag.FlagSet) string {
	parts := []string{"decryptd-bench"}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "micro", "out", "svg", "dir", "profile-dir":
			return // paths, not parameters
		}
		parts = append(parts, "-"+f.Name+"="+f.Value.String())
	})
	return strings.Join(parts, " ")
}
