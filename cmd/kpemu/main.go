package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/decryptd/decryptd/internal/kpemu"
	buildversion "github.com/decryptd/decryptd/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// listFlag collects a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return fmt.Sprint(len(*l), " value(s)") }
func (l *listFlag) Set(s string) error {
	if strings.TrimSpace(s) == "" {
		return errors.New("empty value")
	}
	*l = append(*l, s)
	return nil
}

const usageText = `kpemu: a local emulator of IBM Key Protect's REST API (and its IAM token
endpoint) for trying decryptd's keyprotect provider without an IBM Cloud
account. In memory only: keys are lost on exit.

Usage: kpemu [flags]     (no commands; stops on SIGINT or SIGTERM)

Flags:
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kpemu", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var apiKeys listFlag
	addr := fs.String("addr", "127.0.0.1:8200", "listen address (host:port)")
	fs.Var(&apiKeys, "api-key", "an API key the IAM endpoint accepts (repeatable; default the built-in dev key "+kpemu.DefaultAPIKey+")")
	instance := fs.String("instance-id", "", "Key Protect instance id (default a random UUID)")
	createRoot := fs.String("create-root", "", "create a root key with this name at start and print its id")
	tokenTTL := fs.Duration("token-ttl", time.Hour, "lifetime of issued IAM tokens (expires_in)")
	rotateInterval := fs.Duration("rotate-interval", 0, "refuse a rotation within this long of the previous one (real service: 1h; 0 = off)")
	cooldown := fs.Duration("action-cooldown", 0, "refuse enable/restore within this long of a state change (real service: 30s; 0 = off)")
	purgeDelay := fs.Duration("purge-delay", 0, "refuse a purge within this long of the delete (real service: 4h; 0 = off)")
	realTiming := fs.Bool("real-timing", false, "apply the real service's timing rules: -rotate-interval 1h -action-cooldown 30s -purge-delay 4h")
	rotationMonths := fs.Int("rotation-policy", 0, "enable the instance rotation policy with this interval in months (1-12; new root keys inherit it; 0 = off)")
	rateLimit := fs.Float64("rate-limit", 0, "Key Protect API requests per second accepted; more are refused with 429 and Retry-After (0 = off)")
	rateBurst := fs.Int("rate-burst", 0, "requests accepted at once under -rate-limit (default: the rate, at least 1)")
	useTLS := fs.Bool("tls", false, "serve HTTPS with a certificate from a CA made on the spot (written to -tls-ca-out)")
	tlsHosts := fs.String("tls-hosts", "localhost,127.0.0.1", "comma-separated names and IPs the -tls certificate is valid for")
	tlsCAOut := fs.String("tls-ca-out", "", "where -tls writes the CA certificate (PEM) clients must trust (default kpemu-ca.pem in the temporary directory)")
	tlsCert := fs.String("tls-cert", "", "serve HTTPS with this certificate (PEM; with -tls-key) instead of a CA made on the spot")
	tlsKey := fs.String("tls-key", "", "private key (PEM) of -tls-cert")
	controlAddr := fs.String("control-addr", "", "serve the runtime fault control here (plain HTTP, no authentication: keep it on loopback; empty = off)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {} // help goes to stdout below, errors to stderr
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usageText)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintln(stderr, "Run 'kpemu --help' for usage.")
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, buildversion.Line("kpemu"))
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kpemu: unexpected arguments %q\n", fs.Args())
		return 2
	}

	if *realTiming {
		*rotateInterval, *cooldown, *purgeDelay = time.Hour, 30*time.Second, 4*time.Hour
	}
	if *rotationMonths < 0 || *rotationMonths > 12 || *rateLimit < 0 || *rateBurst < 0 {
		fmt.Fprintln(stderr, "kpemu: -rotation-policy wants 0-12 months; -rate-limit and -rate-burst must not be negative")
		return 2
	}
	tlsCfg, caFile, err := serverTLS(*useTLS, *tlsHosts, *tlsCAOut, *tlsCert, *tlsKey)
	if err != nil {
		fmt.Fprintf(stderr, "kpemu: %v\n", err)
		return 2
	}
	em := kpemu.New(kpemu.Options{
		InstanceID:     *instance,
		APIKeys:        apiKeys,
		TokenTTL:       *tokenTTL,
		RotateInterval: *rotateInterval,
		ActionCooldown: *cooldown,
		PurgeDelay:     *purgeDelay,
		RateLimit:      *rateLimit,
		RateBurst:      *rateBurst,
	})
	if err := em.SetInstanceRotationPolicy(*rotationMonths); err != nil {
		fmt.Fprintf(stderr, "kpemu: %v\n", err)
		return 2
	}
	srv, err := kpemu.Serve(ctx, em, *addr, tlsCfg)
	if err != nil {
		fmt.Fprintf(stderr, "kpemu: %v\n", err)
		return 1
	}
	defer srv.Close()
	if *controlAddr != "" {
		ctl, err := serveControl(ctx, *controlAddr, srv)
		if err != nil {
			fmt.Fprintf(stderr, "kpemu: control: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "control_url: %s (POST /faults/{none,hang,reset,refuse,503,429}; GET, PUT, DELETE /faults; GET /calls)\n", ctl)
	}

	fmt.Fprintf(stdout, "base_url: %s\n", srv.URL)
	fmt.Fprintf(stdout, "token_url: %s\n", srv.TokenURL)
	fmt.Fprintf(stdout, "instance_id: %s\n", srv.InstanceID())
	if caFile != "" {
		// The client's IAM fetch trusts only the system roots: hence SSL_CERT_FILE.
		fmt.Fprintf(stdout, "ca_file: %s (trust it for the API; for the IAM token fetch set SSL_CERT_FILE to it)\n", caFile)
	}
	if *createRoot != "" {
		id, err := srv.CreateRootKey(*createRoot)
		if err != nil {
			fmt.Fprintf(stderr, "kpemu: create root key %q: %v\n", *createRoot, err)
			return 1
		}
		fmt.Fprintf(stdout, "root_key_id: %s\n", id)
	}
	if len(apiKeys) == 0 {
		// The built-in key is public (a constant in the source), so naming it
		// leaks nothing; keys given on the command line are never printed.
		fmt.Fprintf(stdout, "api_key: %s (built-in dev key; set DECRYPTD_KP_API_KEY to it)\n", kpemu.DefaultAPIKey)
	} else {
		fmt.Fprintf(stdout, "api_keys: %d accepted (as given with -api-key)\n", len(apiKeys))
	}
	fmt.Fprintln(stdout, "ready; in-memory only, keys are lost on exit")

	<-ctx.Done()
	fmt.Fprintln(stderr, "kpemu: stopping")
	return 0
}
