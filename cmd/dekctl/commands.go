package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/keyops"
)

func (c *cli) root(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("root: want create, rotate or list (or retire --version V)")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "create":
		fs := c.flags("root create")
		name := fs.String("name", "decryptd-root", "root key name (local: also its id)")
		if err := parse(fs, args); err != nil {
			return err
		}
		return c.withOps(ctx, need{roots: true}, true, func(w *wired) error {
			rk, err := w.ops.RootCreate(ctx, *name)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "created root key %s (version %s)\n", rk.ID, strings.Join(rk.Versions, ", "))
			if w.cfg.KMS.Provider == config.ProviderKeyProtect {
				fmt.Fprintf(c.stdout, "set kms.keyprotect.root_key_id: %s (or DECRYPTD_KMS_KEYPROTECT_ROOT_KEY_ID)\n", rk.ID)
			}
			return nil
		})
	case "rotate":
		fs := c.flags("root rotate")
		id := fs.String("id", "", "root key id (default: the configured one, or the only one)")
		if err := parse(fs, args); err != nil {
			return err
		}
		return c.withOps(ctx, need{roots: true}, true, func(w *wired) error {
			rid := *id
			if rid == "" && w.cfg.KMS.Provider == config.ProviderKeyProtect {
				rid = w.cfg.KMS.KeyProtect.RootKeyID
			}
			rk, err := w.ops.RootRotate(ctx, rid)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "rotated root key %s: new DEKs are wrapped under version %s; run 'dekctl rewrap' to move existing ones\n",
				rk.ID, rk.Versions[len(rk.Versions)-1])
			return nil
		})
	case "list":
		fs := c.flags("root list")
		asJSON := fs.Bool("json", false, "JSON output")
		if err := parse(fs, args); err != nil {
			return err
		}
		return c.withOps(ctx, need{roots: true}, true, func(w *wired) error {
			roots, err := w.ops.RootList(ctx)
			if err != nil {
				return err
			}
			if *asJSON {
				enc := json.NewEncoder(c.stdout)
				enc.SetIndent("", "  ")
				if roots == nil {
					return enc.Encode([]any{})
				}
				return enc.Encode(roots)
			}
			tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tSTATE\tVERSIONS\tNEWEST")
			for _, rk := range roots {
				newest := "-"
				if len(rk.Versions) > 0 {
					newest = rk.Versions[len(rk.Versions)-1]
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", rk.ID, rk.Name, rk.State, len(rk.Versions), newest)
			}
			return tw.Flush()
		})
	case "retire":
		return c.rootRetire(ctx, args)
	}
	return usagef("root: unknown subcommand %q (want create, rotate, list or retire)", sub)
}

func (c *cli) provision(ctx context.Context, args []string) error {
	fs := c.flags("provision")
	device := fs.String("device", "", "device id (required)")
	group := fs.String("group", "", "give the device the group key group/NAME")
	out := fs.String("out", "", `credential file (default ./credential-<device>.json; "-" for stdout)`)
	if err := parse(fs, args); err != nil {
		return err
	}
	if *device == "" {
		return usagef("provision: --device is required")
	}
	path := *out
	if path == "" {
		path = "credential-" + *device + ".json"
	}
	if path != "-" {
		// Refuse before a key is made, not after.
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("provision: credential file %s exists; it is never overwritten (remove it or choose --out)", path)
		}
	}
	return c.withOps(ctx, need{kms: true, registry: true}, false, func(w *wired) error {
		cred, err := w.ops.Provision(ctx, keyops.ProvisionRequest{DeviceID: *device, Group: *group})
		if err != nil {
			return err
		}
		defer cred.Wipe()
		if err := keyops.WriteCredential(path, c.stdout, cred); err != nil {
			return fmt.Errorf("provisioned %s@%s but could not write the credential: %w", cred.KeyID, cred.KeyVersion, err)
		}
		if path != "-" {
			fmt.Fprintf(c.stdout, "provisioned %s@%s for device %s; credential in %s (mode 0600, holds the DEK in the clear: load it into the device, then delete it)\n",
				cred.KeyID, cred.KeyVersion, cred.DeviceID, path)
		}
		return nil
	})
}

