package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/wire"
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
		getenv := func(name string) string { v, _ := c.env(name); return v }
		k, err := wire.OpenKMS(ctx, cfg.KMS, wire.KMSOptions{RootsOnly: !n.kms, Getenv: getenv})
		if err != nil {
			return nil, err
		}
		w.closers = append(w.closers, k.Close)
		opts.KMS, opts.Roots = k.Provider, k.Roots
	}

	if n.registry {
		// A short-lived tool needs no directory watch.
		st, err := wire.OpenRegistry(ctx, cfg.Registry, wire.RegistryOptions{})
		if err != nil {
			return nil, err
		}
		w.closers = append(w.closers, st.Close)
		opts.Registry = st
	}

	aw, err := wire.OpenAudit(ctx, cfg.Audit.Path, "dekctl")
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
