package local

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/decryptd/decryptd/internal/kms"
)

func TestRetireRootVersion(t *testing.T) {
	ctx := context.Background()
	p := newProvider(t)
	aad := []string{"a"}
	dk := randomDEK(t)
	w1, err := p.Wrap(ctx, dk, aad)
	if err != nil {
		t.Fatal(err)
	}
	// A second process (the daemon) with the file open, version 1 loaded.
	other, err := Open(p.Path())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Unwrap(ctx, w1, aad); err != nil {
		t.Fatal(err)
	}

	if _, err := p.RetireScope(ctx, p.RootKeyID(), "1"); !errors.Is(err, kms.ErrRetireWrapping) {
		t.Fatalf("retire scope of the only (newest) version: %v, want ErrRetireWrapping", err)
	}
	if err := p.RetireRootVersion(ctx, p.RootKeyID(), "1"); !errors.Is(err, kms.ErrRetireWrapping) {
		t.Fatalf("retire the newest version: %v, want ErrRetireWrapping", err)
	}
	if _, err := p.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	w2, err := p.Rewrap(ctx, w1, aad)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, root, version string
		want                error
	}{
		{"unknown version", p.RootKeyID(), "9", ErrUnknownVersion},
		{"other root key", "someone-else", "1", ErrWrongRoot},
		{"newest", p.RootKeyID(), "2", kms.ErrRetireWrapping},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := p.RetireScope(ctx, tc.root, tc.version); !errors.Is(err, tc.want) {
				t.Fatalf("scope: %v, want %v", err, tc.want)
			}
			if err := p.RetireRootVersion(ctx, tc.root, tc.version); !errors.Is(err, tc.want) {
				t.Fatalf("retire: %v, want %v", err, tc.want)
			}
		})
	}
	scope, err := p.RetireScope(ctx, p.RootKeyID(), "1")
	if err != nil || len(scope) != 1 || scope[0] != (kms.RootVersion{RootKeyID: p.RootKeyID(), Version: "1"}) {
		t.Fatalf("scope of version 1: %v, %v", scope, err)
	}
	if err := p.RetireRootVersion(ctx, p.RootKeyID(), "1"); err != nil {
		t.Fatal(err)
	}
	if got := p.RootKey().Versions; len(got) != 1 || got[0] != "2" {
		t.Fatalf("versions after retire: %v, want [2]", got)
	}
	fi, err := os.Stat(p.Path())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("root key file mode after retire: %v, %v", fi.Mode(), err)
	}
	// Both processes refuse version 1 at once; version 2 still opens.
	for name, prov := range map[string]*Provider{"retirer": p, "other process": other} {
		if _, err := prov.Unwrap(ctx, w1, aad); !errors.Is(err, ErrUnknownVersion) {
			t.Fatalf("%s: unwrap under the retired version: %v, want ErrUnknownVersion", name, err)
		}
		got, err := prov.Unwrap(ctx, w2, aad)
		if err != nil || string(got) != string(dk) {
			t.Fatalf("%s: unwrap under version 2: %v", name, err)
		}
	}
	// A fresh open of the file no longer has it either.
	again, err := Open(p.Path())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := again.Unwrap(ctx, w1, aad); !errors.Is(err, ErrUnknownVersion) {
		t.Fatalf("reopened: unwrap under the retired version: %v", err)
	}
	// The next rotation does not reuse the retired name.
	rk, err := p.Rotate(ctx)
	if err != nil || rk.Versions[len(rk.Versions)-1] != "3" {
		t.Fatalf("rotate after retire: %v, %v", rk.Versions, err)
	}
}
