package fsutil

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	for i, content := range []string{"first", "second, longer"} {
		if err := WriteAtomic(path, ".f.tmp-", []byte(content), 0o600); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Fatalf("write %d: read %q, %v; want %q", i, got, err, content)
		}
		fi, _ := os.Stat(path)
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
		}
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".f.tmp-*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestWriteAtomicFailureLeavesOldAndNoTemp(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := WriteAtomic(path, ".f.tmp-", []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A directory in the target's place makes the rename fail.
	target := filepath.Join(dir, "d")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteAtomic(target, ".d.tmp-", []byte("new"), 0o600); err == nil {
		t.Fatal("rename over a non-empty directory succeeded")
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".d.tmp-*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left after a failure: %v", left)
	}
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Fatalf("other file changed: %q", got)
	}
}

func TestLockConflictAndContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l")
	a, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	tests := []struct {
		name     string
		held     int
		want     int
		conflict bool
	}{
		{"shared with shared", Shared, Shared, false},
		{"exclusive with shared", Shared, Exclusive, true},
		{"shared with exclusive", Exclusive, Shared, true},
		{"exclusive with exclusive", Exclusive, Exclusive, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := Lock(ctx, a, tc.held); err != nil {
				t.Fatal(err)
			}
			defer Unlock(a)
			cctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
			defer cancel()
			err := Lock(cctx, b, tc.want)
			if tc.conflict && !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("conflicting lock: %v, want deadline exceeded", err)
			}
			if !tc.conflict {
				if err != nil {
					t.Fatalf("compatible lock: %v", err)
				}
				Unlock(b)
			}
		})
	}
	// Released: the waiter gets it.
	if err := Lock(ctx, a, Exclusive); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Lock(ctx, b, Exclusive) }()
	time.Sleep(5 * time.Millisecond)
	Unlock(a)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("waiter never got the released lock")
	}
}
