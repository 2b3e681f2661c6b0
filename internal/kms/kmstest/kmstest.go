package kmstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
)

// Harness is one provider under test with the levers the contract pulls.
type Harness struct {
	// Provider is the provider under test. It must declare
	// kms.RootManager: root rotation is part of the contract.
	Provider kms.Provider
	// Revoke disables the provider's wrapping root key, after which every
	// call must fail with kms.ErrRootRevoked. Nil for a provider that has no
	// revocation (local: the file is the root key); the revocation case is
	// then not run.
	Revoke func(ctx context.Context) error
	// Outages make the KMS unavailable in a named way (hang, refuse, 503,
	// ...) until the returned restore is called; during one every call must
	// fail with kms.ErrTransient by its deadline, and work again after.
	Outages map[string]func() (restore func())
}

// Factory makes a fresh Harness (a new root key) for one subtest; it
// registers its cleanups with t.
type Factory func(t *testing.T) Harness

// OutageDeadline bounds each call the contract makes during an outage.
const OutageDeadline = time.Second

var (
	aadA = kms.DEKAAD(dek.Ref{KeyID: "device/contract-1", Version: "1"})
	aadB = kms.DEKAAD(dek.Ref{KeyID: "device/contract-1", Version: "2"})
)

// RunProviderContract runs the contract against the providers f makes.
func RunProviderContract(t *testing.T, f Factory) {
	t.Run("RoundTrip", func(t *testing.T) { roundTrip(t, f(t)) })
	t.Run("AADBinding", func(t *testing.T) { aadBinding(t, f(t)) })
	t.Run("TransientOnCancel", func(t *testing.T) { transientOnCancel(t, f(t)) })
	t.Run("Outages", func(t *testing.T) { outages(t, f) })
	t.Run("Revoked", func(t *testing.T) { revoked(t, f(t)) })
	t.Run("RewrapCurrent", func(t *testing.T) { rewrapCurrent(t, f(t)) })
	t.Run("RootRotation", func(t *testing.T) { rootRotation(t, f(t)) })
	t.Run("Retire", func(t *testing.T) { retire(t, f(t)) })
	t.Run("Concurrent", func(t *testing.T) { concurrent(t, f(t)) })
}

