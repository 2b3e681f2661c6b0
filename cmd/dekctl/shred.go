package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
)

// rootRetire is `dekctl root retire --version V [--id ID]`.
func (c *cli) rootRetire(ctx context.Context, args []string) error {
	fs := c.flags("root retire")
	id := fs.String("id", "", "root key id (default: the configured one, or the only one)")
	version := fs.String("version", "", "root key version to destroy (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *version == "" {
		return usagef("root retire: --version is required")
	}
	return c.withOps(ctx, need{kms: true, roots: true, registry: true}, true, func(w *wired) error {
		rid := *id
		if rid == "" && w.cfg.KMS.Provider == config.ProviderKeyProtect {
			rid = w.cfg.KMS.KeyProtect.RootKeyID
		}
		res, err := w.ops.RootRetire(ctx, rid, *version)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "retired %s: DEKs wrapped under it, in any copy of the registry, can no longer be unwrapped\n", versionsText(res.Destroyed))
		if w.cfg.KMS.Provider == config.ProviderKeyProtect {
			kpPurgeHint(c, res.Destroyed)
		}
		return nil
	})
}

// shredComplete is `dekctl shred --complete ...`.
func (c *cli) shredComplete(ctx context.Context, sel keyops.Selector) error {
	return c.withOps(ctx, need{kms: true, roots: true, registry: true}, false, func(w *wired) error {
		bar := newProgress(c.stderr)
		res, err := w.ops.ShredComplete(ctx, sel, bar.update)
		bar.finish()
		for _, o := range res.Shredded {
			switch {
			case o.Err != nil:
				fmt.Fprintf(c.stdout, "FAILED %s: %v\n", o.Ref, o.Err)
			case o.Changed:
				fmt.Fprintf(c.stdout, "shredded %s (was %s); destroyed wrapped DEK sha256 %s\n", o.Ref, o.Before, o.WrappedSHA256)
			default:
				fmt.Fprintf(c.stdout, "%s already shredded\n", o.Ref)
			}
		}
		for _, rk := range res.Rotated {
			fmt.Fprintf(c.stdout, "rotated root key %s to version %s\n", rk.ID, rk.Versions[len(rk.Versions)-1])
		}
		if res.Replacement != "" {
			fmt.Fprintf(c.stdout, "moved DEKs to the replacement root key %s\n", res.Replacement)
		}
		for _, f := range res.Rewrap.Failures {
			fmt.Fprintf(c.stderr, "rewrap %s: %v\n", f.Ref, f.Err)
		}
		if res.Rewrap.Todo > 0 {
			fmt.Fprintf(c.stdout, "rewrap: %d entries, %d to move: %d rewrapped, %d changed meanwhile, %d failed\n",
				res.Rewrap.Entries, res.Rewrap.Todo, res.Rewrap.Rewrapped, res.Rewrap.Changed, len(res.Rewrap.Failures))
		}
		if len(res.Retired) > 0 {
			fmt.Fprintf(c.stdout, "retired %s\n", versionsText(res.Retired))
		}
		if res.Purged != "" {
			fmt.Fprintf(c.stdout, "registry purged: %s\n", res.Purged)
		}
		if err != nil {
			return fmt.Errorf("%w\nshred --complete is resumable: run the same command again", err)
		}
		if res.Replacement != "" {
			kpPurgeHint(c, res.Retired)
			fmt.Fprintf(c.stdout, "NEXT: set kms.keyprotect.root_key_id: %s (or DECRYPTD_KMS_KEYPROTECT_ROOT_KEY_ID) and restart the daemons; new DEKs cannot be wrapped under the deleted key\n", res.Replacement)
		}
		fmt.Fprintln(c.stdout, "NEXT: take a new registry backup now; backups taken before this run no longer unwrap any DEK that was under the retired root versions (docs/crypto-shredding.md)")
		return nil
	})
}

func versionsText(vs []kms.RootVersion) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = v.RootKeyID + " version " + v.Version
	}
	return "root key " + strings.Join(parts, ", ")
}

// kpPurgeHint says how a deleted Key Protect key becomes final.
func kpPurgeHint(c *cli, vs []kms.RootVersion) {
	if len(vs) == 0 {
		return
	}
	fmt.Fprintf(c.stdout, "NOTE: Key Protect keeps the deleted key %s restorable for 30 days and purges it after 90; to make it final sooner, purge it 4 hours after the delete (ibmcloud kp key purge %s)\n",
		vs[0].RootKeyID, vs[0].RootKeyID)
}
