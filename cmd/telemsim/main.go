package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/fleet"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/pki"
	"github.com/decryptd/decryptd/internal/redact"
	"github.com/decryptd/decryptd/internal/rekey"
	buildversion "github.com/decryptd/decryptd/internal/version"
)

// Exit codes, for scripts.
const (
	exitOK     = 0
	exitFailed = 1 // a run that could not start, or publishes that failed
	exitUsage  = 2
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv, os.Environ)) }

const usageText = `telemsim: simulates a fleet of devices sending encrypted telemetry
(envelope v1) to decryptd over MQTT with mutual TLS.

Usage:
  telemsim --config config.yaml --provision 5000 --credentials fleet.jsonl
           [--group-size N] [run flags]
      provision 5000 devices (a DEK version each, or group keys of N
      devices) into the registry and KMS of the daemon's configuration,
      audited like dekctl provision, write their credentials (DEKs in the
      clear, mode 0600: test keys) and, given a run flag, run them.
  telemsim --credentials fleet.jsonl [--config config.yaml] [run flags]
      run a fleet provisioned earlier (a credentials file, or a directory of
      dekctl provision credential files).

A run lasts --duration, or --count messages, or until interrupted; it prints
progress on stderr every second and a summary at the end (--json: as JSON on
stdout). The exit status is 1 if any publish failed.

Flags:
`