func newDEK(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustWrap(t *testing.T, p kms.Provider, d []byte, aad []string) kms.Wrapped {
	t.Helper()
	w, err := p.Wrap(ctxT(t), d, aad)
	if err != nil {
		t.Fatalf("Wrap: %v", err)
	}
	if w.RootKeyID == "" || w.RootKeyVersion == "" || w.IsZero() {
		t.Fatalf("Wrap = %+v: want root key id, version and ciphertext", w)
	}
	return w
}

func mustUnwrap(t *testing.T, p kms.Provider, w kms.Wrapped, aad []string, want []byte) {
	t.Helper()
	got, err := p.Unwrap(ctxT(t), w, aad)
	if err != nil {
		t.Fatalf("Unwrap: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("Unwrap returned another DEK")
	}
}

// permanent fails unless err is an error that is neither transient nor
// revoked.
func permanent(t *testing.T, what string, err error) {
	t.Helper()
	switch {
	case err == nil:
		t.Fatalf("%s: no error", what)
	case errors.Is(err, kms.ErrTransient):
		t.Fatalf("%s: %v is kms.ErrTransient, want a permanent error", what, err)
	case errors.Is(err, kms.ErrRootRevoked):
		t.Fatalf("%s: %v is kms.ErrRootRevoked, want a permanent error", what, err)
	}
}

func roundTrip(t *testing.T, h Harness) {
	d := newDEK(t)
	w := mustWrap(t, h.Provider, d, aadA)
	if bytes.Contains(w.Ciphertext, d) {
		t.Fatal("the wrapped DEK holds the DEK in the clear")
	}
	mustUnwrap(t, h.Provider, w, aadA, d)
	w2 := mustWrap(t, h.Provider, d, aadA)
	if bytes.Equal(w.Ciphertext, w2.Ciphertext) {
		t.Fatal("two wraps of one DEK gave one ciphertext (no fresh nonce)")
	}
	mustUnwrap(t, h.Provider, w2, aadA, d)
}

func aadBinding(t *testing.T, h Harness) {
	d := newDEK(t)
	w := mustWrap(t, h.Provider, d, aadA)
	reordered := []string{aadA[0], aadA[2], aadA[1]}
	for name, aad := range map[string][]string{"other version": aadB, "none": nil, "reordered": reordered, "extra": append(append([]string{}, aadA...), "x")} {
		_, err := h.Provider.Unwrap(ctxT(t), w, aad)
		permanent(t, "Unwrap with AAD "+name, err)
		_, err = h.Provider.Rewrap(ctxT(t), w, aad)
		permanent(t, "Rewrap with AAD "+name, err)
	}
	tampered := w
	tampered.Ciphertext = bytes.Clone(w.Ciphertext)
	tampered.Ciphertext[len(tampered.Ciphertext)/2] ^= 0x01
	_, err := h.Provider.Unwrap(ctxT(t), tampered, aadA)
	permanent(t, "Unwrap of a tampered ciphertext", err)
	truncated := w
	truncated.Ciphertext = w.Ciphertext[:len(w.Ciphertext)/2]
	_, err = h.Provider.Unwrap(ctxT(t), truncated, aadA)
	permanent(t, "Unwrap of a truncated ciphertext", err)
}

func transientOnCancel(t *testing.T, h Harness) {
	d := newDEK(t)
	w := mustWrap(t, h.Provider, d, aadA)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.Provider.Wrap(ctx, d, aadA); !errors.Is(err, kms.ErrTransient) {
		t.Fatalf("Wrap with a cancelled context: %v, want kms.ErrTransient", err)
	}
	if _, err := h.Provider.Unwrap(ctx, w, aadA); !errors.Is(err, kms.ErrTransient) {
		t.Fatalf("Unwrap with a cancelled context: %v, want kms.ErrTransient", err)
	}
	if _, err := h.Provider.Rewrap(ctx, w, aadA); !errors.Is(err, kms.ErrTransient) {
		t.Fatalf("Rewrap with a cancelled context: %v, want kms.ErrTransient", err)
	}
}

func outages(t *testing.T, f Factory) {
	probe := f(t)
	if len(probe.Outages) == 0 {
		t.Log("provider declares no outages (nothing between it and its root key)")
		return
	}
	for name := range probe.Outages {
		t.Run(name, func(t *testing.T) {
			h := f(t)
			d := newDEK(t)
			w := mustWrap(t, h.Provider, d, aadA)
			restore := h.Outages[name]()
			for op, call := range map[string]func(ctx context.Context) error{
				"Wrap":   func(ctx context.Context) error { _, err := h.Provider.Wrap(ctx, d, aadA); return err },
				"Unwrap": func(ctx context.Context) error { _, err := h.Provider.Unwrap(ctx, w, aadA); return err },
				"Rewrap": func(ctx context.Context) error { _, err := h.Provider.Rewrap(ctx, w, aadA); return err },
			} {
				ctx, cancel := context.WithTimeout(context.Background(), OutageDeadline)
				start := time.Now()
				err := call(ctx)
				cancel()
				if !errors.Is(err, kms.ErrTransient) {
					restore()
					t.Fatalf("%s during outage %s: %v, want kms.ErrTransient", op, name, err)
				}
				if took := time.Since(start); took > OutageDeadline+time.Second {
					restore()
					t.Fatalf("%s during outage %s took %v, past its %v deadline", op, name, took, OutageDeadline)
				}
			}
			restore()
			mustUnwrap(t, h.Provider, w, aadA, d)
		})
	}
}

func revoked(t *testing.T, h Harness) {
	if h.Revoke == nil {
		t.Log("provider has no root key revocation")
		return
	}
	d := newDEK(t)
	w := mustWrap(t, h.Provider, d, aadA)
	if err := h.Revoke(ctxT(t)); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if _, err := h.Provider.Unwrap(ctxT(t), w, aadA); !errors.Is(err, kms.ErrRootRevoked) || errors.Is(err, kms.ErrTransient) {
		t.Fatalf("Unwrap under a revoked root: %v, want kms.ErrRootRevoked only", err)
	}
	if _, err := h.Provider.Wrap(ctxT(t), d, aadA); !errors.Is(err, kms.ErrRootRevoked) || errors.Is(err, kms.ErrTransient) {
		t.Fatalf("Wrap under a revoked root: %v, want kms.ErrRootRevoked only", err)
	}
}

func rewrapCurrent(t *testing.T, h Harness) {
	d := newDEK(t)
	w := mustWrap(t, h.Provider, d, aadA)
	nw, err := h.Provider.Rewrap(ctxT(t), w, aadA)
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	if nw.RootKeyID != w.RootKeyID || nw.RootKeyVersion != w.RootKeyVersion {
		t.Fatalf("Rewrap under the newest version moved it: %s/%s -> %s/%s", w.RootKeyID, w.RootKeyVersion, nw.RootKeyID, nw.RootKeyVersion)
	}
	mustUnwrap(t, h.Provider, nw, aadA, d)
}

func rootRotation(t *testing.T, h Harness) {
	caps := kms.CapabilitiesOf(h.Provider)
	if caps.Roots == nil {
		t.Fatal("provider declares no kms.RootManager")
	}
	ctx := ctxT(t)
	d := newDEK(t)
	old := mustWrap(t, h.Provider, d, aadA)
	before := time.Now().Add(-2 * time.Second) // timestamps may be whole seconds
	rk, err := caps.Roots.RotateRoot(ctx, old.RootKeyID)
	if err != nil {
		t.Fatalf("RotateRoot: %v", err)
	}
	if len(rk.Versions) < 2 || rk.Versions[len(rk.Versions)-1] == old.RootKeyVersion {
		t.Fatalf("RotateRoot = %+v: want a new newest version after %s", rk, old.RootKeyVersion)
	}
	newest := rk.Versions[len(rk.Versions)-1]

	fresh := mustWrap(t, h.Provider, d, aadA)
	if fresh.RootKeyVersion != newest {
		t.Fatalf("Wrap after rotation used version %s, want the newest %s", fresh.RootKeyVersion, newest)
	}
	mustUnwrap(t, h.Provider, old, aadA, d) // old versions keep unwrapping
	moved, err := h.Provider.Rewrap(ctx, old, aadA)
	if err != nil {
		t.Fatalf("Rewrap after rotation: %v", err)
	}
	if moved.RootKeyVersion != newest {
		t.Fatalf("Rewrap moved to version %s, want %s", moved.RootKeyVersion, newest)
	}
	mustUnwrap(t, h.Provider, moved, aadA, d)
	again, err := h.Provider.Rewrap(ctx, moved, aadA)
	if err != nil || again.RootKeyVersion != newest {
		t.Fatalf("second Rewrap = %s, %v: want a no-op at %s", again.RootKeyVersion, err, newest)
	}

	roots, err := caps.Roots.ListRoots(ctx)
	if err != nil {
		t.Fatalf("ListRoots: %v", err)
	}
	if !hasNewest(roots, old.RootKeyID, newest) {
		t.Fatalf("ListRoots = %+v: want %s with newest version %s", roots, old.RootKeyID, newest)
	}
	if caps.Describe != nil {
		rk, err := caps.Describe.DescribeRoot(ctx, old.RootKeyID)
		if err != nil || !hasNewest([]kms.RootKey{rk}, old.RootKeyID, newest) {
			t.Fatalf("DescribeRoot = %+v, %v: want newest version %s", rk, err, newest)
		}
	}
	if caps.Clock != nil {
		id, ver, made, err := caps.Clock.NewestRootVersion(ctx)
		if err != nil {
			t.Fatalf("NewestRootVersion: %v", err)
		}
		if id != old.RootKeyID || ver != newest || made.Before(before) || made.After(time.Now().Add(2*time.Second)) {
			t.Fatalf("NewestRootVersion = %s %s %v: want %s %s made during the test", id, ver, made, old.RootKeyID, newest)
		}
	}
	if caps.RootKeyID != "" && caps.RootKeyID != old.RootKeyID {
		t.Fatalf("RootKeyID %q, but Wrap names root %q", caps.RootKeyID, old.RootKeyID)
	}
}

// retire checks root-version retirement through kms.RootRetirer (and, where
// a version cannot be retired alone, kms.RootReplacer): the wrapping version
// is refused with kms.ErrRetireWrapping; once a DEK is moved off an older
// version and that version retired, the old wrapped copy no longer unwraps
// (a permanent or revoked error, never transient) and the moved one does.
func retire(t *testing.T, h Harness) {
	caps := kms.CapabilitiesOf(h.Provider)
	if caps.Retire == nil {
		t.Log("provider declares no kms.RootRetirer")
		return
	}
	if caps.Roots == nil {
		t.Fatal("provider declares kms.RootRetirer without kms.RootManager")
	}
	ctx := ctxT(t)
	d := newDEK(t)
	old := mustWrap(t, h.Provider, d, aadA)
	rk, err := caps.Roots.RotateRoot(ctx, old.RootKeyID)
	if err != nil || len(rk.Versions) == 0 {
		t.Fatalf("RotateRoot: %+v, %v", rk, err)
	}
	newest := rk.Versions[len(rk.Versions)-1]
	if _, err := caps.Retire.RetireScope(ctx, old.RootKeyID, newest); !errors.Is(err, kms.ErrRetireWrapping) {
		t.Fatalf("RetireScope of the wrapping version: %v, want kms.ErrRetireWrapping", err)
	}
	p, retirer := h.Provider, caps.Retire
	if caps.Replace != nil { // versions go with their whole key: move to another root key first
		other, err := caps.Roots.CreateRoot(ctx, "contract-replacement")
		if err != nil {
			t.Fatalf("CreateRoot: %v", err)
		}
		p = caps.Replace.WithRootKey(other.ID)
		if retirer = kms.CapabilitiesOf(p).Retire; retirer == nil {
			t.Fatal("WithRootKey's provider declares no kms.RootRetirer")
		}
	}
	moved, err := p.Rewrap(ctx, old, aadA)
	if err != nil {
		t.Fatalf("Rewrap before retiring: %v", err)
	}
	scope, err := retirer.RetireScope(ctx, old.RootKeyID, old.RootKeyVersion)
	if err != nil {
		t.Fatalf("RetireScope: %v", err)
	}
	if !slices.Contains(scope, kms.RootVersion{RootKeyID: old.RootKeyID, Version: old.RootKeyVersion}) ||
		slices.Contains(scope, kms.RootVersion{RootKeyID: moved.RootKeyID, Version: moved.RootKeyVersion}) {
		t.Fatalf("RetireScope = %v: want %s/%s in it and the moved DEK's %s/%s not", scope, old.RootKeyID, old.RootKeyVersion, moved.RootKeyID, moved.RootKeyVersion)
	}
	if err := retirer.RetireRootVersion(ctx, old.RootKeyID, old.RootKeyVersion); err != nil {
		t.Fatalf("RetireRootVersion: %v", err)
	}
	_, err = p.Unwrap(ctx, old, aadA)
	if err == nil || errors.Is(err, kms.ErrTransient) {
		t.Fatalf("Unwrap under a retired version: %v, want a permanent or revoked error", err)
	}
	mustUnwrap(t, p, moved, aadA, d)
}

func hasNewest(roots []kms.RootKey, id, newest string) bool {
	for _, r := range roots {
		if r.ID == id && len(r.Versions) > 0 && r.Versions[len(r.Versions)-1] == newest {
			return true
		}
	}
	return false
}

func concurrent(t *testing.T, h Harness) {
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			aad := kms.DEKAAD(dek.Ref{KeyID: fmt.Sprintf("device/c-%d", i), Version: "1"})
			d := make([]byte, 32)
			rand.Read(d)
			for range 5 {
				w, err := h.Provider.Wrap(context.Background(), d, aad)
				if err != nil {
					errs <- err
					return
				}
				got, err := h.Provider.Unwrap(context.Background(), w, aad)
				if err != nil || !bytes.Equal(got, d) {
					errs <- fmt.Errorf("unwrap: %v (same DEK: %v)", err, bytes.Equal(got, d))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
