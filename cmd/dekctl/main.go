package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/redact"
	"github.com/decryptd/decryptd/internal/registry"
	buildversion "github.com/decryptd/decryptd/internal/version"
)

// Exit codes, for scripts.
const (
	exitOK       = 0
	exitFailed   = 1
	exitUsage    = 2
	exitNotFound = 3
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

const usageText = `dekctl: decryptd's key lifecycle tool.

Usage: dekctl [--config FILE] COMMAND [flags]

The configuration file is the daemon's own (default ./config.yaml, or the
environment variable DECRYPTD_CONFIG; DECRYPTD_* overrides apply as for the
daemon). --config may also follow the command.

Commands:
  root create [--name NAME]     create a root key (local: the root key file,
                                mode 0600, id NAME; keyprotect: a new root key
                                whose id goes into kms.keyprotect.root_key_id)
  root rotate [--id ID]         add a root key version; new DEKs are wrapped
                                under it (then run: dekctl rewrap)
  root list [--json]            list root keys and their versions
  root retire --version V [--id ID]
                                destroy an old root key version for good
                                (local: removed from the root key file; Key
                                Protect: the whole key is deleted, as the
                                service cannot delete one version). Refused
                                while any DEK is still wrapped under it (run
                                dekctl rewrap first) and for the newest one.
                                IRREVERSIBLE.
  provision --device ID [--group NAME] [--out FILE]
                                make the device's credential: a new DEK version
                                (device/ID v1, v2, ... one above the highest it
                                ever had; earlier active versions become
                                decrypt_only), or with --group membership of
                                group/NAME (created when it has no active
                                version). The credential file (default
                                ./credential-ID.json, "-" for stdout; never
                                overwritten; mode 0600) is JSON with device_id,
                                key_id, key_version, dek_b64. It holds the DEK
                                IN THE CLEAR: this is the one place a DEK
                                leaves the KMS, for factory provisioning. Load
                                it into the device, then delete it.
  import --file FILE [--skip-existing]
                                import existing DEKs: a JSON array of
                                {key_id, key_version, dek_hex|dek_b64, state?,
                                devices?} (or an object with such a "keys"
                                array). Every entry is checked first; versions
                                already in the registry are an error unless
                                --skip-existing.
  list [--json]                 list DEK versions: key id, version, state, root
                                key/version, devices, created
  revoke --key-id ID --version V | --device ID
                                revoke one version, or every version of a
                                device's key; messages under it fail with
                                key_revoked (the wrapped DEK is kept)
  shred --device ID | --key-id ID [--version V]
                                crypto-shred: destroy the wrapped DEK(s) for
                                good, keeping a tombstone; the audit log
                                records the SHA-256 of what was destroyed.
                                IRREVERSIBLE.
  shred --complete --device ID | --key-id ID [--version V]
                                shred, then make every earlier copy useless:
                                rotate the root key (Key Protect: create a
                                replacement root key), rewrap every other DEK
                                (with progress), retire the root versions the
                                shredded DEKs were under, and VACUUM FULL a
                                PostgreSQL registry. Resumable: run it again
                                after an interruption. Take a new registry
                                backup afterwards: older ones no longer
                                unwrap DEKs under the retired versions. See
                                docs/crypto-shredding.md.
  rewrap                        after a root rotation, rewrap every DEK still
                                under an older root version; resumable (run it
                                again after an interruption or failure)
  pseudonym rotate NAME         create or rotate the pseudonymization key
                                pseudonym/NAME used by sinks' field policies
  rotate --device ID | --group NAME | --all
                                start a rotation now: the key's next version is
                                created active and pending (one already pending
                                is kept); the running daemon's rotation
                                controller (rotation.enabled) sends it to the
                                device(s), which adopt it with their next
                                message
  rotation status [--json] [--chart FILE.png]
                                the fleet's rotation state: keys current,
                                pending, stragglers; versions by state; the
                                age distribution of the current versions (a
                                text histogram; --chart also writes it as a
                                PNG bar chart)
  audit verify [--file FILE]    check the audit log's hash chain (default: the
                                configured audit.path)
  version                       print the version (also --version)
  help                          this text (also --help, -h; COMMAND --help
                                for one command's flags)

Every key operation appends to the audit log (audit.path).

Exit codes:
  0  success
  1  the operation failed (KMS, registry, audit log, a broken audit chain,
     an invalid configuration, a rewrap with failures)
  2  usage error (unknown command or flag, missing or invalid argument)
  3  not found (no such key version, device key or root key)
`

// usageError is a command-line mistake: printed with a hint, exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runEnviron(ctx, args, stdout, stderr, os.LookupEnv, os.Environ)
}