type options struct {
	configPath  string
	provision   int
	credentials string
	devices     int
	groupSize   int
	prefix      string
	devType     string
	workers     int
	viaKeyops   bool

	broker, ca, cert, key, serverName string
	connections, maxOutstanding       int
	clientID                          string

	ratePerDevice, rate float64
	count, backlog      int64
	duration            time.Duration
	shapeB              float64
	bad                 string
	offline             float64
	offlineFor          time.Duration
	seed                uint64
	seedSet             bool
	jsonOut, quiet      bool
	rekey               bool
	rekeyTopic          string
	version             bool
	help                *flag.FlagSet // set on --help
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("telemsim", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // run reports errors (stderr) and help (stdout)
	fs.Usage = func() {}
	fs.StringVar(&o.configPath, "config", "", "the daemon's configuration file: registry, KMS and audit log for --provision; broker and TLS defaults (mqtt.brokers[0], mqtt.tls)")
	fs.IntVar(&o.provision, "provision", 0, "provision this many new devices first (needs --config)")
	fs.StringVar(&o.credentials, "credentials", "", "credentials file: written by --provision (must not exist), else read (a file, or a directory of dekctl credential files)")
	fs.IntVar(&o.devices, "devices", 0, "use only the first N devices of the credentials (0: all)")
	fs.IntVar(&o.groupSize, "group-size", 0, "with --provision: devices share group keys, N devices each (0: a key per device)")
	fs.StringVar(&o.prefix, "prefix", "sim-", "with --provision: device id prefix (ids are prefix + index, e.g. sim-000042)")
	fs.StringVar(&o.devType, "type", fleet.DefaultDeviceType, "Watson IoT device type in the topics iot-2/type/<type>/id/<id>/evt/telemetry/fmt/json")
	fs.BoolVar(&o.viaKeyops, "provision-keyops", false, "with --provision: one device at a time through keyops, exactly as dekctl provision (slow on the file registry), instead of the bulk path")
	fs.IntVar(&o.workers, "provision-workers", 16, "with --provision: concurrent KMS wraps and registry writes")

	fs.StringVar(&o.broker, "broker", "", "broker URL, e.g. ssl://127.0.0.1:8883 (default: the config's mqtt.brokers[0])")
	fs.StringVar(&o.ca, "ca", "", "CA certificate file (PEM) that verifies the broker (default: the config's mqtt.tls.ca_file)")
	fs.StringVar(&o.cert, "cert", "", "client certificate file (PEM) for mutual TLS (default: the config's mqtt.tls.cert_file)")
	fs.StringVar(&o.key, "key", "", "client key file (PEM) for mutual TLS (default: the config's mqtt.tls.key_file)")
	fs.StringVar(&o.serverName, "server-name", "", "name to verify in the broker's certificate (default: the config's, else the URL's host)")
	fs.IntVar(&o.connections, "connections", fleet.DefaultConnections, "MQTT connections carrying the fleet's messages")
	fs.IntVar(&o.maxOutstanding, "max-outstanding", fleet.DefaultMaxOutstanding, "publishes awaiting PUBACK per connection, at most")
	fs.StringVar(&o.clientID, "client-id", "", "client id prefix of the connections (default telemsim-<random>-)")

	fs.Float64Var(&o.ratePerDevice, "rate-per-device", 1, "messages per second per device; total = devices × this")
	fs.Float64Var(&o.rate, "rate", 0, "total messages per second (overrides --rate-per-device)")
	fs.Int64Var(&o.count, "count", 0, "stop after this many messages (0: no limit)")
	fs.DurationVar(&o.duration, "duration", 0, "stop after this long (0: no limit)")
	fs.Int64Var(&o.backlog, "backlog", 0, "publish this many messages as fast as the broker takes them, then stop (the drain benchmark's backlog)")
	fs.Float64Var(&o.shapeB, "shape-b", 0.5, "share of shape B (field-sealed) messages; the rest are shape A (whole payload)")
	fs.StringVar(&o.bad, "bad", "", "bad messages by kind, as shares of all messages: tampered=0.01,unknown_version=0.01,replayed=0.01,malformed=0.01,topic_mismatch=0.01 (reason names auth_failed, unknown_key, replay also accepted)")
	fs.Float64Var(&o.offline, "offline", 0, "share of devices that start offline, hold their messages for --offline-for, then send them in a burst")
	fs.DurationVar(&o.offlineFor, "offline-for", 30*time.Second, "how long offline devices hold their messages")
	fs.Func("seed", "seed of the run's choices (shapes, kinds, readings, offline devices; never nonces); default random, printed", func(s string) error {
		_, err := fmt.Sscan(s, &o.seed)
		o.seedSet = true
		return err
	})
	fs.BoolVar(&o.rekey, "rekey", true, "take rekeys (docs/rekey-v1.md) on the devices' command topics and seal under the new DEK from then on, as devices do when decryptd rotates their keys")
	fs.StringVar(&o.rekeyTopic, "rekey-topic", "", "command topic pattern of rekeys, {device_type} and {device_id} replaced (default: the config's rotation.command_topic, else "+rekey.DefaultTopic+")")
	fs.BoolVar(&o.jsonOut, "json", false, "print the summary as JSON on stdout")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress lines")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			o.help = fs
		}
		return o, err
	}
	if o.version {
		return o, nil
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch {
	case o.provision < 0, o.devices < 0, o.groupSize < 0, o.count < 0, o.backlog < 0, o.duration < 0:
		return nil, errors.New("counts and durations must not be negative")
	case o.provision > 0 && o.configPath == "":
		return nil, errors.New("--provision needs --config (the registry and KMS to provision into)")
	case o.provision == 0 && o.credentials == "":
		return nil, errors.New("no fleet: give --provision N (with --config) or --credentials FILE")
	case o.backlog > 0 && (o.count > 0 || o.duration > 0):
		return nil, errors.New("--backlog is a count of its own: not with --count or --duration")
	case o.rate < 0 || o.ratePerDevice < 0:
		return nil, errors.New("rates must not be negative")
	}
	return o, nil
}

// runs reports whether any flag asks for sending messages.
func (o *options) runs() bool { return o.count > 0 || o.duration > 0 || o.backlog > 0 }

