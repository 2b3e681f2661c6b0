package e2etest

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry/filestore"
)

// RootKeyPath and RegistryPath are where CreateLocalRoot and OpenDekctl
// keep the local root key and the file registry in a folder.
func RootKeyPath(dir string) string  { return filepath.Join(dir, "root-key.json") }
func RegistryPath(dir string) string { return filepath.Join(dir, "registry.json") }

// CreateLocalRoot creates a local root key with id at RootKeyPath(dir).
func CreateLocalRoot(dir, id string) (*local.Provider, error) {
	return local.Create(RootKeyPath(dir), id)
}

// Dekctl is what dekctl opens to provision devices: the file registry at
// RegistryPath(dir), without fsnotify, and the audit log
// dir/dekctl-audit.log written as actor dekctl.
type Dekctl struct {
	Registry *filestore.Store
	Audit    *audit.Writer
}

// OpenDekctl opens the registry and the audit log in dir; Close closes
// both.
func OpenDekctl(ctx context.Context, dir string) (*Dekctl, error) {
	store, err := filestore.Open(ctx, RegistryPath(dir), filestore.WithoutFSNotify())
	if err != nil {
		return nil, err
	}
	aw, err := audit.Open(ctx, filepath.Join(dir, "dekctl-audit.log"), audit.WithActor("dekctl"))
	if err != nil {
		store.Close()
		return nil, err
	}
	return &Dekctl{Registry: store, Audit: aw}, nil
}

// Close closes the audit log and the registry.
func (d *Dekctl) Close() {
	d.Audit.Close()
	d.Registry.Close()
}

// LocalKeys is CreateLocalRoot and OpenDekctl in dir, failing the test on
// either's error; the caller closes the Dekctl once it has provisioned.
func LocalKeys(ctx context.Context, tb testing.TB, dir, rootID string) (*local.Provider, *Dekctl) {
	tb.Helper()
	lp, err := CreateLocalRoot(dir, rootID)
	if err != nil {
		tb.Fatal(err)
	}
	dk, err := OpenDekctl(ctx, dir)
	if err != nil {
		tb.Fatal(err)
	}
	return lp, dk
}
