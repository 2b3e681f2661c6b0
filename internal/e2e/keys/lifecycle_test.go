package keys_test

import (
	"bytes"
	"context"
	"crypto/cipher"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/testutil/metrictest"
)

// provider is one KMS set-up under test: the provider, its root manager,
// and how to learn the newest root version after a rotation.
type provider struct {
	name   string
	kms    kms.Provider
	roots  kms.RootManager
	rootID string
}

// providerSetup makes one provider for one (sub)test.
type providerSetup struct {
	name string
	make func(t *testing.T) provider
}

// providers are the local root key and Key Protect via the emulator.
func providers() []providerSetup {
	return []providerSetup{
		{"local", func(t *testing.T) provider {
			p := newLocal(t)
			return provider{name: "local", kms: p, roots: p, rootID: p.RootKeyID()}
		}},
		{"keyprotect", func(t *testing.T) provider {
			kp := newKP(t, 10*time.Second)
			return provider{name: "keyprotect", kms: kp.p, roots: kp.p, rootID: kp.root}
		}},
	}
}

// newestRootVersion asks the root manager for the root key's last version.
func (p provider) newestRootVersion(t *testing.T) string {
	t.Helper()
	roots, err := p.roots.ListRoots(context.Background())
	if err != nil {
		t.Fatalf("list root keys: %v", err)
	}
	for _, rk := range roots {
		if rk.ID == p.rootID && len(rk.Versions) > 0 {
			return rk.Versions[len(rk.Versions)-1]
		}
	}
	t.Fatalf("root key %s not listed (%+v)", p.rootID, roots)
	return ""
}

// newAuditLog opens an audit writer on a fresh file, closed after the test.
func newAuditLog(t *testing.T, actor string) (*audit.Writer, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w, err := audit.Open(context.Background(), path, audit.WithActor(actor))
	if err != nil {
		t.Fatalf("audit.Open: %v", err)
	}
	t.Cleanup(func() { w.Close() })
	return w, path
}