// maxImportFile bounds an import file (a million keys is about 200 MB).
const maxImportFile = 256 << 20

func (c *cli) importKeys(ctx context.Context, args []string) error {
	fs := c.flags("import")
	file := fs.String("file", "", "JSON file of keys (required)")
	skip := fs.Bool("skip-existing", false, "leave versions already in the registry as they are")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *file == "" {
		return usagef("import: --file is required")
	}
	f, err := os.Open(*file)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxImportFile+1))
	f.Close()
	defer clear(data)
	if err != nil {
		return fmt.Errorf("import %s: %w", *file, err)
	}
	if len(data) > maxImportFile {
		return fmt.Errorf("import %s: larger than %d bytes", *file, maxImportFile)
	}
	keys, err := keyops.ParseImport(data)
	clear(data)
	if err != nil {
		return fmt.Errorf("import %s: %w", *file, err)
	}
	defer keyops.WipeKeys(keys)
	return c.withOps(ctx, need{kms: true, registry: true}, false, func(w *wired) error {
		res, err := w.ops.Import(ctx, keys, *skip)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "imported %d key versions", res.Imported)
		if len(res.Skipped) > 0 {
			fmt.Fprintf(c.stdout, ", skipped %d already in the registry", len(res.Skipped))
		}
		fmt.Fprintln(c.stdout)
		return nil
	})
}

func (c *cli) list(ctx context.Context, args []string) error {
	fs := c.flags("list")
	asJSON := fs.Bool("json", false, "JSON output")
	if err := parse(fs, args); err != nil {
		return err
	}
	return c.withOps(ctx, need{registry: true}, false, func(w *wired) error {
		es, err := w.ops.List(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			return keyops.WriteJSON(c.stdout, es)
		}
		return keyops.WriteTable(c.stdout, es)
	})
}

// selectorFlags adds --device, --key-id and --version.
func selectorFlags(fs interface {
	String(name, value, usage string) *string
}) (device, keyID, version *string) {
	return fs.String("device", "", "device id: every version of device/<id>"),
		fs.String("key-id", "", "key id"),
		fs.String("version", "", "key version")
}

func (c *cli) revoke(ctx context.Context, args []string) error {
	fs := c.flags("revoke")
	device, keyID, version := selectorFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case *device == "" && *keyID == "":
		return usagef("revoke: give --key-id and --version, or --device")
	case *device != "" && (*keyID != "" || *version != ""):
		return usagef("revoke: --device cannot be combined with --key-id or --version")
	case *keyID != "" && *version == "":
		return usagef("revoke: --key-id needs --version (or use --device for all of a device's versions)")
	}
	return c.withOps(ctx, need{registry: true}, false, func(w *wired) error {
		outs, err := w.ops.Revoke(ctx, keyops.Selector{DeviceID: *device, KeyID: *keyID, Version: *version})
		for _, o := range outs {
			switch {
			case o.Err != nil:
				fmt.Fprintf(c.stdout, "FAILED %s: %v\n", o.Ref, o.Err)
			case o.Changed:
				fmt.Fprintf(c.stdout, "revoked %s (was %s)\n", o.Ref, o.Before)
			default:
				fmt.Fprintf(c.stdout, "%s already %s\n", o.Ref, o.After)
			}
		}
		return err
	})
}

