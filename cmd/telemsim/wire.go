package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/user"
	"time"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/fleet"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/wire"
)

// provision opens the configuration's KMS, registry and audit log (as
// dekctl does), provisions o.provision devices through fleet.Bulk and
// closes them again.
func provision(ctx context.Context, cfg *config.Config, o *options, stderr io.Writer, progress bool) (creds []keyops.Credential, err error) {
	var closers []func() error
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			if cerr := closers[i](); cerr != nil && err == nil {
				wipe(creds)
				creds, err = nil, cerr
			}
		}
	}()

	k, err := wire.OpenKMS(ctx, cfg.KMS, wire.KMSOptions{})
	if err != nil {
		return nil, err
	}
	closers = append(closers, k.Close)
	provider := k.Provider

	// A short-lived tool needs no directory watch.
	st, err := wire.OpenRegistry(ctx, cfg.Registry, wire.RegistryOptions{})
	if err != nil {
		return nil, err
	}
	closers = append(closers, st.Close)

	aw, err := wire.OpenAudit(ctx, cfg.Audit.Path, "telemsim")
	if err != nil {
		return nil, err
	}
	closers = append(closers, aw.Close)

	var prov fleet.KeyProvisioner = &fleet.Bulk{KMS: provider, Registry: st, Audit: aw, Operator: operator(), Workers: o.workers}
	if o.viaKeyops {
		if prov, err = keyops.New(keyops.Options{KMS: provider, Registry: st, Audit: aw, Operator: operator()}); err != nil {
			return nil, err
		}
	}
	if _, ok := any(st).(fleet.BulkCreator); !ok && o.groupSize == 0 && cfg.Registry.Driver == config.DriverFile && o.provision > 2000 {
		fmt.Fprintf(stderr, "telemsim: the file registry rewrites its whole file per new key: %d device keys will take a while (--group-size makes one key per group)\n", o.provision)
	}
	start := time.Now()
	if progress {
		fmt.Fprintf(stderr, "telemsim: provisioning %d devices into the %s registry (KMS %s)...\n", o.provision, cfg.Registry.Driver, cfg.KMS.Provider)
	}
	popts := fleet.ProvisionOptions{Prefix: o.prefix, GroupSize: o.groupSize, Workers: o.workers}
	if progress {
		popts.Progress = func(done, total int) { fmt.Fprintf(stderr, "telemsim: provisioned %d of %d\n", done, total) }
	}
	creds, err = fleet.Provision(ctx, o.provision, prov, popts)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(stderr, "telemsim: provisioned %d devices in %s\n", len(creds), time.Since(start).Round(time.Millisecond))
	return creds, nil
}

func operator() string {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil {
		name += "@" + h
	}
	return name
}
