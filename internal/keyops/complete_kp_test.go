package keyops

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/keyprotect"
	"github.com/decryptd/decryptd/internal/kpemu"
	"github.com/decryptd/decryptd/internal/registry/filestore"
)

func kpProvider(t *testing.T, srv *kpemu.Server, root string) *keyprotect.Provider {
	t.Helper()
	p, err := keyprotect.New(context.Background(), keyprotect.Config{
		BaseURL: srv.URL, TokenURL: srv.TokenURL, InstanceID: srv.InstanceID(), RootKeyID: root,
		APIKeyEnv: "KP_TEST_KEY", Timeout: 5 * time.Second,
	}, keyprotect.WithGetenv(func(string) string { return kpemu.DefaultAPIKey }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// The must-show of #16 with Key Protect (the real client against the
// emulator): a version cannot be deleted alone, so --complete moves the
// other DEKs to a replacement root key and deletes the old key; the backup
// restored no longer yields the shredded device's DEK.
func TestShredCompleteKeyProtect(t *testing.T) {
	ctx := context.Background()
	srv, err := kpemu.Start(ctx, kpemu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	rk, err := kpProvider(t, srv, "").CreateRoot(ctx, "decryptd-root")
	if err != nil {
		t.Fatal(err)
	}
	p := kpProvider(t, srv, rk.ID)
	if _, err := p.RotateRoot(ctx, rk.ID); err != nil { // two versions
		t.Fatal(err)
	}
	dir := t.TempDir()
	regPath := filepath.Join(dir, "registry.json")
	st, err := filestore.Open(ctx, regPath, filestore.WithoutFSNotify())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	aw, err := audit.Open(ctx, filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { aw.Close() })
	ops, err := New(Options{KMS: p, Roots: p, Registry: st, Audit: aw})
	if err != nil {
		t.Fatal(err)
	}
	msgs := map[string][]sealedMsg{}
	for _, d := range []string{"d1", "d2", "d3"} {
		c, err := ops.Provision(ctx, ProvisionRequest{DeviceID: d})
		if err != nil {
			t.Fatal(err)
		}
		msgs[d] = sealMessages(t, c, 10)
		c.Wipe()
	}
	before, err := os.ReadFile(regPath)
	if err != nil {
		t.Fatal(err)
	}

	// Retiring a version of the wrapping key is refused: it would take the
	// whole key.
	if _, err := ops.RootRetire(ctx, rk.ID, rk.Versions[0]); !errors.Is(err, kms.ErrRetireWrapping) {
		t.Fatalf("retire a version of the configured key: %v, want ErrRetireWrapping", err)
	}

	res, err := ops.ShredComplete(ctx, Selector{DeviceID: "d1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Replacement == "" || res.Replacement == rk.ID || res.Rewrap.Rewrapped != 2 || len(res.Retired) != 2 {
		t.Fatalf("result %+v", res)
	}
	if state, ok := srv.KeyState(rk.ID); !ok || state != kpemu.StateDestroyed {
		t.Fatalf("old key state %v (found %v), want destroyed", state, ok)
	}

	// The configuration now names the replacement key.
	cur := kpProvider(t, srv, res.Replacement)
	old := restore(t, before)
	for d, ms := range msgs {
		for _, m := range ms {
			err := openWith(ctx, old, cur, m)
			if !errors.Is(err, kms.ErrRootRevoked) {
				t.Fatalf("%s from the pre-shred backup: %v, want the deleted key's ErrRootRevoked", d, err)
			}
			if d == "d1" {
				continue
			}
			if err := openWith(ctx, st, cur, m); err != nil {
				t.Fatalf("%s from the live registry: %v", d, err)
			}
		}
	}
	// A rerun (config not yet changed) has nothing left to do.
	res, err = ops.ShredComplete(ctx, Selector{DeviceID: "d1"}, nil)
	if err != nil || len(res.Retired) != 0 || res.Rewrap.Todo != 0 {
		t.Fatalf("rerun: %+v %v", res, err)
	}
}