// run is telemsim. env reads the DECRYPTD_* overrides of --config;
// environ, when not nil, lists the environment so that a DECRYPTD_*
// variable that sets no key is refused (config.CheckEnv), as decryptd and
// dekctl refuse it: a misspelt override must not go unnoticed.
func run(args []string, stdout, stderr io.Writer, env func(string) (string, bool), environ func() []string) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usageText)
		o.help.SetOutput(stdout)
		o.help.PrintDefaults()
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "telemsim: %v\nRun 'telemsim --help' for usage.\n", err)
		return exitUsage
	}
	if o.version {
		fmt.Fprintln(stdout, buildversion.Line("telemsim"))
		return exitOK
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := simulate(ctx, o, stdout, stderr, env, environ)
	if err != nil {
		fmt.Fprintf(stderr, "telemsim: %v\n", redact.Error(err))
	}
	return code
}

func simulate(ctx context.Context, o *options, stdout, stderr io.Writer, env func(string) (string, bool), environ func() []string) (int, error) {
	var cfg *config.Config
	if o.configPath != "" {
		var err error
		if cfg, err = config.Load(o.configPath, env); err != nil {
			return exitFailed, err
		}
		if environ != nil {
			if err := config.CheckEnv(environ(), cfg); err != nil {
				return exitFailed, err
			}
		}
	}
	progress := !o.quiet
	tty := progress && isTerminal(stderr)

	var creds []keyops.Credential
	if o.provision > 0 {
		if o.credentials == "" && !o.runs() {
			return exitUsage, errors.New("--provision without --credentials or a run flag would throw the new DEKs away")
		}
		var err error
		creds, err = provision(ctx, cfg, o, stderr, progress)
		if err != nil {
			return exitFailed, err
		}
		if o.credentials != "" {
			if err := fleet.WriteCredentials(o.credentials, creds); err != nil {
				wipe(creds)
				return exitFailed, err
			}
			fmt.Fprintf(stderr, "telemsim: wrote %d credentials to %s (DEKs in the clear: test keys only)\n", len(creds), o.credentials)
		}
		if !o.runs() {
			wipe(creds)
			return exitOK, nil
		}
	} else {
		var err error
		if creds, err = fleet.LoadCredentials(o.credentials); err != nil {
			return exitFailed, err
		}
	}
	if o.devices > 0 && o.devices < len(creds) {
		wipe(creds[o.devices:])
		creds = creds[:o.devices]
	}
	f, err := fleet.NewFleet(creds, o.devType) // wipes the DEKs
	if err != nil {
		return exitFailed, err
	}

	popts, err := publisherOptions(cfg, o)
	if err != nil {
		return exitUsage, err
	}
	pub, err := fleet.NewPublisher(ctx, popts)
	if err != nil {
		return exitFailed, err
	}
	defer pub.Close()
	var rekeys struct {
		sync.Mutex
		installed, refused int
		refusedBy          map[string]int // by the outcome names of docs/vectors/rekey-v1.json
	}
	rekeys.refusedBy = map[string]int{}
	if o.rekey {
		pattern := o.rekeyTopic
		if pattern == "" && cfg != nil {
			pattern = cfg.Rotation.CommandTopic
		}
		err := pub.SubscribeRekeys(f, pattern, func(id, version string, installed bool, err error) {
			rekeys.Lock()
			defer rekeys.Unlock()
			switch {
			case err != nil:
				rekeys.refused++
				why := rekey.Outcome(rekey.Taken{}, err)
				if errors.Is(err, fleet.ErrRekeyNotForFleet) {
					why = "not_for_device"
				}
				rekeys.refusedBy[why]++
			case installed:
				rekeys.installed++
			}
		})
		if err != nil {
			return exitFailed, err
		}
	}

	bad, err := fleet.ParseBadMix(o.bad)
	if err != nil {
		return exitUsage, err
	}
	ropts := fleet.RunOptions{
		Rate:     o.rate,
		Count:    o.count,
		Duration: o.duration,
		Seed:     o.seed,
		Mix:      fleet.Mix{ShapeB: o.shapeB, Bad: bad},
		Offline:  o.offline, OfflineFor: o.offlineFor,
		ProgressTTY: tty,
	}
	if ropts.Rate == 0 {
		ropts.Rate = o.ratePerDevice * float64(f.Len())
	}
	if o.backlog > 0 {
		ropts.Rate, ropts.Count = 0, o.backlog
	}
	if !o.seedSet {
		ropts.Seed = uint64(time.Now().UnixNano())
	}
	if progress {
		ropts.Progress = stderr
	}
	fmt.Fprintf(stderr, "telemsim: %d devices (%d keys) over %d connections to %s, seed %d\n", f.Len(), f.Keys(), pub.Connections(), redact.URL(popts.Broker), ropts.Seed)
	sum, err := fleet.Run(ctx, f, pub, ropts)
	if err != nil {
		return exitFailed, err
	}
	rekeys.Lock()
	installed, refused, refusedBy := rekeys.installed, rekeys.refused, maps.Clone(rekeys.refusedBy)
	rekeys.Unlock()
	if o.jsonOut {
		out := struct {
			fleet.Summary
			Seed            uint64            `json:"seed"`
			ExpectedReasons map[string]uint64 `json:"expected_reasons"`
			RekeysInstalled int               `json:"rekeys_installed"`
			RekeysRefused   int               `json:"rekeys_refused"`
			RekeysRefusedBy map[string]int    `json:"rekeys_refused_by,omitempty"`
		}{sum, ropts.Seed, sum.ExpectedReasons(), installed, refused, refusedBy}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return exitFailed, err
		}
	} else {
		sum.Text(stdout)
		fmt.Fprintf(stdout, "seed         %d\n", ropts.Seed)
		if o.rekey {
			fmt.Fprintf(stdout, "rekeys       %d installed, %d refused%s\n", installed, refused, byReason(refusedBy))
		}
	}
	if sum.Errors > 0 || sum.Unacknowledged > 0 {
		return exitFailed, fmt.Errorf("%d publishes failed, %d unacknowledged", sum.Errors, sum.Unacknowledged)
	}
	return exitOK, nil
}