func newOps(t *testing.T, p provider, store registry.Store, w keyops.Auditor) *keyops.Ops {
	t.Helper()
	op, err := keyops.New(keyops.Options{KMS: p.kms, Roots: p.roots, Registry: store, Audit: w, Operator: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	return op
}

// provisionDevice runs keyops' provisioning and returns the device's cipher
// as the factory would install it (the credential's DEK, then wiped).
func provisionDevice(t *testing.T, op *keyops.Ops, deviceID, group string) (keyops.Credential, *sealer) {
	t.Helper()
	cred, err := op.Provision(context.Background(), keyops.ProvisionRequest{DeviceID: deviceID, Group: group})
	if err != nil {
		t.Fatalf("provision %s: %v", deviceID, err)
	}
	aead, err := seal.NewAEAD(cred.DEK)
	cred.Wipe()
	if err != nil {
		t.Fatal(err)
	}
	return cred, &sealer{t: t, cred: cred, aead: aead}
}

// sealer seals messages as the provisioned device does.
type sealer struct {
	t    *testing.T
	cred keyops.Credential
	aead cipher.AEAD
	n    int
}

func (s *sealer) next() message {
	s.n++
	keyID := ""
	if s.cred.KeyID != dek.DeviceKeyID(s.cred.DeviceID) {
		keyID = s.cred.KeyID
	}
	return sealA(s.t, s.aead, s.cred.DeviceID, keyID, s.cred.KeyVersion, 1767225600+int64(s.n), readingsFor(s.n))
}

// TestRewrapAfterRootRotation: after a root key rotation and a rewrap,
// every message sealed before still decrypts through a fresh cache, and
// every registry entry names the newest root version. Local root key
// (keyops RootRotate + Rewrap) and Key Protect via the emulator (the
// provider's RotateRoot, then Rewrap), on PostgreSQL.
func TestRewrapAfterRootRotation(t *testing.T) {
	for _, ps := range providers() {
		t.Run(ps.name, func(t *testing.T) {
			p := ps.make(t)
			ctx := context.Background()
			store := openPG(t, newPGDSN(t))
			w, _ := newAuditLog(t, "dekctl")
			op := newOps(t, p, store, w)
			before := p.newestRootVersion(t)

			// Device keys (one device twice: v1 decrypt_only, v2 active)
			// and a group key shared by two devices.
			var msgs []message
			for _, dev := range []string{"mon-1", "mon-2", "mon-1"} {
				_, s := provisionDevice(t, op, dev, "")
				msgs = append(msgs, s.next(), s.next())
			}
			for _, dev := range []string{"bed-1", "bed-2"} {
				_, s := provisionDevice(t, op, dev, "ward-9")
				msgs = append(msgs, s.next(), s.next())
			}
			entriesBefore, err := store.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(entriesBefore) != 4 {
				t.Fatalf("%d registry entries after provisioning, want 4 (mon-1 v1+v2, mon-2 v1, group v1)", len(entriesBefore))
			}

			// The daemon had these cached; a fresh cache later must not.
			warm, _ := newCache(t, store, p.kms, keycache.Options{})
			d := newDecryptor(t, warm)
			for _, m := range msgs {
				openOK(t, d, m)
			}

			var rotated kms.RootKey
			if p.name == "keyprotect" {
				// Through the provider, as the issue asks for Key Protect.
				rotated, err = p.roots.RotateRoot(ctx, p.rootID)
			} else {
				rotated, err = op.RootRotate(ctx, "")
			}
			if err != nil {
				t.Fatalf("rotate root: %v", err)
			}
			after := p.newestRootVersion(t)
			if after == before || rotated.Versions[len(rotated.Versions)-1] != after {
				t.Fatalf("root versions: before %q, after %q, rotate said %v", before, after, rotated.Versions)
			}

			res, err := op.Rewrap(ctx, nil)
			if err != nil {
				t.Fatalf("rewrap: %v (%+v)", err, res)
			}
			if res.Entries != 4 || res.Todo != 4 || res.Rewrapped != 4 || res.Changed != 0 || len(res.Failures) != 0 {
				t.Errorf("rewrap result %+v, want 4 entries, 4 to do, 4 rewrapped", res)
			}

			entries, err := store.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			old := map[dek.Ref]registry.Entry{}
			for _, e := range entriesBefore {
				old[e.Ref()] = e
			}
			for _, e := range entries {
				if e.Wrapped.RootKeyID != p.rootID || e.Wrapped.RootKeyVersion != after {
					t.Errorf("%s wrapped under %s/%s after rewrap, want %s/%s", e.Ref(), e.Wrapped.RootKeyID, e.Wrapped.RootKeyVersion, p.rootID, after)
				}
				o := old[e.Ref()]
				if bytes.Equal(o.Wrapped.Ciphertext, e.Wrapped.Ciphertext) {
					t.Errorf("%s: wrapped DEK unchanged by the rewrap", e.Ref())
				}
				if o.State != e.State || !slices.Equal(o.Devices, e.Devices) {
					t.Errorf("%s: rewrap changed state %s -> %s or devices %v -> %v", e.Ref(), o.State, e.State, o.Devices, e.Devices)
				}
			}

			// A second run finds nothing left to do (resumable, idempotent).
			res2, err := op.Rewrap(ctx, nil)
			if err != nil || res2.Todo != 0 || res2.Rewrapped != 0 {
				t.Errorf("second rewrap: %+v, %v; want nothing to do", res2, err)
			}

			fresh, reg := newCache(t, store, p.kms, keycache.Options{})
			d2 := newDecryptor(t, fresh)
			for _, m := range msgs {
				openOK(t, d2, m)
			}
			if n := metrictest.Value(t, reg, "decryptd_kms_requests_total", "operation", "unwrap", "result", "ok"); n != 4 {
				t.Errorf("fresh cache made %v successful unwraps, want 4 (one per key version)", n)
			}
		})
	}
}

// TestShredRevokesMessages: after shred --device, every message under that
// device's key versions fails with key_revoked: through a running cache that
// had them cached (it learns of the shred on the change feed, with a 1 h
// lifetime that would otherwise keep serving them) and through a fresh one.
// Another device's key keeps working, and the registry keeps tombstones
// without ciphertext.
func TestShredRevokesMessages(t *testing.T) {
	for _, ps := range providers() {
		t.Run(ps.name, func(t *testing.T) {
			p := ps.make(t)
			ctx := context.Background()
			dsn := newPGDSN(t)
			daemonStore, operatorStore := openPG(t, dsn), openPG(t, dsn)
			w, _ := newAuditLog(t, "dekctl")
			op := newOps(t, p, operatorStore, w)

			var doomed, kept []message
			for range 2 { // pump-1 v1 (then decrypt_only) and v2
				_, s := provisionDevice(t, op, "pump-1", "")
				doomed = append(doomed, s.next(), s.next())
			}
			_, s := provisionDevice(t, op, "pump-2", "")
			kept = append(kept, s.next(), s.next())

			logger, logs := observedLogger()
			warm, _ := newCache(t, daemonStore, p.kms, keycache.Options{Logger: logger})
			runCache(t, warm, logs)
			d := newDecryptor(t, warm)
			for _, m := range slices.Concat(doomed, kept) {
				openOK(t, d, m)
			}

			outs, err := op.Shred(ctx, keyops.Selector{DeviceID: "pump-1"})
			if err != nil {
				t.Fatalf("shred --device pump-1: %v", err)
			}
			if len(outs) != 2 {
				t.Fatalf("shred touched %d versions, want 2: %+v", len(outs), outs)
			}
			for _, o := range outs {
				if !o.Changed || o.After != dek.StateShredded {
					t.Errorf("shred outcome %+v", o)
				}
			}

			// The running cache: wait (generously) for the change events.
			deadline := time.Now().Add(10 * time.Second)
			for _, v := range []string{"v1", "v2"} {
				for {
					_, err := warm.ResolveKey(ctx, "device/pump-1", v, "pump-1")
					if errors.Is(err, dek.ErrRevoked) {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("running cache still resolves device/pump-1@%s 10 s after the shred: %v", v, err)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}

			fresh, _ := newCache(t, daemonStore, p.kms, keycache.Options{})
			for _, c := range []struct {
				name  string
				cache *keycache.Cache
			}{{"cached", warm}, {"fresh", fresh}} {
				// A new Decryptor: its replay window has not seen these.
				d := newDecryptor(t, c.cache)
				for _, m := range doomed {
					rec, err := d.Open(ctx, decrypt.Message{Topic: m.topic, Payload: m.payload})
					if got := decrypt.Reason(err); got != "key_revoked" {
						t.Errorf("%s cache, %s@%s message: reason %q (%v), want key_revoked", c.name, m.keyID, m.version, got, err)
					}
					if rec.Data != nil {
						t.Errorf("%s cache: a record came out of a shredded key's message", c.name)
					}
				}
				for _, m := range kept {
					openOK(t, d, m)
				}
			}

			for _, v := range []string{"v1", "v2"} {
				e, err := operatorStore.Get(ctx, "device/pump-1", v)
				if err != nil {
					t.Fatal(err)
				}
				if e.State != dek.StateShredded || !e.Wrapped.IsZero() {
					t.Errorf("device/pump-1@%s after shred: state %s, %d ciphertext bytes; want a shredded tombstone", v, e.State, len(e.Wrapped.Ciphertext))
				}
			}
		})
	}
}
