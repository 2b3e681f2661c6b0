package fleet

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/seal"
)

// memFleet makes a fleet of n devices with random keys in memory (group
// keys of groupSize devices when positive).
func memFleet(t testing.TB, n, groupSize int) *Fleet {
	t.Helper()
	reqs, err := Requests(n, ProvisionOptions{GroupSize: groupSize})
	if err != nil {
		t.Fatal(err)
	}
	creds := make([]keyops.Credential, n)
	groupKeys := map[string][]byte{}
	for i, r := range reqs {
		keyID := dek.DeviceKeyID(r.DeviceID)
		var key []byte
		if r.Group != "" {
			keyID = "group/" + r.Group
			if groupKeys[keyID] == nil {
				groupKeys[keyID] = randKey(t)
			}
			key = append([]byte(nil), groupKeys[keyID]...)
		} else {
			key = randKey(t)
		}
		creds[i] = keyops.Credential{DeviceID: r.DeviceID, KeyID: keyID, KeyVersion: "v1", DEK: key}
	}
	f, err := NewFleet(creds, "")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func randKey(t testing.TB) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// keyEnv is a temp file registry, local KMS and audit log.
type keyEnv struct {
	dir   string
	reg   *filestore.Store
	kms   *local.Provider
	audit *audit.Writer
}

func newKeyEnv(t testing.TB) *keyEnv {
	t.Helper()
	dir := t.TempDir()
	ctx := context.Background()
	p, err := local.Create(filepath.Join(dir, "root.json"), "root-test")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := filestore.Open(ctx, filepath.Join(dir, "registry.json"), filestore.WithoutFSNotify())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	aw, err := audit.Open(ctx, filepath.Join(dir, "audit.jsonl"), audit.WithActor("telemsim"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { aw.Close() })
	return &keyEnv{dir: dir, reg: reg, kms: p, audit: aw}
}

func (e *keyEnv) bulk() *Bulk {
	return &Bulk{KMS: e.kms, Registry: e.reg, Audit: e.audit, Operator: "test"}
}

// registryResolver opens keys the way the daemon does: the registry entry,
// unwrapped by the KMS, allowed for the device, in a decryptable state.
type registryResolver struct {
	reg registry.Store
	kms kms.Provider
}

func (r *registryResolver) ResolveKey(ctx context.Context, keyID, keyVersion, deviceID string) (cipher.AEAD, error) {
	e, err := r.reg.Get(ctx, keyID, keyVersion)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", dek.ErrUnknownKey, err)
	}
	if !e.AllowsDevice(deviceID) {
		return nil, dek.ErrUnknownKey
	}
	if !e.State.CanDecrypt() {
		return nil, dek.ErrRevoked
	}
	key, err := r.kms.Unwrap(ctx, e.Wrapped, kms.DEKAAD(e.Ref()))
	if err != nil {
		return nil, err
	}
	defer clear(key)
	return seal.NewAEAD(key)
}

var _ decrypt.KeyResolver = (*registryResolver)(nil)
