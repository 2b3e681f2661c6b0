package keyops

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
	"github.com/decryptd/decryptd/internal/testutil/pgtest"
)

// The same lifecycle against the PostgreSQL registry.
func TestLifecyclePostgres(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p, err := local.Create(filepath.Join(dir, "root.json"), "pg-root")
	if err != nil {
		t.Fatal(err)
	}
	st, err := pgstore.Open(ctx, pgtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := newEnvWith(t, dir, p, st)

	v := importVectors(t, e)
	c, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: "sensor-001"})
	if err != nil || c.KeyVersion != "v3" {
		t.Fatalf("provision after import of v1, v2: %v %v", c, err)
	}
	if _, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: "sensor-002", Group: "icu-monitors"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ops.Revoke(ctx, Selector{KeyID: "device/sensor-002", Version: "v7"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ops.Shred(ctx, Selector{DeviceID: "sensor-001"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ops.RootRotate(ctx, "pg-root"); err != nil {
		t.Fatal(err)
	}
	res, err := e.ops.Rewrap(ctx, nil)
	// Left: sensor-002@v7 (revoked, still rewrapped) and group/icu-monitors.
	if err != nil || res.Todo != 2 || res.Rewrapped != 2 {
		t.Fatalf("rewrap: %+v %v", res, err)
	}
	es, err := e.ops.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]dek.State{}
	for _, ent := range es {
		states[ent.Ref().String()] = ent.State
	}
	want := map[string]dek.State{
		"device/sensor-001@v1": dek.StateShredded, "device/sensor-001@v2": dek.StateShredded, "device/sensor-001@v3": dek.StateShredded,
		"device/sensor-002@v7": dek.StateRevoked, "group/icu-monitors@2026-q4": dek.StateActive,
	}
	if len(states) != len(want) {
		t.Fatalf("entries %v", states)
	}
	for k, s := range want {
		if states[k] != s {
			t.Errorf("%s: %s, want %s", k, states[k], s)
		}
	}
	for _, k := range v.Keys {
		if k.KeyID == "group/icu-monitors" {
			ent, _ := st.Get(ctx, k.KeyID, k.Version)
			if ent.Wrapped.RootKeyVersion != "2" || len(ent.Devices) != 2 {
				t.Fatalf("group after rewrap: %+v", ent)
			}
		}
	}
	e.events(t) // the chain verifies
}
