package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/demo"
	"github.com/decryptd/decryptd/internal/redact"
	buildversion "github.com/decryptd/decryptd/internal/version"
)

// Exit codes, for scripts and service managers.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2 // bad arguments or an invalid configuration
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

const usageText = `decryptd: decrypts encrypted device telemetry from MQTT into sinks.

Usage: decryptd [COMMAND] [flags]

Commands:
  run --config FILE             run the daemon (the default command); stops
                                gracefully on SIGINT or SIGTERM
  check-config --config FILE    validate the configuration: prints OK, or
                                every field at fault (exit status 2)
  replay --config FILE --in FILE
                                run dead letters (a dead-letter file's lines)
                                through the configured keys and sinks again,
                                without MQTT; prints a JSON summary as the
                                last line. --in must not be the configured
                                dead-letter file (move it aside first).
  demo [--duration D]           everything in one process, nothing to
                                install: an MQTT broker with mutual TLS, a
                                local KMS and registry, a simulated fleet
                                (good and bad messages) and the daemon,
                                printing decrypted records; stops on Ctrl-C or
                                after D (default: until Ctrl-C)
  version                       print the version (also --version)
  help                          this text (also --help, -h; COMMAND --help
                                for one command's flags)

--config defaults to the environment variable DECRYPTD_CONFIG, then
./config.yaml. Every key can be overridden from the environment
(DECRYPTD_<KEY_PATH>, see config.example.yaml).
`

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	} else if len(args) > 0 {
		// Flags before any command: the global ones, else run's.
		switch args[0] {
		case "-h", "-help", "--help":
			cmd = "help"
		case "-version", "--version":
			cmd = "version"
		}
	}
	switch cmd {
	case "run":
		return cmdRun(ctx, args, stdout, stderr)
	case "check-config":
		return cmdCheckConfig(args, stdout, stderr)
	case "replay":
		return cmdReplay(ctx, args, stdout, stderr)
	case "demo":
		return cmdDemo(ctx, args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, buildversion.Line("decryptd"))
		return exitOK
	case "help":
		fmt.Fprint(stdout, usageText)
		return exitOK
	}
	fmt.Fprintf(stderr, "decryptd: unknown command %q\n\n%s", cmd, usageText)
	return exitUsage
}

// version is the module version the binary was built from.
func version() string { return buildversion.String() }

// commandHelp is each command's line in `decryptd COMMAND --help`.
var commandHelp = map[string]string{
	"run":          "decryptd run [--config FILE]: run the daemon until SIGINT or SIGTERM.",
	"check-config": "decryptd check-config [--config FILE]: validate the configuration and check the files it names; prints OK, or every problem (exit status 2).",
	"replay":       "decryptd replay [--config FILE] --in FILE: run dead letters through the configured keys and sinks again.",
	"demo":         "decryptd demo [--duration D] [--listen ADDR] [--dir DIR]: broker, KMS, fleet, rotation and daemon in one process.",
}

func newFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("decryptd "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // help goes to stdout (parseFlags), errors to stderr
	def := os.Getenv("DECRYPTD_CONFIG")
	if def == "" {
		def = "config.yaml"
	}
	cfg := fs.String("config", def, "configuration file")
	return fs, cfg
}

// parseFlags parses a command's flags. On --help it prints the command's
// flags and the command list to stdout and returns done with exit 0; on a
// mistake it names it on stderr and returns done with exit 2.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (code int, done bool) {
	fs.Usage = func() {}
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printCommandHelp(fs, stdout)
			return exitOK, true
		}
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", fs.Name())
		return exitUsage, true
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected arguments %q\nRun '%s --help' for usage.\n", fs.Name(), fs.Args(), fs.Name())
		return exitUsage, true
	}
	return exitOK, false
}

// printCommandHelp writes one command's usage and flags, then the
// command list.
func printCommandHelp(fs *flag.FlagSet, w io.Writer) {
	name := strings.TrimPrefix(fs.Name(), "decryptd ")
	fmt.Fprintf(w, "%s\n\nFlags:\n", commandHelp[name])
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprintf(w, "\n%s", usageText)
}

// loadConfig loads and validates, and refuses DECRYPTD_* variables that
// set no key (config.CheckEnv says why); a ValidationError is printed one
// field a line.
func loadConfig(path string, stderr io.Writer) (*config.Config, bool) {
	cfg, err := config.Load(path, os.LookupEnv)
	if err == nil {
		err = config.CheckEnv(os.Environ(), cfg)
	}
	if err != nil {
		printConfigError(path, err, stderr)
		return nil, false
	}
	return cfg, true
}

