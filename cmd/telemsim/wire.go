package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/fleet"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/keyprotect"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
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

	var provider kms.Provider
	switch cfg.KMS.Provider {
	case config.ProviderLocal:
		p, err := local.Open(cfg.KMS.Local.RootKeyFile)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w (create it with: dekctl root create)", err)
		}
		if err != nil {
			return nil, err
		}
		provider = p
	case config.ProviderKeyProtect:
		k := cfg.KMS.KeyProtect
		getenv := func(name string) string { v, _ := os.LookupEnv(name); return v }
		p, err := keyprotect.New(ctx, keyprotect.Config{
			BaseURL: k.BaseURL, TokenURL: k.TokenURL, InstanceID: k.InstanceID, RootKeyID: k.RootKeyID,
			APIKeyFile: k.APIKeyFile, APIKeyEnv: k.APIKeyEnv, Timeout: k.Timeout, KeyRing: k.KeyRing,
		}, keyprotect.WithGetenv(getenv))
		if err != nil {
			return nil, err
		}
		closers = append(closers, p.Close)
		provider = p
	default:
		return nil, fmt.Errorf("kms.provider %q: want local or keyprotect", cfg.KMS.Provider)
	}

	var st registry.Store
	switch cfg.Registry.Driver {
	case config.DriverFile:
		if err := os.MkdirAll(filepath.Dir(cfg.Registry.Path), 0o700); err != nil {
			return nil, err
		}
		// A short-lived tool needs no directory watch.
		st, err = filestore.Open(ctx, cfg.Registry.Path, filestore.WithoutFSNotify())
	case config.DriverPostgres:
		st, err = pgstore.Open(ctx, cfg.Registry.DSN.Reveal())
	default:
		err = fmt.Errorf("registry.driver %q: want file or postgres", cfg.Registry.Driver)
	}
	if err != nil {
		return nil, err
	}
	closers = append(closers, st.Close)

	if err := os.MkdirAll(filepath.Dir(cfg.Audit.Path), 0o700); err != nil {
		return nil, err
	}
	aw, err := audit.Open(ctx, cfg.Audit.Path, audit.WithActor("telemsim"))
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
