package keyops

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/seal"
)

// sealedMsg is one device message: AES-256-GCM under the device's DEK,
// bound to device id and timestamp as envelope v1 binds a payload.
type sealedMsg struct {
	device, keyID, version string
	ts                     int64
	sealed                 []byte
}

func sealMessages(t *testing.T, c Credential, n int) []sealedMsg {
	t.Helper()
	aead, err := seal.NewAEAD(c.DEK)
	if err != nil {
		t.Fatal(err)
	}
	s := seal.New(nil)
	var out []sealedMsg
	for i := range n {
		ts := int64(1_700_000_000 + i)
		b, err := s.Seal(nil, aead, []byte(`{"temp":21.5}`), seal.PayloadAAD(nil, c.DeviceID, ts))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, sealedMsg{c.DeviceID, c.KeyID, c.KeyVersion, ts, b})
	}
	return out
}

// openWith decrypts m as the daemon would: the wrapped DEK from reg, unwrapped
// by p, then AES-GCM.
func openWith(ctx context.Context, reg registry.Store, p kms.Provider, m sealedMsg) error {
	e, err := reg.Get(ctx, m.keyID, m.version)
	if err != nil {
		return err
	}
	if e.State == dek.StateShredded {
		return registry.ErrShredded
	}
	key, err := p.Unwrap(ctx, e.Wrapped, kms.DEKAAD(e.Ref()))
	if err != nil {
		return err
	}
	defer clear(key)
	aead, err := seal.NewAEAD(key)
	if err != nil {
		return err
	}
	_, err = aead.Open(nil, m.sealed[:seal.NonceSize], m.sealed[seal.NonceSize:], seal.PayloadAAD(nil, m.device, m.ts))
	return err
}

// restore opens a copy of a registry file backup in its own directory.
func restore(t *testing.T, backup []byte) registry.Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "registry.json")
	if err := os.WriteFile(path, backup, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := filestore.Open(context.Background(), path, filestore.WithoutFSNotify())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// The must-show of #16 with the local provider: a registry backup taken
// before the shred, restored after `shred --complete`, no longer yields the
// shredded device's DEK under the current root key file.
func TestShredCompleteBackupUseless(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	msgs := map[string][]sealedMsg{}
	for _, d := range []string{"d1", "d2", "d3"} {
		c, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: d})
		if err != nil {
			t.Fatal(err)
		}
		msgs[d] = sealMessages(t, c, 20)
		c.Wipe()
	}
	before, err := os.ReadFile(filepath.Join(e.dir, "registry.json"))
	if err != nil {
		t.Fatal(err)
	}
	// The backup works today, for every device.
	bk := restore(t, before)
	for d, ms := range msgs {
		for _, m := range ms {
			if err := openWith(ctx, bk, e.kms, m); err != nil {
				t.Fatalf("%s before the shred: %v", d, err)
			}
		}
	}

	d1, err := e.store.Get(ctx, "device/d1", "v1")
	if err != nil {
		t.Fatal(err)
	}
	destroyed := base64.StdEncoding.EncodeToString(d1.Wrapped.Ciphertext)
	var calls int
	res, err := e.ops.ShredComplete(ctx, Selector{DeviceID: "d1"}, func(done, total, failed int) { calls++ })
	if err != nil {
		t.Fatal(err)
	}
	want := []kms.RootVersion{{RootKeyID: "test-root", Version: "1"}}
	if len(res.Shredded) != 1 || !res.Shredded[0].Changed || len(res.Rotated) != 1 ||
		res.Rewrap.Rewrapped != 2 || len(res.Retired) != 1 || res.Retired[0] != want[0] || calls == 0 {
		t.Fatalf("result %+v (progress calls %d)", res, calls)
	}
	if got := e.kms.RootKey().Versions; len(got) != 1 || got[0] != "2" {
		t.Fatalf("root versions after: %v, want [2]", got)
	}

	// The file registry keeps no earlier copy: no file left in its
	// directory (registry, lock, temporary files) holds the destroyed bytes.
	files, _ := os.ReadDir(e.dir)
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(e.dir, f.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), destroyed) {
			t.Fatalf("%s still holds the destroyed wrapped DEK", f.Name())
		}
	}
	if !strings.Contains(string(before), destroyed) {
		t.Fatal("the backup does not hold the wrapped DEK: the check above cannot fail")
	}

	// The backup restored, with the current root key file (a fresh open, as
	// a restarted daemon would): d1's messages never decrypt again.
	cur, err := local.Open(e.kms.Path())
	if err != nil {
		t.Fatal(err)
	}
	old := restore(t, before)
	for _, m := range msgs["d1"] {
		if err := openWith(ctx, old, cur, m); !errors.Is(err, local.ErrUnknownVersion) {
			t.Fatalf("d1 from the restored backup: %v, want ErrUnknownVersion", err)
		}
	}
	// The others: the live registry decrypts every message, as does a
	// backup taken after the run; the pre-shred backup held them under the
	// retired version too, so it is useless for them as well (the reason
	// the run ends by asking for a new backup: docs/crypto-shredding.md).
	after, err := os.ReadFile(filepath.Join(e.dir, "registry.json"))
	if err != nil {
		t.Fatal(err)
	}
	fresh := restore(t, after)
	for _, d := range []string{"d2", "d3"} {
		for _, m := range msgs[d] {
			if err := openWith(ctx, e.store, cur, m); err != nil {
				t.Fatalf("%s from the live registry: %v", d, err)
			}
			if err := openWith(ctx, fresh, cur, m); err != nil {
				t.Fatalf("%s from a backup taken after the run: %v", d, err)
			}
			if err := openWith(ctx, old, cur, m); !errors.Is(err, local.ErrUnknownVersion) {
				t.Fatalf("%s from the pre-shred backup: %v, want ErrUnknownVersion", d, err)
			}
		}
	}
	for _, m := range msgs["d1"] {
		if err := openWith(ctx, fresh, cur, m); !errors.Is(err, registry.ErrShredded) {
			t.Fatalf("d1 from the new backup: %v, want a tombstone", err)
		}
	}

	// The audit log tells it all, and its chain verifies.
	var seen []string
	for _, ev := range e.events(t) {
		switch ev.Action {
		case audit.ActionShred, audit.ActionRootRotate, ActionRootRetire, ActionShredComplete:
			seen = append(seen, string(ev.Action)+":"+ev.Result)
		}
	}
	if got := strings.Join(seen, " "); got != "shred:ok root_rotate:ok root_retire:ok shred_complete:ok" {
		t.Fatalf("audit actions %q", got)
	}

	// A rerun finds nothing left to do and succeeds.
	res, err = e.ops.ShredComplete(ctx, Selector{DeviceID: "d1"}, nil)
	if err != nil || len(res.Retired) != 0 || len(res.Rotated) != 0 || res.Shredded[0].Changed {
		t.Fatalf("rerun: %+v %v", res, err)
	}
}

