package rotation_test

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/testutil/pgtest"
)

// world is what an operator and the replicas share: one PostgreSQL
// registry, one local root key file, the operator's audit log.
type world struct {
	dir      string
	dsn      string
	rootPath string
	root     *local.Provider
	store    *pgstore.Store // the operator's handle (dekctl)
	audit    *audit.Writer
	auditLog string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w := &world{dir: t.TempDir(), dsn: pgtest.New(t)}
	w.rootPath = filepath.Join(w.dir, "root-key.json")
	var err error
	if w.root, err = local.Create(w.rootPath, "e2e-root"); err != nil {
		t.Fatal(err)
	}
	if w.store, err = pgstore.Open(ctx, w.dsn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.store.Close() })
	w.auditLog = filepath.Join(w.dir, "audit.log")
	if w.audit, err = audit.Open(ctx, w.auditLog, audit.WithActor("dekctl")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.audit.Close() })
	return w
}

func (w *world) ops(t *testing.T, p kms.Provider) *keyops.Ops {
	t.Helper()
	op, err := keyops.New(keyops.Options{KMS: p, Roots: w.root, Registry: w.store, Audit: w.audit, Operator: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	return op
}

// device holds a device's DEKs by version.
type device struct {
	id   string
	keys map[string]cipher.AEAD
}

func provision(t *testing.T, op *keyops.Ops, id string) *device {
	t.Helper()
	cred, err := op.Provision(context.Background(), keyops.ProvisionRequest{DeviceID: id})
	if err != nil {
		t.Fatal(err)
	}
	a, err := seal.NewAEAD(cred.DEK)
	cred.Wipe()
	if err != nil {
		t.Fatal(err)
	}
	return &device{id: id, keys: map[string]cipher.AEAD{cred.KeyVersion: a}}
}

// message seals a fresh message (new nonce) under version.
func (d *device) message(t *testing.T, version string) decrypt.Message {
	t.Helper()
	a := d.keys[version]
	if a == nil {
		t.Fatalf("%s holds no %s", d.id, version)
	}
	p, err := seal.New(rand.Reader).AppendShapeA(nil, a, seal.Envelope{DeviceID: d.id, Timestamp: time.Now().Unix(), KeyVersion: version},
		[]byte(`{"heart_rate":71}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	return decrypt.Message{Topic: "iot-2/type/monitor/id/" + d.id + "/evt/telemetry/fmt/json", Payload: p}
}

// replica is one daemon's key path: its own registry handle, root key
// file reader, running key cache and decryptor.
type replica struct {
	name  string
	cache *keycache.Cache
	dec   *decrypt.Decryptor
}

func newReplica(t *testing.T, w *world, name string) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	store, err := pgstore.Open(ctx, w.dsn)
	if err != nil {
		t.Fatal(err)
	}
	p, err := local.Open(w.rootPath)
	if err != nil {
		t.Fatal(err)
	}
	cache, err := keycache.New(keycache.Options{Registry: store, KMS: p, Changes: store})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := decrypt.New(cache, decrypt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); cache.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		cache.Close()
		store.Close()
	})
	return &replica{name: name, cache: cache, dec: dec}
}

// open opens m, retrying transient faults for a while.
func (r *replica) open(m decrypt.Message) (decrypt.Record, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, err := r.dec.Open(context.Background(), m)
		if !errors.Is(err, decrypt.ErrTransient) || time.Now().After(deadline) {
			return rec, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *replica) mustOpen(t *testing.T, m decrypt.Message) {
	t.Helper()
	if _, err := r.open(m); err != nil {
		t.Fatalf("%s: %s: %v", r.name, decrypt.Reason(err), err)
	}
}

func verifyAudit(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := audit.Verify(f)
	if err != nil {
		t.Fatalf("audit chain of %s: %v (after %d lines)", path, err, n)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
