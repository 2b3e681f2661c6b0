// Package wire opens the parts every decryptd binary builds from the same
// configuration sections, written once: the KMS provider (kms), the DEK
// registry (registry) and the audit log (audit). decryptd, dekctl and
// telemsim call these; none opens a provider or a store itself.
//
// Promises: a part that fails to open leaves nothing open; what opened is
// released by the Close the caller receives. A file (a registry file, an
// audit log) gets its parent directory made (0700) first, so a fresh
// installation's var/ works without a manual step. Secrets (a Key Protect
// API key) are read by the provider from the file or variable the
// configuration names, never passed through here.
package wire

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/keyprotect"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
)

// KMS is an opened KMS configuration: Provider wraps and unwraps (nil when
// only roots were asked for and the local root key file does not exist
// yet), Roots manages root keys. Close releases it (never nil).
type KMS struct {
	Provider kms.Provider
	Roots    kms.RootManager
	Close    func() error
}

// KMSOptions tune OpenKMS.
type KMSOptions struct {
	// RootsOnly: only root management is needed (dekctl root create): a
	// local root key file need not exist yet, and Provider stays nil for
	// provider local.
	RootsOnly bool
	// Getenv looks up the Key Protect API key variable (default os.Getenv).
	Getenv func(string) string
}

// OpenKMS opens the provider cfg names.
func OpenKMS(ctx context.Context, cfg config.KMS, o KMSOptions) (KMS, error) {
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	none := func() error { return nil }
	switch cfg.Provider {
	case config.ProviderLocal:
		path := cfg.Local.RootKeyFile
		if o.RootsOnly {
			if err := MkdirFor(path); err != nil {
				return KMS{}, err
			}
			return KMS{Roots: local.NewManager(path), Close: none}, nil
		}
		p, err := local.Open(path)
		if errors.Is(err, fs.ErrNotExist) {
			return KMS{}, fmt.Errorf("kms local: %w (create it with: dekctl root create)", err)
		}
		if err != nil {
			return KMS{}, fmt.Errorf("kms local: %w", err)
		}
		return KMS{Provider: p, Roots: p, Close: none}, nil
	case config.ProviderKeyProtect:
		k := cfg.KeyProtect
		p, err := keyprotect.New(ctx, keyprotect.Config{
			BaseURL: k.BaseURL, TokenURL: k.TokenURL, InstanceID: k.InstanceID, RootKeyID: k.RootKeyID,
			APIKeyFile: k.APIKeyFile, APIKeyEnv: k.APIKeyEnv, Timeout: k.Timeout, KeyRing: k.KeyRing,
			CAFile: k.CAFile,
		}, keyprotect.WithGetenv(o.Getenv))
		if err != nil {
			return KMS{}, fmt.Errorf("kms keyprotect: %w", err)
		}
		out := KMS{Roots: p, Close: p.Close}
		if !o.RootsOnly {
			out.Provider = p
		}
		return out, nil
	default:
		return KMS{}, fmt.Errorf("kms.provider %q: want local or keyprotect", cfg.Provider)
	}
}

// RegistryOptions tune OpenRegistry.
type RegistryOptions struct {
	// Logger, when set, gets the store's state changes (a long-running
	// daemon's).
	Logger *zap.Logger
	// Watch keeps a file registry's directory watched (fsnotify), so a
	// change made by another process reaches this one within a moment; a
	// short-lived tool leaves it off.
	Watch bool
	// ListenerState, for driver postgres, is told when the change feed's
	// connection comes up and goes down (pgstore.WithListenerState).
	ListenerState func(up bool)
}

// OpenRegistry opens the registry cfg names.
func OpenRegistry(ctx context.Context, cfg config.Registry, o RegistryOptions) (registry.Store, error) {
	switch cfg.Driver {
	case config.DriverFile:
		if err := MkdirFor(cfg.Path); err != nil {
			return nil, err
		}
		opts := []filestore.Option{}
		if o.Logger != nil {
			opts = append(opts, filestore.WithLogger(o.Logger))
		}
		if !o.Watch {
			opts = append(opts, filestore.WithoutFSNotify())
		}
		st, err := filestore.Open(ctx, cfg.Path, opts...)
		if err != nil {
			return nil, fmt.Errorf("registry: %w", err)
		}
		return st, nil
	case config.DriverPostgres:
		var opts []pgstore.Option
		if o.Logger != nil {
			opts = append(opts, pgstore.WithLogger(o.Logger))
		}
		if o.ListenerState != nil {
			opts = append(opts, pgstore.WithListenerState(o.ListenerState))
		}
		st, err := pgstore.Open(ctx, cfg.DSN.Reveal(), opts...)
		if err != nil {
			return nil, fmt.Errorf("registry: %w", err)
		}
		return st, nil
	default:
		return nil, fmt.Errorf("registry.driver %q: want file or postgres", cfg.Driver)
	}
}

// OpenAudit opens the audit log at path, writing as actor.
func OpenAudit(ctx context.Context, path, actor string) (*audit.Writer, error) {
	if err := MkdirFor(path); err != nil {
		return nil, err
	}
	return audit.Open(ctx, path, audit.WithActor(actor))
}

// MkdirFor makes the parent directory of path (0700); nothing for "".
func MkdirFor(path string) error {
	if path == "" {
		return nil
	}
	return os.MkdirAll(filepath.Dir(path), 0o700)
}
