package keyenv

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/testutil/vectors"
)

// Env is the key side in one directory.
type Env struct {
	KMS          *local.Provider
	Store        *filestore.Store
	RegistryPath string
	Audit        *audit.Writer
	Ops          *keyops.Ops
}

// Options shape an Env.
type Options struct {
	// AuditFile is the audit log's name in the directory; default
	// "dekctl-audit.log".
	AuditFile string
	// Now is keyops' clock (a provisioning "hours ago", say); nil is
	// time.Now.
	Now func() time.Time
}

// Open creates the key side in dir.
func Open(ctx context.Context, t testing.TB, dir string, o Options) *Env {
	t.Helper()
	if o.AuditFile == "" {
		o.AuditFile = "dekctl-audit.log"
	}
	lp, err := local.Create(filepath.Join(dir, "root-key.json"), "test-root")
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{KMS: lp, RegistryPath: filepath.Join(dir, "registry.json")}
	if e.Store, err = filestore.Open(ctx, e.RegistryPath, filestore.WithoutFSNotify()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Store.Close() })
	if e.Audit, err = audit.Open(ctx, filepath.Join(dir, o.AuditFile), audit.WithActor("dekctl")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Audit.Close() })
	if e.Ops, err = keyops.New(keyops.Options{KMS: lp, Roots: lp, Registry: e.Store, Audit: e.Audit, Now: o.Now}); err != nil {
		t.Fatal(err)
	}
	return e
}

// Close closes the registry and the audit log.
func (e *Env) Close() {
	_ = e.Audit.Close()
	_ = e.Store.Close()
}

// ImportVectors creates the key side in dir (the audit log named
// auditFile, "" for the default), imports v's keys through keyops and
// closes it again, leaving the files for a daemon to open.
func ImportVectors(t testing.TB, dir, auditFile string, v vectors.File) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	e := Open(ctx, t, dir, Options{AuditFile: auditFile})
	defer e.Close()
	keys, err := keyops.ParseImport(v.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Ops.Import(ctx, keys, false); err != nil {
		t.Fatalf("import vector keys: %v", err)
	}
}