func printConfigError(path string, err error, stderr io.Writer) {
	var ve *config.ValidationError
	if errors.As(err, &ve) {
		fmt.Fprintf(stderr, "decryptd: configuration %s is invalid:\n", path)
		for _, p := range ve.Problems {
			fmt.Fprintf(stderr, "  %s\n", redact.Text(p.Error()))
		}
		return
	}
	fmt.Fprintf(stderr, "decryptd: %v\n", redact.Error(err))
}

// newLogger builds the one logger: JSON (or console) on stderr at the
// configured level.
func newLogger(c config.Log, stderr io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, err
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if c.Format == "console" {
		enc = zapcore.NewConsoleEncoder(ec)
	} else {
		enc = zapcore.NewJSONEncoder(ec)
	}
	// redact.Core: a URL or DSN that reaches a log line by any path is
	// written with its password and query values removed.
	return zap.New(redact.Core(zapcore.NewCore(enc, zapcore.AddSync(stderr), lvl))), nil
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, path := newFlags("run", stderr)
	if code, done := parseFlags(fs, args, stdout, stderr); done {
		return code
	}
	cfg, ok := loadConfig(*path, stderr)
	if !ok {
		return exitUsage
	}
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "decryptd: log: %v\n", err)
		return exitUsage
	}
	defer log.Sync()
	if before, after := daemon.RaiseProcs(os.LookupEnv); after != before {
		log.Info("GOMAXPROCS raised so that fsyncs do not stall intake", zap.Int("from", before), zap.Int("to", after))
	}
	if err := daemon.Run(ctx, daemon.Options{Config: cfg, Logger: log, Version: version()}); err != nil {
		if errors.Is(err, daemon.ErrStartCanceled) && ctx.Err() != nil {
			// SIGTERM while the start waited for the KMS or PostgreSQL:
			// nothing was received, nothing is owed.
			log.Info("stopped before the start completed", zap.String("waited_for", err.Error()))
			return exitOK
		}
		log.Error("decryptd failed", zap.Error(err))
		return exitFailed
	}
	return exitOK
}

func cmdCheckConfig(args []string, stdout, stderr io.Writer) int {
	fs, path := newFlags("check-config", stderr)
	if code, done := parseFlags(fs, args, stdout, stderr); done {
		return code
	}
	cfg, ok := loadConfig(*path, stderr)
	if !ok {
		return exitUsage
	}
	if err := cfg.CheckFiles(); err != nil {
		printConfigError(*path, err, stderr)
		return exitUsage
	}
	fmt.Fprintln(stdout, "OK")
	return exitOK
}

func cmdReplay(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, path := newFlags("replay", stderr)
	in := fs.String("in", "", "dead-letter file to replay (required; - for stdin)")
	if code, done := parseFlags(fs, args, stdout, stderr); done {
		return code
	}
	if *in == "" {
		fmt.Fprintln(stderr, "decryptd replay: --in FILE is required")
		return exitUsage
	}
	cfg, ok := loadConfig(*path, stderr)
	if !ok {
		return exitUsage
	}
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "decryptd: log: %v\n", err)
		return exitUsage
	}
	defer log.Sync()
	r := io.Reader(os.Stdin)
	if *in != "-" {
		f, err := os.Open(*in)
		if err != nil {
			fmt.Fprintf(stderr, "decryptd replay: %v\n", err)
			return exitFailed
		}
		defer f.Close()
		r = f
	}
	sum, err := daemon.Replay(ctx, daemon.Options{Config: cfg, Logger: log, Version: version(), Stdout: stdout}, r)
	code := exitOK
	if err != nil {
		fmt.Fprintf(stderr, "decryptd replay: %v\n", redact.Error(err))
		code = exitFailed
	}
	if sum.Reasons != nil {
		b, _ := json.Marshal(sum)
		fmt.Fprintf(stdout, "%s\n", b)
	}
	return code
}

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("decryptd demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	d := fs.Duration("duration", 0, "stop after this long (0: run until Ctrl-C)")
	listen := fs.String("listen", "127.0.0.1:0", "metrics listener (host:port; port 0 picks a free one)")
	dir := fs.String("dir", "", "working folder to create and keep (keys, registry, records, dead letters, audit log); default a temporary one, removed at the end")
	if code, done := parseFlags(fs, args, stdout, stderr); done {
		return code
	}
	if *d < 0 {
		fmt.Fprintln(stderr, "decryptd demo: --duration must not be negative")
		return exitUsage
	}
	if *d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *d)
		defer cancel()
	}
	daemon.RaiseProcs(os.LookupEnv)
	if _, err := demo.Run(ctx, demo.Options{Stdout: stdout, Stderr: stderr, Listen: *listen, Version: version(), Dir: *dir}); err != nil {
		fmt.Fprintf(stderr, "decryptd demo: %v\n", err)
		return exitFailed
	}
	return exitOK
}
