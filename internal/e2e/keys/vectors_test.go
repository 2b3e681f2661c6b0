package keys_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/testutil/vectors"
)

// TestVectorsAfterImport: importing the spec vectors' keys, then decrypting
// every vector case in order through the key cache, gives the vectors'
// expected results. The import runs through internal/keyops and through
// the dekctl binary (`dekctl import --file`), each with the local root key
// and with Key Protect via the emulator, on the PostgreSQL registry.
func TestVectorsAfterImport(t *testing.T) {
	v := vectors.Load(t)
	bin := buildDekctl(t)

	type kmsSetup struct {
		p       kms.Provider
		roots   kms.RootManager
		rootID  string
		section string // dekctl's kms configuration
	}
	for _, prov := range []struct {
		name string
		make func(t *testing.T) kmsSetup
	}{
		{"local", func(t *testing.T) kmsSetup {
			p := newLocal(t)
			return kmsSetup{p, p, p.RootKeyID(), kmsLocalYAML(p.Path())}
		}},
		{"keyprotect", func(t *testing.T) kmsSetup {
			kp := newKP(t, 10*time.Second)
			return kmsSetup{kp.p, kp.p, kp.root, kmsKeyProtectYAML(kp, kp.apiKeyFile)}
		}},
	} {
		for _, importer := range []string{"keyops", "dekctl"} {
			t.Run(prov.name+"/"+importer, func(t *testing.T) {
				ctx := context.Background()
				k := prov.make(t)
				dsn := newPGDSN(t)
				store := openPG(t, dsn)
				auditLog, auditPath := newAuditLog(t, "dekctl")

				switch importer {
				case "keyops":
					data := v.Bytes()
					keys, err := keyops.ParseImport(data)
					clear(data)
					if err != nil {
						t.Fatalf("ParseImport of the vector file: %v", err)
					}
					op := newOps(t, provider{name: prov.name, kms: k.p, roots: k.roots, rootID: k.rootID}, store, auditLog)
					res, err := op.Import(ctx, keys, false)
					if err != nil {
						t.Fatalf("import: %v", err)
					}
					if res.Imported != len(v.Keys) || len(res.Skipped) != 0 {
						t.Fatalf("import result %+v, want %d imported", res, len(v.Keys))
					}
				case "dekctl":
					auditLog.Close() // dekctl writes the log itself
					d := newDekctl(t, bin, k.section, dsn, auditPath)
					out := d.must(t, "import", "--file", v.Path)
					if !strings.Contains(out, "imported 4 key versions") {
						t.Errorf("dekctl import said %q", out)
					}
				}

				entries, err := store.List(ctx)
				if err != nil {
					t.Fatal(err)
				}
				checkImported(t, v, entries, k.rootID)

				cache, _ := newCache(t, store, k.p, keycache.Options{})
				runVectors(t, v, cache)
			})
		}
	}
}

// checkImported: the registry holds exactly the vector keys, in their
// states and with their device lists, wrapped under rootID.
func checkImported(t *testing.T, v vectors.File, entries []registry.Entry, rootID string) {
	t.Helper()
	got := map[dek.Ref]registry.Entry{}
	for _, e := range entries {
		got[e.Ref()] = e
	}
	if len(got) != len(v.Keys) {
		t.Errorf("registry holds %d entries, want the %d vector keys", len(got), len(v.Keys))
	}
	for _, k := range v.Keys {
		e, ok := got[dek.Ref{KeyID: k.KeyID, Version: k.KeyVersion}]
		switch {
		case !ok:
			t.Errorf("%s@%s not in the registry", k.KeyID, k.KeyVersion)
		case e.State != k.State:
			t.Errorf("%s: state %s, want %s", e.Ref(), e.State, k.State)
		case !slices.Equal(e.Devices, k.Devices):
			t.Errorf("%s: devices %v, want %v", e.Ref(), e.Devices, k.Devices)
		case e.Wrapped.RootKeyID != rootID || e.Wrapped.IsZero():
			t.Errorf("%s: wrapped under %q (%d bytes), want root %s", e.Ref(), e.Wrapped.RootKeyID, len(e.Wrapped.Ciphertext), rootID)
		}
	}
}
