package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/keyprotect"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
)

// need says which parts a command uses.
type need struct {
	kms      bool // a kms.Provider (wrap, unwrap, rewrap)
	roots    bool // a kms.RootManager
	registry bool
}

// wired holds the parts; close releases them in reverse order.
type wired struct {
	cfg     *config.Config
	ops     *keyops.Ops
	closers []func() error
}

func (w *wired) close() error {
	var errs []error
	for i := len(w.closers) - 1; i >= 0; i-- {
		errs = append(errs, w.closers[i]())
	}
	return errors.Join(errs...)
}

// loadConfig reads and validates the configuration. Root key commands may
// run before a Key Protect root key id exists.
func (c *cli) loadConfig(rootCmd bool) (*config.Config, error) {
	cfg, err := config.Read(c.configPath, c.env)
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		var ve *config.ValidationError
		if rootCmd && errors.As(err, &ve) {
			err = ve.Without("kms.keyprotect.root_key_id")
		}
		if err != nil {
			return nil, fmt.Errorf("config %s: %w", c.configPath, err)
		}
	}
	if c.environ != nil {
		if err := config.CheckEnv(c.environ(), cfg); err != nil {
			return nil, fmt.Errorf("config %s: %w", c.configPath, err)
		}
	}
	return cfg, nil
}

// mkdirFor makes the parent directory of path (0700) so that a fresh
// checkout's ./var/ works without a manual step.
func mkdirFor(path string) error {
	return os.MkdirAll(filepath.Dir(path), 0o700)
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

func (c *cli) wire(ctx context.Context, n need, rootCmd bool) (*wired, error) {
	cfg, err := c.loadConfig(rootCmd)
	if err != nil {
		return nil, err
	}
	w := &wired{cfg: cfg}
	ok := false
	defer func() {
		if !ok {
			_ = w.close()
		}
	}()
	opts := keyops.Options{Operator: operator()}

	if n.kms || n.roots {
		switch cfg.KMS.Provider {
		case config.ProviderLocal:
			path := cfg.KMS.Local.RootKeyFile
			if n.kms {
				p, err := local.Open(path)
				if errors.Is(err, fs.ErrNotExist) {
					return nil, fmt.Errorf("%w (create it with: dekctl root create)", err)
				}
				if err != nil {
					return nil, err
				}
				opts.KMS, opts.Roots = p, p
			} else {
				if err := mkdirFor(path); err != nil {
					return nil, err
				}
				opts.Roots = local.NewManager(path)
			}
		case config.ProviderKeyProtect:
			k := cfg.KMS.KeyProtect
			getenv := func(name string) string { v, _ := c.env(name); return v }
			p, err := keyprotect.New(ctx, keyprotect.Config{
				BaseURL: k.BaseURL, TokenURL: k.TokenURL, InstanceID: k.InstanceID, RootKeyID: k.RootKeyID,
				APIKeyFile: k.APIKeyFile, APIKeyEnv: k.APIKeyEnv, Timeout: k.Timeout, KeyRing: k.KeyRing,
			}, keyprotect.WithGetenv(getenv))
			if err != nil {
				return nil, err
			}
			w.closers = append(w.closers, p.Close)
			opts.Roots = p
			if n.kms {
				opts.KMS = p
			}
		}
	}

	if n.registry {
		var st registry.Store
		switch cfg.Registry.Driver {
		case config.DriverFile:
			if err := mkdirFor(cfg.Registry.Path); err != nil {
				return nil, err
			}
			// A short-lived tool needs no directory watch.
			st, err = filestore.Open(ctx, cfg.Registry.Path, filestore.WithoutFSNotify())
		case config.DriverPostgres:
			st, err = pgstore.Open(ctx, cfg.Registry.DSN.Reveal())
		}
		if err != nil {
			return nil, err
		}
		w.closers = append(w.closers, st.Close)
		opts.Registry = st
	}

	if err := mkdirFor(cfg.Audit.Path); err != nil {
		return nil, err
	}
	aw, err := audit.Open(ctx, cfg.Audit.Path, audit.WithActor("dekctl"))
	if err != nil {
		return nil, err
	}
	w.closers = append(w.closers, aw.Close)
	opts.Audit = aw

	w.ops, err = keyops.New(opts)
	if err != nil {
		return nil, err
	}
	ok = true
	return w, nil
}

// withOps wires, runs f and closes, joining a close error into the result.
func (c *cli) withOps(ctx context.Context, n need, rootCmd bool, f func(*wired) error) (err error) {
	w, err := c.wire(ctx, n, rootCmd)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := w.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return f(w)
}

var _ kms.RootManager = (*local.Manager)(nil)
