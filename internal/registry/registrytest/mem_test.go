package registrytest

import (
	"context"
	"errors"
	"testing"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
)

func TestMem(t *testing.T) {
	ctx := context.Background()
	r := &BulkMem{}
	a, b := NewEntry("device/a", "v1"), NewEntry("device/b", "v1")
	if err := r.Create(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := r.CreateMany(ctx, []registry.Entry{a, b}); !errors.Is(err, registry.ErrExists) || r.Len() != 1 {
		t.Fatalf("CreateMany over an existing entry: %v, %d entries", err, r.Len())
	}
	if err := r.CreateMany(ctx, []registry.Entry{a}); err != nil {
		t.Fatal(err)
	}
	es, err := r.List(ctx)
	if err != nil || len(es) != 2 || es[0].KeyID != "device/b" || es[1].KeyID != "device/a" {
		t.Fatalf("List: %v %v, want b then a", es, err)
	}
	if _, err := r.UpdateMany(ctx, []dek.Ref{a.Ref(), {KeyID: "device/c", Version: "v1"}}, Shred); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("UpdateMany with a missing entry: %v", err)
	}
	if got, _ := r.Get(ctx, "device/a", "v1"); got.State != a.State {
		t.Fatalf("a failed UpdateMany changed a: %v", got.State)
	}
	if _, err := r.Update(ctx, "device/a", "v1", Shred); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(ctx, "device/x", "v1"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Get of a missing entry: %v", err)
	}
	if r.CreateManyCalls != 2 || r.UpdateManyCalls != 0 {
		t.Fatalf("calls %d/%d, want 2/0", r.CreateManyCalls, r.UpdateManyCalls)
	}
}