// byReason writes " (rollback 1, auth_failed 2)", or "" for none.
func byReason(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func wipe(creds []keyops.Credential) {
	for i := range creds {
		creds[i].Wipe()
	}
}

// publisherOptions takes the broker and TLS files from the flags, else
// from the configuration's mqtt section.
func publisherOptions(cfg *config.Config, o *options) (fleet.PublisherOptions, error) {
	broker, ca, cert, key, serverName := o.broker, o.ca, o.cert, o.key, o.serverName
	if cfg != nil {
		if broker == "" && len(cfg.MQTT.Brokers) > 0 {
			broker = cfg.MQTT.Brokers[0]
		}
		t := cfg.MQTT.TLS
		if ca == "" {
			ca = t.CAFile
		}
		if cert == "" && key == "" {
			cert, key = t.CertFile, t.KeyFile
		}
		if serverName == "" {
			serverName = t.ServerName
		}
	}
	if broker == "" {
		return fleet.PublisherOptions{}, errors.New("no broker: give --broker or --config")
	}
	po := fleet.PublisherOptions{
		Broker: broker, Connections: o.connections, MaxOutstanding: o.maxOutstanding, ClientID: o.clientID,
	}
	if !isTLSURL(broker) {
		if ca != "" || cert != "" {
			return po, fmt.Errorf("broker %s is not a TLS URL but TLS files were given", broker)
		}
		return po, nil
	}
	if (cert == "") != (key == "") {
		return po, errors.New("give --cert and --key together")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if ca != "" {
		pool, err := pki.LoadPool(ca)
		if err != nil {
			return po, err
		}
		tc.RootCAs = pool
	}
	if cert != "" {
		// The error of LoadX509KeyPair names the kind of problem, never
		// key material.
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return po, fmt.Errorf("client certificate %s: %w", cert, err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	po.TLS = tc
	return po, nil
}

func isTLSURL(u string) bool {
	for _, p := range []string{"ssl://", "tls://", "mqtts://", "tcps://", "mqtt+ssl://"} {
		if strings.HasPrefix(u, p) {
			return true
		}
	}
	return false
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
