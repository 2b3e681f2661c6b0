package local

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
)

func newProvider(t *testing.T) *Provider {
	t.Helper()
	p, err := Create(filepath.Join(t.TempDir(), "root.json"), "dev-root")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func randomDEK(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

var aad = kms.DEKAAD(dek.Ref{KeyID: "device/pump-7", Version: "3"})

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	p := newProvider(t)
	d := randomDEK(t)
	w, err := p.Wrap(ctx, d, aad)
	if err != nil {
		t.Fatal(err)
	}
	if w.RootKeyID != "dev-root" || w.RootKeyVersion != "1" {
		t.Fatalf("wrapped under %s/%s, want dev-root/1", w.RootKeyID, w.RootKeyVersion)
	}
	if len(w.Ciphertext) != 12+32+16 {
		t.Fatalf("ciphertext is %d bytes, want nonce+dek+tag = 60", len(w.Ciphertext))
	}
	if bytes.Contains(w.Ciphertext, d) {
		t.Fatal("ciphertext contains the DEK")
	}
	got, err := p.Unwrap(ctx, w, aad)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, d) {
		t.Fatal("unwrap returned another DEK")
	}
	w2, err := p.Wrap(ctx, d, aad)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(w.Ciphertext, w2.Ciphertext) {
		t.Fatal("two wraps of one DEK gave the same ciphertext: nonce not random")
	}
}

func TestAADBinding(t *testing.T) {
	ctx := context.Background()
	p := newProvider(t)
	d := randomDEK(t)
	base := []string{"ab", "c"}
	w, err := p.Wrap(ctx, d, base)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		aad  []string
	}{
		{"nil", nil},
		{"empty", []string{}},
		{"other value", []string{"ab", "d"}},
		{"reordered", []string{"c", "ab"}},
		{"resplit", []string{"a", "bc"}},
		{"joined", []string{"abc"}},
		{"extra", []string{"ab", "c", ""}},
		{"prefix", []string{"ab"}},
		{"other DEK name", kms.DEKAAD(dek.Ref{KeyID: "device/pump-7", Version: "4"})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.Unwrap(ctx, w, tc.aad)
			if !errors.Is(err, ErrUnwrap) {
				t.Fatalf("err = %v, want ErrUnwrap", err)
			}
			if errors.Is(err, kms.ErrTransient) || errors.Is(err, kms.ErrRootRevoked) {
				t.Fatal("AAD mismatch must be permanent")
			}
		})
	}
}

func TestTamper(t *testing.T) {
	ctx := context.Background()
	p := newProvider(t)
	w, err := p.Wrap(ctx, randomDEK(t), aad)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("bit flips", func(t *testing.T) {
		for i := range w.Ciphertext {
			for _, bit := range []byte{0x01, 0x80} {
				bad := w
				bad.Ciphertext = bytes.Clone(w.Ciphertext)
				bad.Ciphertext[i] ^= bit
				if _, err := p.Unwrap(ctx, bad, aad); !errors.Is(err, ErrUnwrap) {
					t.Fatalf("byte %d bit %#x: err = %v, want ErrUnwrap", i, bit, err)
				}
			}
		}
	})
	for _, tc := range []struct {
		name   string
		mutate func(*kms.Wrapped)
		want   error
	}{
		{"truncated", func(w *kms.Wrapped) { w.Ciphertext = w.Ciphertext[:len(w.Ciphertext)-1] }, ErrUnwrap},
		{"nonce only", func(w *kms.Wrapped) { w.Ciphertext = w.Ciphertext[:12] }, ErrUnwrap},
		{"empty", func(w *kms.Wrapped) { w.Ciphertext = nil }, ErrUnwrap},
		{"extended", func(w *kms.Wrapped) { w.Ciphertext = append(bytes.Clone(w.Ciphertext), 0) }, ErrUnwrap},
		{"unknown version", func(w *kms.Wrapped) { w.RootKeyVersion = "9" }, ErrUnknownVersion},
		{"other root", func(w *kms.Wrapped) { w.RootKeyID = "prod-root" }, ErrWrongRoot},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := w
			bad.Ciphertext = bytes.Clone(w.Ciphertext)
			tc.mutate(&bad)
			_, err := p.Unwrap(ctx, bad, aad)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if errors.Is(err, kms.ErrTransient) {
				t.Fatal("must be permanent")
			}
		})
	}
}

func TestPermissionsRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "root.json")
	if _, err := Create(path, "dev-root"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("Create made mode %04o, want 0600", fi.Mode().Perm())
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o660, 0o602, 0o620, 0o601} {
		t.Run(mode.String(), func(t *testing.T) {
			if err := os.Chmod(path, mode); err != nil {
				t.Fatal(err)
			}
			_, err := Open(path)
			if err == nil {
				t.Fatalf("Open accepted mode %04o", mode)
			}
			msg := err.Error()
			if !strings.Contains(msg, path) || !strings.Contains(msg, modeOctal(mode)) {
				t.Fatalf("error %q does not name the file and its mode", msg)
			}
		})
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		t.Run("accept "+mode.String(), func(t *testing.T) {
			if err := os.Chmod(path, mode); err != nil {
				t.Fatal(err)
			}
			if _, err := Open(path); err != nil {
				t.Fatalf("Open refused mode %04o: %v", mode, err)
			}
		})
	}
}

func modeOctal(m os.FileMode) string {
	const digits = "01234567"
	p := uint32(m.Perm())
	return string([]byte{'0', digits[p>>6&7], digits[p>>3&7], digits[p&7]})
}

func TestRotate(t *testing.T) {
	ctx := context.Background()
	p := newProvider(t)
	d1 := randomDEK(t)
	w1, err := p.Wrap(ctx, d1, aad)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := p.RotateRoot(ctx, "dev-root")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rk.Versions, ",") != "1,2" || rk.ID != "dev-root" {
		t.Fatalf("after rotate: %+v", rk)
	}
	d2 := randomDEK(t)
	w2, err := p.Wrap(ctx, d2, aad)
	if err != nil {
		t.Fatal(err)
	}
	if w2.RootKeyVersion != "2" {
		t.Fatalf("new wrap under version %s, want 2", w2.RootKeyVersion)
	}
	for _, tc := range []struct {
		name string
		w    kms.Wrapped
		want []byte
	}{{"old version", w1, d1}, {"new version", w2, d2}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := p.Unwrap(ctx, tc.w, aad)
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("unwrap: %v", err)
			}
		})
	}

	t.Run("rewrap moves to newest", func(t *testing.T) {
		r, err := p.Rewrap(ctx, w1, aad)
		if err != nil {
			t.Fatal(err)
		}
		if r.RootKeyVersion != "2" || r.RootKeyID != "dev-root" {
			t.Fatalf("rewrapped under %s/%s", r.RootKeyID, r.RootKeyVersion)
		}
		got, err := p.Unwrap(ctx, r, aad)
		if err != nil || !bytes.Equal(got, d1) {
			t.Fatalf("unwrap rewrapped: %v", err)
		}
		if _, err := p.Rewrap(ctx, w1, []string{"wrong"}); !errors.Is(err, ErrUnwrap) {
			t.Fatalf("rewrap with wrong AAD: %v", err)
		}
	})
	t.Run("rewrap of newest is a copy", func(t *testing.T) {
		r, err := p.Rewrap(ctx, w2, aad)
		if err != nil {
			t.Fatal(err)
		}
		if r.RootKeyVersion != "2" || !bytes.Equal(r.Ciphertext, w2.Ciphertext) {
			t.Fatal("rewrap of a newest-version DEK changed it")
		}
		r.Ciphertext[0] ^= 1
		if w2.Ciphertext[0] == r.Ciphertext[0] {
			t.Fatal("rewrap returned an alias of the input ciphertext")
		}
	})
	t.Run("wrong id", func(t *testing.T) {
		if _, err := p.RotateRoot(ctx, "other"); !errors.Is(err, ErrWrongRoot) {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestRotationByAnotherProcess: dekctl rotates through its own Provider on
// the same file; the daemon's Provider must wrap under the new version and
// unwrap DEKs wrapped under it without a restart.
func TestRotationByAnotherProcess(t *testing.T) {
	ctx := context.Background()
	daemon := newProvider(t)
	dekctl, err := Open(daemon.Path())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dekctl.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	d := randomDEK(t)
	w, err := dekctl.Wrap(ctx, d, aad)
	if err != nil {
		t.Fatal(err)
	}
	got, err := daemon.Unwrap(ctx, w, aad)
	if err != nil || !bytes.Equal(got, d) {
		t.Fatalf("daemon unwrap of version %s: %v", w.RootKeyVersion, err)
	}
	if _, err := dekctl.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	w3, err := daemon.Wrap(ctx, d, aad)
	if err != nil {
		t.Fatal(err)
	}
	if w3.RootKeyVersion != "3" {
		t.Fatalf("daemon wrapped under %s after another process rotated to 3", w3.RootKeyVersion)
	}
	roots, err := daemon.ListRoots(ctx)
	if err != nil || len(roots) != 1 || strings.Join(roots[0].Versions, ",") != "1,2,3" {
		t.Fatalf("ListRoots = %+v, %v", roots, err)
	}
}

func TestCreate(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "root.json")
	m := NewManager(path)
	roots, err := m.ListRoots(ctx)
	if err != nil || len(roots) != 0 {
		t.Fatalf("ListRoots before create = %v, %v", roots, err)
	}
	rk, err := m.CreateRoot(ctx, "dev-root")
	if err != nil {
		t.Fatal(err)
	}
	if rk.ID != "dev-root" || strings.Join(rk.Versions, ",") != "1" || rk.State != "active" {
		t.Fatalf("CreateRoot = %+v", rk)
	}
	if _, err := Create(path, "again"); err == nil {
		t.Fatal("Create overwrote an existing key file")
	}
	if _, err := m.CreateRoot(ctx, "again"); err == nil {
		t.Fatal("CreateRoot overwrote an existing key file")
	}
	if rk, err := m.RotateRoot(ctx, "dev-root"); err != nil || len(rk.Versions) != 2 {
		t.Fatalf("RotateRoot = %+v, %v", rk, err)
	}
	if _, err := Create(filepath.Join(dir, "x.json"), ""); err == nil {
		t.Fatal("Create accepted an empty id")
	}
	left, err := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	if err != nil || len(left) != 0 {
		t.Fatalf("temporary files left behind: %v", left)
	}
}

func TestBadFiles(t *testing.T) {
	for _, tc := range []struct{ name, content string }{
		{"not json", "{"},
		{"wrong format", `{"format":"x","root_key_id":"r","versions":[{"version":"1","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]}`},
		{"no versions", `{"format":"decryptd-local-root-v1","root_key_id":"r","versions":[]}`},
		{"short key", `{"format":"decryptd-local-root-v1","root_key_id":"r","versions":[{"version":"1","key":"AAAA"}]}`},
		{"duplicate version", `{"format":"decryptd-local-root-v1","root_key_id":"r","versions":[{"version":"1","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},{"version":"1","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]}`},
		{"no id", `{"format":"decryptd-local-root-v1","versions":[{"version":"1","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "root.json")
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Open(path)
			if err == nil {
				t.Fatal("Open accepted a bad file")
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name the file", err)
			}
			if strings.Contains(err.Error(), "AAAA") {
				t.Fatalf("error %q quotes key material", err)
			}
		})
	}
}

func TestContextDone(t *testing.T) {
	p := newProvider(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Wrap(ctx, randomDEK(t), aad); !errors.Is(err, kms.ErrTransient) {
		t.Fatalf("wrap with done ctx: %v", err)
	}
}

func FuzzParseKeyFile(f *testing.F) {
	f.Add([]byte(`{"format":"decryptd-local-root-v1","root_key_id":"r","versions":[{"version":"1","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, data []byte) {
		kf, err := parseKeyFile(data)
		if err != nil {
			return
		}
		if len(kf.Versions) == 0 || kf.RootKeyID == "" {
			t.Fatal("parse accepted a keyring without versions or id")
		}
		for _, v := range kf.Versions {
			if len(v.Key) != keySize {
				t.Fatal("parse accepted a short key")
			}
		}
	})
}

func BenchmarkWrapUnwrap(b *testing.B) {
	p, err := Create(filepath.Join(b.TempDir(), "root.json"), "dev-root")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	d := make([]byte, 32)
	b.ReportAllocs()
	for b.Loop() {
		w, err := p.Wrap(ctx, d, aad)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.Unwrap(ctx, w, aad); err != nil {
			b.Fatal(err)
		}
	}
}
