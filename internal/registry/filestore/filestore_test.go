package filestore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/fsutil"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/registrytest"
)

func openT(t testing.TB, path string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(context.Background(), path, opts...)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestFileModes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "registry.json")
	s := openT(t, path)
	if err := s.Create(t.Context(), registrytest.NewEntry("k", "v1")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + ".lock"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", filepath.Base(p), fi.Mode().Perm())
		}
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(t.Context(), path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("open of a world-readable registry: %v, want refusal", err)
	}
}

// A writer that died between writing its temporary file and the rename
// leaves the temporary file behind; the registry must be untouched by it,
// running handles must ignore it and the next Open must remove it.
func TestCrashMidWriteLeavesRegistryIntact(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "registry.json")
	a := openT(t, path)
	ctx := t.Context()
	want := registrytest.NewEntry("device/s1", "v1")
	if err := a.Create(ctx, want); err != nil {
		t.Fatal(err)
	}
	ch, err := a.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Two kinds of debris: a torn temporary file (crash during write) and a
	// complete one naming other entries (crash before rename).
	b := openT(t, filepath.Join(t.TempDir(), "other.json"))
	if err := b.Create(ctx, registrytest.NewEntry("device/ghost", "v1")); err != nil {
		t.Fatal(err)
	}
	complete, err := os.ReadFile(filepath.Join(filepath.Dir(b.path), "other.json"))
	if err != nil {
		t.Fatal(err)
	}
	torn := filepath.Join(dir, a.tmpPrefix()+"123")
	whole := filepath.Join(dir, a.tmpPrefix()+"456")
	if err := os.WriteFile(torn, complete[:len(complete)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(whole, complete, 0o600); err != nil {
		t.Fatal(err)
	}

	check := func(s *Store) {
		t.Helper()
		list, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || !registry.SameContent(list[0], want) {
			t.Fatalf("registry changed by a crashed write's debris: %+v", list)
		}
	}
	check(a)
	select {
	case c := <-ch:
		t.Fatalf("debris produced a change: %+v", c)
	case <-time.After(1500 * time.Millisecond): // past one poll
	}

	c := openT(t, path)
	check(c)
	for _, f := range []string{torn, whole} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed by Open: %v", filepath.Base(f), err)
		}
	}
	// And writing still works.
	if _, err := c.Update(ctx, "device/s1", "v1", registrytest.Shred); err != nil {
		t.Fatal(err)
	}
}

// A registry file damaged in place (not by this package, which only
// renames) must be neither served nor overwritten.
func TestCorruptFileRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.json")
	a := openT(t, path)
	ctx := t.Context()
	if err := a.Create(ctx, registrytest.NewEntry("k", "v1")); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"not json":        "{garbage",
		"unknown field":   `{"format":"decryptd-registry-v1","entries":[],"extra":1}`,
		"wrong format":    `{"format":"v0","entries":[]}`,
		"invalid entry":   `{"format":"decryptd-registry-v1","entries":[{"key_id":"k","key_version":"v1","state":"active","wrapped":{"root_key_id":"r","root_key_version":"1","ciphertext":null}}]}`,
		"duplicate entry": `{"format":"decryptd-registry-v1","entries":[{"key_id":"k","key_version":"v1","state":"shredded","wrapped":{"root_key_id":"","root_key_version":"","ciphertext":null}},{"key_id":"k","key_version":"v1","state":"shredded","wrapped":{"root_key_id":"","root_key_version":"","ciphertext":null}}]}`,
		"trailing data":   `{"format":"decryptd-registry-v1","entries":[]} {}`,
	}
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := Open(ctx, path); err == nil {
				t.Fatal("Open accepted a corrupt registry")
			}
			// The open handle keeps serving its last good copy...
			if _, err := a.Get(ctx, "k", "v1"); err != nil {
				t.Fatalf("get from the last good copy: %v", err)
			}
			// ...and refuses to write over what it cannot read.
			if err := a.Create(ctx, registrytest.NewEntry("k", "v2")); err == nil {
				t.Fatal("Create wrote over a corrupt registry")
			}
			if got, _ := os.ReadFile(path); string(got) != content {
				t.Fatal("corrupt file was rewritten")
			}
		})
	}
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Create(ctx, registrytest.NewEntry("k", "v2")); err != nil {
		t.Fatalf("after repair: %v", err)
	}
}