// An interrupted run (the rewrap failed for one DEK) is finished by a rerun;
// the root version is not retired while a DEK is still under it.
func TestShredCompleteResumes(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	for _, d := range []string{"d1", "d2", "d3"} {
		c, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: d})
		if err != nil {
			t.Fatal(err)
		}
		c.Wipe()
	}
	flaky := &flakyKMS{Provider: e.kms, fail: map[string]bool{"device/d2@v1": true}}
	ops, err := New(Options{KMS: flaky, Roots: e.kms, Registry: e.store, Audit: e.aud})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ops.ShredComplete(ctx, Selector{DeviceID: "d1"}, nil); err == nil {
		t.Fatal("run with a failing rewrap succeeded")
	}
	if got := e.kms.RootKey().Versions; len(got) != 2 {
		t.Fatalf("versions after the failed run: %v, want [1 2] (nothing retired)", got)
	}
	// Retiring by hand is refused too while d2 is under version 1.
	if _, err := e.ops.RootRetire(ctx, "", "1"); !errors.Is(err, ErrInUse) {
		t.Fatalf("retire while in use: %v, want ErrInUse", err)
	}
	flaky.mu.Lock()
	flaky.fail = nil
	flaky.mu.Unlock()
	res, err := ops.ShredComplete(ctx, Selector{DeviceID: "d1"}, nil)
	if err != nil || len(res.Rotated) != 0 || res.Rewrap.Rewrapped != 1 || len(res.Retired) != 1 {
		t.Fatalf("rerun: %+v %v", res, err)
	}
	for _, d := range []string{"d2", "d3"} {
		e.unwrap(t, "device/"+d, "v1")
	}
	var refused bool
	for _, ev := range e.events(t) {
		if ev.Action == ActionRootRetire && ev.Result != audit.ResultOK && strings.Contains(ev.Detail, "refused") {
			refused = true
		}
	}
	if !refused {
		t.Fatal("the refused retirement is not in the audit log")
	}
}

func TestRootRetireArguments(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	tests := []struct {
		name, root, version string
		want                error
	}{
		{"no version", "", "", ErrInvalidArgument},
		{"newest", "", "1", kms.ErrRetireWrapping},
		{"unknown", "test-root", "7", local.ErrUnknownVersion},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := e.ops.RootRetire(ctx, tc.root, tc.version); !errors.Is(err, tc.want) {
				t.Fatalf("%v, want %v", err, tc.want)
			}
		})
	}
}