func runContext(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) (string, bool)) int {
	return runEnviron(ctx, args, stdout, stderr, env, nil)
}

// runEnviron is runContext that also refuses DECRYPTD_* variables of
// environ that set no key (config.CheckEnv), as the daemon does.
func runEnviron(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) (string, bool), environ func() []string) int {
	c := &cli{stdout: stdout, stderr: stderr, env: env, environ: environ, now: time.Now}
	if v, ok := env("DECRYPTD_CONFIG"); ok && v != "" {
		c.configPath = v
	} else {
		c.configPath = "config.yaml"
	}
	err := c.dispatch(ctx, args)
	return c.exit(err)
}

// exit reports err and maps it to an exit code.
func (c *cli) exit(err error) int {
	var ue usageError
	var hr helpRequest
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &hr):
		c.printHelp(hr.fs)
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(c.stderr, "dekctl: %s\nRun 'dekctl help' for usage.\n", ue.msg)
		return exitUsage
	case errors.Is(err, keyops.ErrInvalidArgument):
		fmt.Fprintf(c.stderr, "dekctl: %v\nRun 'dekctl help' for usage.\n", redact.Error(err))
		return exitUsage
	case errors.Is(err, keyops.ErrNotFound), errors.Is(err, registry.ErrNotFound):
		fmt.Fprintf(c.stderr, "dekctl: %v\n", redact.Error(err))
		return exitNotFound
	}
	fmt.Fprintf(c.stderr, "dekctl: %v\n", redact.Error(err))
	return exitFailed
}

type cli struct {
	stdout, stderr io.Writer
	env            func(string) (string, bool)
	environ        func() []string // nil: no check of unknown DECRYPTD_* variables
	now            func() time.Time
	configPath     string
}

// flags returns a FlagSet for a command that also takes --config.
func (c *cli) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by exit, with the hint
	fs.StringVar(&c.configPath, "config", c.configPath, "configuration file")
	return fs
}

// helpRequest is a command's --help: its flags and the command list go to
// stdout, exit 0.
type helpRequest struct{ fs *flag.FlagSet }

func (helpRequest) Error() string { return "help requested" }

// printHelp writes a command's flags (when fs is set) and the command list.
func (c *cli) printHelp(fs *flag.FlagSet) {
	if fs != nil {
		fmt.Fprintf(c.stdout, "Usage: dekctl %s [flags]\n\nFlags:\n", fs.Name())
		fs.SetOutput(c.stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		fmt.Fprintln(c.stdout)
	}
	fmt.Fprint(c.stdout, usageText)
}

func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help" || arg == "help"
}

// parse parses args into fs and refuses positional arguments.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return helpRequest{fs}
		}
		return usagef("%s: %v", fs.Name(), err)
	}
	if fs.NArg() > 0 {
		return usagef("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

func (c *cli) dispatch(ctx context.Context, args []string) error {
	global := c.flags("dekctl")
	showVersion := global.Bool("version", false, "print the version")
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(c.stdout, usageText)
			return nil
		}
		return usagef("%v", err)
	}
	if *showVersion {
		fmt.Fprintln(c.stdout, buildversion.Line("dekctl"))
		return nil
	}
	rest := global.Args()
	if len(rest) == 0 {
		fmt.Fprint(c.stderr, usageText)
		return usageError{"no command given"}
	}
	cmd, rest := rest[0], rest[1:]
	if (cmd == "root" || cmd == "rotation" || cmd == "audit") && len(rest) > 0 && isHelp(rest[0]) {
		c.printHelp(nil) // a command group: the list shows its commands
		return nil
	}
	switch cmd {
	case "help", "-h", "--help":
		fmt.Fprint(c.stdout, usageText)
		return nil
	case "version":
		fmt.Fprintln(c.stdout, buildversion.Line("dekctl"))
		return nil
	case "root":
		return c.root(ctx, rest)
	case "provision":
		return c.provision(ctx, rest)
	case "import":
		return c.importKeys(ctx, rest)
	case "list":
		return c.list(ctx, rest)
	case "revoke":
		return c.revoke(ctx, rest)
	case "shred":
		return c.shred(ctx, rest)
	case "rewrap":
		return c.rewrap(ctx, rest)
	case "audit":
		return c.audit(ctx, rest)
	case "rotate":
		return c.rotate(ctx, rest)
	case "rotation":
		return c.rotationCmd(ctx, rest)
	case "pseudonym":
		return c.pseudonym(ctx, rest)
	}
	return usagef("unknown command %q", cmd)
}