// A change made outside this handle is diffed into precise changes; an
// entry that vanished (a restored backup) becomes a Reset.
func TestWatchDiff(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.json")
	a := openT(t, path)
	b := openT(t, path)
	ctx := t.Context()
	for _, v := range []string{"v1", "v2", "v3"} {
		if err := b.Create(ctx, registrytest.NewEntry("k", v)); err != nil {
			t.Fatal(err)
		}
	}
	backup, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := a.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	next := func() registry.Change {
		t.Helper()
		select {
		case c := <-ch:
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("no change")
			return registry.Change{}
		}
	}
	// a has loaded v1..v3 (Watch does not load; List does).
	if _, err := a.List(ctx); err != nil {
		t.Fatal(err)
	}
	// Drain the creates a learnt of by its own reloads.
	drainUntilQuiet(ch)

	if _, err := b.Update(ctx, "k", "v2", func(e *registry.Entry) error { e.State = dek.StateRevoked; return nil }); err != nil {
		t.Fatal(err)
	}
	if c := next(); c != (registry.Change{Kind: registry.ChangeUpdated, KeyID: "k", Version: "v2", State: dek.StateRevoked}) {
		t.Fatalf("got %+v", c)
	}
	if err := b.Create(ctx, registrytest.NewEntry("k", "v4")); err != nil {
		t.Fatal(err)
	}
	if c := next(); c != (registry.Change{Kind: registry.ChangeCreated, KeyID: "k", Version: "v4", State: dek.StateActive}) {
		t.Fatalf("got %+v", c)
	}
	if err := fsutil.WriteAtomic(path, ".restore-", backup, 0o600); err != nil {
		t.Fatal(err)
	}
	if c := next(); c.Kind != registry.ChangeReset {
		t.Fatalf("restore of an older file: got %+v, want reset", c)
	}
}

func drainUntilQuiet(ch <-chan registry.Change) {
	for {
		select {
		case <-ch:
		case <-time.After(200 * time.Millisecond):
			return
		}
	}
}

const helperEnv = "DECRYPTD_FILESTORE_HELPER"

// TestHelperProcess is not a test: TestSeparateProcesses runs the test
// binary again with it, as a second process sharing the registry.
func TestHelperProcess(t *testing.T) {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		return
	}
	path, name, _ := strings.Cut(spec, "|")
	n, _ := strconv.Atoi(os.Getenv(helperEnv + "_N"))
	s, err := Open(context.Background(), path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer s.Close()
	for i := range n {
		_, err := s.Update(context.Background(), "group/g", "v1", func(e *registry.Entry) error {
			e.Devices = append(e.Devices, fmt.Sprintf("%s-%03d", name, i))
			return nil
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
	}
}

// Real processes, as dekctl and the daemon are: updates from three
// processes at once are all kept, and the parent's watcher hears of them.
func TestSeparateProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.json")
	s := openT(t, path)
	ctx := t.Context()
	if err := s.Create(ctx, registrytest.NewEntry("group/g", "v1")); err != nil {
		t.Fatal(err)
	}
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 15
	var wg sync.WaitGroup
	for _, name := range []string{"p1", "p2"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), helperEnv+"="+path+"|"+name, helperEnv+"_N="+strconv.Itoa(n))
		wg.Go(func() {
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("helper %s: %v\n%s", name, err, out)
			}
		})
	}
	for i := range n {
		if _, err := s.Update(ctx, "group/g", "v1", func(e *registry.Entry) error {
			e.Devices = append(e.Devices, fmt.Sprintf("p0-%03d", i))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	e, err := s.Get(ctx, "group/g", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Devices) != 3*n {
		t.Fatalf("%d devices after %d appends from 3 processes: updates lost", len(e.Devices), 3*n)
	}
	// Writes between two reloads fold into one Updated, so at least one.
	for {
		select {
		case c := <-ch:
			if c.Kind == registry.ChangeUpdated && c.KeyID == "group/g" {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("watcher heard nothing")
		}
	}
}

func BenchmarkGet(b *testing.B) {
	path := filepath.Join(b.TempDir(), "registry.json")
	s := openT(b, path)
	ctx := context.Background()
	for i := range 1000 {
		if err := s.Create(ctx, registrytest.NewEntry(fmt.Sprintf("device/s%04d", i), "v1")); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := s.Get(ctx, "device/s0500", "v1"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUpdate(b *testing.B) {
	path := filepath.Join(b.TempDir(), "registry.json")
	s := openT(b, path)
	ctx := context.Background()
	for i := range 100 {
		if err := s.Create(ctx, registrytest.NewEntry(fmt.Sprintf("device/s%04d", i), "v1")); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	flip := []dek.State{dek.StateRevoked, dek.StateActive}
	for i := 0; b.Loop(); i++ {
		if _, err := s.Update(ctx, "device/s0050", "v1", func(e *registry.Entry) error { e.State = flip[i%2]; return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"format":"decryptd-registry-v1","entries":[]}`))
	f.Add([]byte(`{"format":"decryptd-registry-v1","entries":[{"key_id":"device/s1","key_version":"v1","state":"active","wrapped":{"root_key_id":"r","root_key_version":"1","ciphertext":"AAEC"},"devices":["a"],"created_at":"2025-01-01T00:00:00Z","updated_at":"2025-01-01T00:00:00Z","state_changed_at":"2025-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"format":"decryptd-registry-v1","entries":[{"key_id":"k","key_version":"v1","state":"shredded","wrapped":{"root_key_id":"","root_key_version":"","ciphertext":null}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		index, err := parse(data)
		if err != nil {
			return
		}
		for ref, e := range index {
			if err := e.Validate(); err != nil {
				t.Fatalf("parse accepted an invalid entry %s: %v", ref, err)
			}
			if e.Ref() != ref {
				t.Fatalf("indexed under %s but named %s", ref, e.Ref())
			}
		}
	})
}