func (c *cli) shred(ctx context.Context, args []string) error {
	fs := c.flags("shred")
	device, keyID, version := selectorFlags(fs)
	complete := fs.Bool("complete", false, "also rotate the root key, rewrap every other DEK and retire the root versions the shredded DEKs were under, so older registry backups cannot unwrap them")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case *device == "" && *keyID == "":
		return usagef("shred: give --device, or --key-id (and optionally --version)")
	case *device != "" && (*keyID != "" || *version != ""):
		return usagef("shred: --device cannot be combined with --key-id or --version")
	}
	if *complete {
		return c.shredComplete(ctx, keyops.Selector{DeviceID: *device, KeyID: *keyID, Version: *version})
	}
	return c.withOps(ctx, need{registry: true}, false, func(w *wired) error {
		outs, err := w.ops.Shred(ctx, keyops.Selector{DeviceID: *device, KeyID: *keyID, Version: *version})
		for _, o := range outs {
			switch {
			case o.Err != nil:
				fmt.Fprintf(c.stdout, "FAILED %s: %v\n", o.Ref, o.Err)
			case o.Changed:
				fmt.Fprintf(c.stdout, "shredded %s (was %s); destroyed wrapped DEK sha256 %s\n", o.Ref, o.Before, o.WrappedSHA256)
			default:
				fmt.Fprintf(c.stdout, "%s already shredded\n", o.Ref)
			}
		}
		return err
	})
}

func (c *cli) rewrap(ctx context.Context, args []string) error {
	fs := c.flags("rewrap")
	if err := parse(fs, args); err != nil {
		return err
	}
	return c.withOps(ctx, need{kms: true, roots: true, registry: true}, false, func(w *wired) error {
		bar := newProgress(c.stderr)
		res, err := w.ops.Rewrap(ctx, bar.update)
		bar.finish()
		for _, f := range res.Failures {
			fmt.Fprintf(c.stderr, "rewrap %s: %v\n", f.Ref, f.Err)
		}
		fmt.Fprintf(c.stdout, "rewrap: %d entries, %d under an older root version: %d rewrapped, %d changed meanwhile, %d failed\n",
			res.Entries, res.Todo, res.Rewrapped, res.Changed, len(res.Failures))
		return err
	})
}

func (c *cli) audit(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "verify" {
		return usagef("audit: want verify")
	}
	fs := c.flags("audit verify")
	file := fs.String("file", "", "audit log (default: the configured audit.path)")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	path := *file
	if path == "" {
		cfg, err := config.Read(c.configPath, c.env)
		if err != nil {
			return err
		}
		if cfg.Audit.Path == "" {
			return fmt.Errorf("config %s: audit.path: required", c.configPath)
		}
		path = cfg.Audit.Path
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("audit verify: %w", err)
	}
	defer f.Close()
	n, err := keyops.VerifyAudit(f)
	var ce *audit.ChainError
	if errors.As(err, &ce) {
		return fmt.Errorf("audit log %s: broken at line %d (%d lines verified before it): %s", path, ce.Line, n, ce.Reason)
	}
	if err != nil {
		return fmt.Errorf("audit log %s: %w", path, err)
	}
	fmt.Fprintf(c.stdout, "audit log %s: ok, %d lines\n", path, n)
	return nil
}

// progress draws rewrap progress on stderr: a line redrawn with \r on a
// terminal, otherwise a line per tenth of the work (logs stay readable).
type progress struct {
	w     io.Writer
	tty   bool
	last  time.Time
	step  int
	drawn bool
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progress) update(done, total, failed int) {
	if total == 0 {
		return
	}
	if p.tty {
		if done != total && time.Since(p.last) < 100*time.Millisecond {
			return
		}
		p.last = time.Now()
		fmt.Fprintf(p.w, "\rrewrap: %d/%d (%d%%), %d failed", done, total, done*100/total, failed)
		p.drawn = true
		return
	}
	if p.step == 0 {
		p.step = max(1, total/10)
	}
	if done == total || (done > 0 && done%p.step == 0) {
		fmt.Fprintf(p.w, "rewrap: %d/%d (%d%%), %d failed\n", done, total, done*100/total, failed)
	}
}

func (p *progress) finish() {
	if p.tty && p.drawn {
		fmt.Fprintln(p.w)
	}
}
