package registrytest

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
	"github.com/decryptd/decryptd/internal/registry"
)

// WatchBound is the latency the registry promises between a change and its
// arrival at every watcher (registry.Store.Watch).
const WatchBound = 2 * time.Second

// waitLimit is how long a test waits for an event before giving up; longer
// than WatchBound so that a slow event is measured and reported as such.
const waitLimit = 10 * time.Second

// Opener gives a test fresh, empty storage: the first handle on it and a
// function opening one more handle on the same storage (as another process
// would). The suite closes every handle it gets; the opener cleans up the
// storage itself (t.Cleanup).
type Opener func(t *testing.T) (first registry.Store, another func() registry.Store)

// NewEntry returns a valid active entry with random stand-in ciphertext
// (not a real wrapped key) and zero timestamps, for tests.
func NewEntry(keyID, version string) registry.Entry {
	ct := make([]byte, 60)
	_, _ = rand.Read(ct)
	return registry.Entry{
		KeyID:   keyID,
		Version: version,
		State:   dek.StateActive,
		Wrapped: kms.Wrapped{RootKeyID: "root-1", RootKeyVersion: "rv1", Ciphertext: ct},
	}
}

// Shred is an Update function that crypto-shreds an entry.
func Shred(e *registry.Entry) error {
	e.State = dek.StateShredded
	e.Wrapped.Ciphertext = nil
	return nil
}

func handles(t *testing.T, open Opener) (registry.Store, func() registry.Store) {
	t.Helper()
	first, another := open(t)
	t.Cleanup(func() { _ = first.Close() })
	return first, func() registry.Store {
		t.Helper()
		s := another()
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// EqualEntries reports whether a and b are the same entry, timestamps
// compared as instants.
func EqualEntries(a, b registry.Entry) bool {
	return registry.SameContent(a, b) && a.CreatedAt.Equal(b.CreatedAt) &&
		a.UpdatedAt.Equal(b.UpdatedAt) && a.StateChangedAt.Equal(b.StateChangedAt)
}

func mustCreate(t *testing.T, s registry.Store, e registry.Entry) registry.Entry {
	t.Helper()
	if err := s.Create(ctxT(t), e); err != nil {
		t.Fatalf("create %s: %v", e.Ref(), err)
	}
	got, err := s.Get(ctxT(t), e.KeyID, e.Version)
	if err != nil {
		t.Fatalf("get %s after create: %v", e.Ref(), err)
	}
	return got
}

// RunStoreContract runs the contract every registry.Store must meet.
func RunStoreContract(t *testing.T, open Opener) {
	t.Run("CreateGet", func(t *testing.T) { testCreateGet(t, open) })
	t.Run("NotFoundExists", func(t *testing.T) { testNotFoundExists(t, open) })
	t.Run("UpdateSemantics", func(t *testing.T) { testUpdateSemantics(t, open) })
	t.Run("Invariants", func(t *testing.T) { testInvariants(t, open) })
	t.Run("ShreddedIsFinal", func(t *testing.T) { testShreddedIsFinal(t, open) })
	t.Run("ReturnsCopies", func(t *testing.T) { testReturnsCopies(t, open) })
	t.Run("ListOrder", func(t *testing.T) { testListOrder(t, open) })
	t.Run("ManyDevices", func(t *testing.T) { testManyDevices(t, open) })
	t.Run("CrossHandleRead", func(t *testing.T) { testCrossHandleRead(t, open) })
	t.Run("ConcurrentUpdates", func(t *testing.T) { testConcurrentUpdates(t, open) })
	t.Run("WatchOtherHandle", func(t *testing.T) { testWatchOtherHandle(t, open) })
	t.Run("WatchSameHandle", func(t *testing.T) { testWatchSameHandle(t, open) })
	t.Run("WatchEndsWithContext", func(t *testing.T) { testWatchEndsWithContext(t, open) })
	t.Run("CloseClosesWatch", func(t *testing.T) { testCloseClosesWatch(t, open) })
	t.Run("RotationFields", func(t *testing.T) { testRotationFields(t, open) })
	t.Run("Bulk", func(t *testing.T) { runBulkIfImplemented(t, open) })
}

// testRotationFields: the rotation bookkeeping is stored, read back through
// another handle, changed by Update (which counts it as a change) and
// checked against the invariants.
func testRotationFields(t *testing.T, open Opener) {
	s, other := handles(t, open)
	ctx := ctxT(t)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 678901234, time.UTC)
	e := NewEntry("group/g", "v2")
	e.Devices = []string{"d1", "d2"}
	e.Rotation = registry.Rotation{Supersedes: "v1", Pending: true, RekeyAttempts: 2, LastRekeyAt: t0, Messages: 1 << 40}
	created := mustCreate(t, s, e)
	if !created.Rotation.LastRekeyAt.Equal(t0.Truncate(time.Microsecond)) || created.Rotation.Supersedes != "v1" {
		t.Fatalf("rotation not kept: %+v", created.Rotation)
	}
	got, err := s.Update(ctx, "group/g", "v2", func(x *registry.Entry) error {
		x.Rotation.AdoptedBy = append(x.Rotation.AdoptedBy, "d1")
		x.Rotation.Messages++
		return nil
	})
	if err != nil || got.Rotation.Messages != created.Rotation.Messages+1 || got.UpdatedAt.Before(created.UpdatedAt) {
		t.Fatalf("update: %v %+v", err, got.Rotation)
	}
	again, err := other().Get(ctx, "group/g", "v2")
	if err != nil || !EqualEntries(again, got) || len(again.Rotation.AdoptedBy) != 1 || again.Rotation.Messages != 1<<40+1 {
		t.Fatalf("read back: %v %+v", err, again.Rotation)
	}
	if _, err := s.Update(ctx, "group/g", "v2", func(x *registry.Entry) error {
		x.Rotation.AdoptedBy = []string{"not valid"}
		return nil
	}); !errors.Is(err, registry.ErrInvalid) {
		t.Fatalf("invalid adopted_by accepted: %v", err)
	}
}

func testCreateGet(t *testing.T, open Opener) {
	s, _ := handles(t, open)
	before := time.Now().Add(-time.Second)
	e := NewEntry("device/sensor-001", "v1")
	e.Devices = nil
	got := mustCreate(t, s, e)
	if !registry.SameContent(got, e) {
		t.Fatalf("got %+v, want %+v", got, e)
	}
	if got.CreatedAt.Before(before) || got.CreatedAt.After(time.Now().Add(time.Second)) {
		t.Fatalf("CreatedAt %v not set to now", got.CreatedAt)
	}
	if !got.UpdatedAt.Equal(got.CreatedAt) || !got.StateChangedAt.Equal(got.CreatedAt) {
		t.Fatalf("UpdatedAt %v / StateChangedAt %v, want CreatedAt %v", got.UpdatedAt, got.StateChangedAt, got.CreatedAt)
	}
	if got.CreatedAt.Location() != time.UTC {
		t.Fatalf("CreatedAt not in UTC: %v", got.CreatedAt.Location())
	}

	// A caller importing an entry keeps its timestamps.
	imp := NewEntry("group/ward-3", "2024.01")
	imp.Devices = []string{"sensor-001", "sensor-002"}
	imp.CreatedAt = time.Date(2024, 1, 2, 3, 4, 5, 6000, time.UTC)
	got = mustCreate(t, s, imp)
	if !got.CreatedAt.Equal(imp.CreatedAt) || !registry.SameContent(got, imp) {
		t.Fatalf("import: got %+v, want %+v", got, imp)
	}
}

func testNotFoundExists(t *testing.T, open Opener) {
	s, _ := handles(t, open)
	ctx := ctxT(t)
	e := mustCreate(t, s, NewEntry("k1", "v1"))
	if err := s.Create(ctx, NewEntry("k1", "v1")); !errors.Is(err, registry.ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
	if got, _ := s.Get(ctx, "k1", "v1"); !EqualEntries(got, e) {
		t.Fatal("failed create changed the stored entry")
	}
	for _, tc := range []struct{ id, ver string }{{"k1", "v2"}, {"k2", "v1"}} {
		if _, err := s.Get(ctx, tc.id, tc.ver); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("get %s %s: %v, want ErrNotFound", tc.id, tc.ver, err)
		}
		_, err := s.Update(ctx, tc.id, tc.ver, func(*registry.Entry) error { return nil })
		if !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("update %s %s: %v, want ErrNotFound", tc.id, tc.ver, err)
		}
	}
}

func testUpdateSemantics(t *testing.T, open Opener) {
	s, _ := handles(t, open)
	ctx := ctxT(t)
	orig := mustCreate(t, s, NewEntry("k", "v1"))

	t.Run("fn error aborts and is returned as is", func(t *testing.T) {
		boom := errors.New("boom")
		_, err := s.Update(ctx, "k", "v1", func(e *registry.Entry) error {
			e.State = dek.StateRevoked
			return boom
		})
		if err != boom {
			t.Fatalf("got %v, want the fn's error itself", err)
		}
		if got, _ := s.Get(ctx, "k", "v1"); !EqualEntries(got, orig) {
			t.Fatalf("aborted update changed the entry: %+v", got)
		}
	})
	t.Run("no-op writes nothing", func(t *testing.T) {
		got, err := s.Update(ctx, "k", "v1", func(*registry.Entry) error { return nil })
		if err != nil || !EqualEntries(got, orig) {
			t.Fatalf("no-op update: %v, %+v", err, got)
		}
	})
	var afterDevices registry.Entry
	t.Run("content change bumps UpdatedAt only", func(t *testing.T) {
		got, err := s.Update(ctx, "k", "v1", func(e *registry.Entry) error {
			e.Devices = append(e.Devices, "d1")
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if got.UpdatedAt.Before(orig.UpdatedAt) || !got.StateChangedAt.Equal(orig.StateChangedAt) || !got.CreatedAt.Equal(orig.CreatedAt) {
			t.Fatalf("timestamps: orig %+v, got %+v", orig, got)
		}
		stored, _ := s.Get(ctx, "k", "v1")
		if !EqualEntries(stored, got) {
			t.Fatalf("Update returned %+v but stored %+v", got, stored)
		}
		afterDevices = got
	})
	t.Run("state change sets StateChangedAt", func(t *testing.T) {
		time.Sleep(2 * time.Millisecond) // timestamps are microseconds: make them differ
		got, err := s.Update(ctx, "k", "v1", func(e *registry.Entry) error {
			e.State = dek.StateDecryptOnly
			e.StateChangedAt = time.Time{} // ignored: the store sets it
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if got.State != dek.StateDecryptOnly || !got.StateChangedAt.Equal(got.UpdatedAt) || !got.StateChangedAt.After(afterDevices.StateChangedAt) {
			t.Fatalf("after state change: %+v", got)
		}
	})
	t.Run("rename refused", func(t *testing.T) {
		for name, fn := range map[string]func(*registry.Entry) error{
			"key id":     func(e *registry.Entry) error { e.KeyID = "other"; return nil },
			"version":    func(e *registry.Entry) error { e.Version = "v9"; return nil },
			"created at": func(e *registry.Entry) error { e.CreatedAt = e.CreatedAt.Add(time.Hour); return nil },
		} {
			if _, err := s.Update(ctx, "k", "v1", fn); !errors.Is(err, registry.ErrInvalid) {
				t.Errorf("%s: %v, want ErrInvalid", name, err)
			}
		}
		if _, err := s.Get(ctx, "other", "v1"); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("renamed entry appeared: %v", err)
		}
	})
}

func invalidEntries() map[string]func(*registry.Entry) {
	return map[string]func(*registry.Entry){
		"empty key id":           func(e *registry.Entry) { e.KeyID = "" },
		"key id bad char":        func(e *registry.Entry) { e.KeyID = "device/a b" },
		"key id too long":        func(e *registry.Entry) { e.KeyID = string(bytes.Repeat([]byte("a"), 201)) },
		"empty version":          func(e *registry.Entry) { e.Version = "" },
		"version with slash":     func(e *registry.Entry) { e.Version = "v/1" },
		"version with colon":     func(e *registry.Entry) { e.Version = "v:1" },
		"version too long":       func(e *registry.Entry) { e.Version = string(bytes.Repeat([]byte("v"), 33)) },
		"unknown state":          func(e *registry.Entry) { e.State = "paused" },
		"empty state":            func(e *registry.Entry) { e.State = "" },
		"active without DEK":     func(e *registry.Entry) { e.Wrapped.Ciphertext = nil },
		"revoked without DEK":    func(e *registry.Entry) { e.State = dek.StateRevoked; e.Wrapped.Ciphertext = []byte{} },
		"DEK without root key":   func(e *registry.Entry) { e.Wrapped.RootKeyID = "" },
		"shredded but keeps DEK": func(e *registry.Entry) { e.State = dek.StateShredded },
		"bad device id":          func(e *registry.Entry) { e.Devices = []string{"ok", "not/ok"} },
		"empty device id":        func(e *registry.Entry) { e.Devices = []string{""} },
		"device twice":           func(e *registry.Entry) { e.Devices = []string{"a", "b", "a"} },
	}
}

func testInvariants(t *testing.T, open Opener) {
	s, _ := handles(t, open)
	ctx := ctxT(t)
	good := mustCreate(t, s, NewEntry("k", "v1"))
	for name, breakIt := range invalidEntries() {
		t.Run(name, func(t *testing.T) {
			e := NewEntry("k2", "v1")
			breakIt(&e)
			if err := s.Create(ctx, e); !errors.Is(err, registry.ErrInvalid) {
				t.Fatalf("create: %v, want ErrInvalid", err)
			}
			if e.KeyID == "k" || e.Version != "v1" || e.KeyID != "k2" {
				return // a rename; covered by UpdateSemantics
			}
			_, err := s.Update(ctx, "k", "v1", func(u *registry.Entry) error { breakIt(u); return nil })
			if !errors.Is(err, registry.ErrInvalid) {
				t.Fatalf("update: %v, want ErrInvalid", err)
			}
			if got, _ := s.Get(ctx, "k", "v1"); !EqualEntries(got, good) {
				t.Fatalf("rejected update changed the entry: %+v", got)
			}
		})
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("after rejected creates: %d entries, %v", len(list), err)
	}
}

func testShreddedIsFinal(t *testing.T, open Opener) {
	s, _ := handles(t, open)
	ctx := ctxT(t)
	mustCreate(t, s, NewEntry("k", "v1"))
	shredded, err := s.Update(ctx, "k", "v1", Shred)
	if err != nil {
		t.Fatalf("shred: %v", err)
	}
	if shredded.State != dek.StateShredded || !shredded.Wrapped.IsZero() {
		t.Fatalf("after shred: %+v", shredded)
	}
	for name, fn := range map[string]func(*registry.Entry) error{
		"back to active": func(e *registry.Entry) error {
			e.State = dek.StateActive
			e.Wrapped.Ciphertext = []byte("resurrected")
			return nil
		},
		"to revoked":  func(e *registry.Entry) error { e.State = dek.StateRevoked; return nil },
		"add devices": func(e *registry.Entry) error { e.Devices = append(e.Devices, "d1"); return nil },
	} {
		if _, err := s.Update(ctx, "k", "v1", fn); !errors.Is(err, registry.ErrShredded) {
			t.Errorf("%s: %v, want ErrShredded", name, err)
		}
	}
	// Shredding again is a no-op, so dekctl shred can be retried.
	again, err := s.Update(ctx, "k", "v1", Shred)
	if err != nil || !EqualEntries(again, shredded) {
		t.Fatalf("second shred: %v, %+v", err, again)
	}
	// A shredded tombstone may be imported (a copy of another registry).
	tomb := NewEntry("k", "v2")
	_ = Shred(&tomb)
	mustCreate(t, s, tomb)
}

func testReturnsCopies(t *testing.T, open Opener) {
	s, _ := handles(t, open)
	ctx := ctxT(t)
	e := NewEntry("group/g", "v1")
	e.Devices = []string{"a", "b"}
	in := e.Clone()
	if err := s.Create(ctx, in); err != nil {
		t.Fatal(err)
	}
	in.Devices[0] = "mutated-after-create"
	in.Wrapped.Ciphertext[0] ^= 0xff
	got, _ := s.Get(ctx, "group/g", "v1")
	got.Devices[1] = "mutated-after-get"
	got.Wrapped.Ciphertext[1] ^= 0xff
	list, _ := s.List(ctx)
	list[0].Devices[0] = "mutated-after-list"
	_, _ = s.Update(ctx, "group/g", "v1", func(u *registry.Entry) error {
		u.Devices[0] = "mutated-inside-failed-update"
		return errors.New("abort")
	})
	again, _ := s.Get(ctx, "group/g", "v1")
	if !registry.SameContent(again, e) {
		t.Fatalf("store shares memory with callers: %+v, want %+v", again, e)
	}
}

func testListOrder(t *testing.T, open Opener) {
	s, _ := handles(t, open)
	ctx := ctxT(t)
	if list, err := s.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("empty store lists %d entries, %v", len(list), err)
	}
	base := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	for i, c := range []struct {
		id, ver string
		at      int
	}{
		{"device/b", "v1", 1}, {"device/a", "v10", 3}, {"device/a", "v2", 2},
		{"Device/z", "v1", 9}, {"device/a", "v1", 1}, {"device/a:x", "v1", 0}, {"device/a/x", "v1", 0},
	} {
		e := NewEntry(c.id, c.ver)
		e.CreatedAt = base.Add(time.Duration(c.at) * time.Hour)
		if err := s.Create(ctx, e); err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
	}
	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range list {
		got = append(got, e.Ref().String())
	}
	// Key ids compare bytewise ("D" < "d", "/" < ":"), then creation time.
	want := []string{"Device/z@v1", "device/a@v1", "device/a@v2", "device/a@v10", "device/a/x@v1", "device/a:x@v1", "device/b@v1"}
	if !slices.Equal(got, want) {
		t.Fatalf("List order\n got %v\nwant %v", got, want)
	}
}

func testManyDevices(t *testing.T, open Opener) {
	s, another := handles(t, open)
	ctx := ctxT(t)
	e := NewEntry("group/fleet", "v1")
	for i := range 5000 {
		e.Devices = append(e.Devices, fmt.Sprintf("sensor-%05d", i))
	}
	mustCreate(t, s, e)
	got, err := another().Get(ctx, "group/fleet", "v1")
	if err != nil || !registry.SameContent(got, e) {
		t.Fatalf("5000-device entry did not round-trip: %v", err)
	}
	if !got.AllowsDevice("sensor-04999") || got.AllowsDevice("sensor-05000") {
		t.Fatal("AllowsDevice wrong on a large group")
	}
}

func testCrossHandleRead(t *testing.T, open Opener) {
	a, another := handles(t, open)
	b := another()
	ctx := ctxT(t)
	// Warm a's view first, so the test sees a refresh rather than a first load.
	if _, err := a.List(ctx); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, b, NewEntry("k", "v1"))
	if _, err := a.Get(ctx, "k", "v1"); err != nil {
		t.Fatalf("entry created through one handle not readable through another: %v", err)
	}
	if _, err := b.Update(ctx, "k", "v1", func(e *registry.Entry) error { e.State = dek.StateRevoked; return nil }); err != nil {
		t.Fatal(err)
	}
	if got, err := a.Get(ctx, "k", "v1"); err != nil || got.State != dek.StateRevoked {
		t.Fatalf("update through one handle not seen through another: %v %v", got.State, err)
	}
}

func testConcurrentUpdates(t *testing.T, open Opener) {
	a, another := handles(t, open)
	b := another()
	ctx := ctxT(t)
	mustCreate(t, a, NewEntry("group/g", "v1"))
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			_, err := s.Update(ctx, "group/g", "v1", func(e *registry.Entry) error {
				e.Devices = append(e.Devices, fmt.Sprintf("d%03d", i))
				return nil
			})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent update: %v", err)
		}
	}
	got, err := a.Get(ctx, "group/g", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Devices) != n {
		t.Fatalf("%d devices after %d concurrent appends: updates were lost", len(got.Devices), n)
	}
}

// waitChange reads ch until a change for ref arrives (skipping Resets, which
// a backend may send at any time) and returns it with the time it took.
func waitChange(t *testing.T, ch <-chan registry.Change, start time.Time, keyID, version string) (registry.Change, time.Duration) {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		select {
		case c, ok := <-ch:
			if !ok {
				t.Fatalf("watch channel closed while waiting for %s@%s", keyID, version)
			}
			if c.Kind == registry.ChangeReset || c.KeyID != keyID || c.Version != version {
				continue
			}
			return c, time.Since(start)
		case <-deadline:
			t.Fatalf("no change for %s@%s within %v", keyID, version, waitLimit)
		}
	}
}

func testWatchOtherHandle(t *testing.T, open Opener) {
	a, another := handles(t, open)
	b := another()
	ctx := ctxT(t)
	ch, err := a.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ch2, err := a.Watch(ctx) // every watcher gets every change
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	mustCreate(t, b, NewEntry("device/s1", "v1"))
	c, took := waitChange(t, ch, start, "device/s1", "v1")
	if c.Kind != registry.ChangeCreated || c.State != dek.StateActive {
		t.Fatalf("got %+v, want created/active", c)
	}
	if took > WatchBound {
		t.Fatalf("create through another handle reached the watcher after %v, bound %v", took, WatchBound)
	}
	t.Logf("created: seen after %v", took)
	if _, took2 := waitChange(t, ch2, start, "device/s1", "v1"); took2 > WatchBound {
		t.Fatalf("second watcher: %v", took2)
	}

	start = time.Now()
	if _, err := b.Update(ctx, "device/s1", "v1", func(e *registry.Entry) error { e.State = dek.StateRevoked; return nil }); err != nil {
		t.Fatal(err)
	}
	c, took = waitChange(t, ch, start, "device/s1", "v1")
	if c.Kind != registry.ChangeUpdated || c.State != dek.StateRevoked {
		t.Fatalf("got %+v, want updated/revoked", c)
	}
	if took > WatchBound {
		t.Fatalf("update through another handle reached the watcher after %v, bound %v", took, WatchBound)
	}
	t.Logf("updated: seen after %v", took)
}

func testWatchSameHandle(t *testing.T, open Opener) {
	s, _ := handles(t, open)
	ctx := ctxT(t)
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	mustCreate(t, s, NewEntry("k", "v1"))
	if c, took := waitChange(t, ch, start, "k", "v1"); c.Kind != registry.ChangeCreated || took > WatchBound {
		t.Fatalf("own create: %+v after %v", c, took)
	}
	start = time.Now()
	if _, err := s.Update(ctx, "k", "v1", Shred); err != nil {
		t.Fatal(err)
	}
	if c, took := waitChange(t, ch, start, "k", "v1"); c.Kind != registry.ChangeUpdated || c.State != dek.StateShredded || took > WatchBound {
		t.Fatalf("own shred: %+v after %v", c, took)
	}
}

func waitClosed(t *testing.T, ch <-chan registry.Change) {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("watch channel not closed")
		}
	}
}

func testWatchEndsWithContext(t *testing.T, open Opener) {
	s, _ := handles(t, open)
	ctx, cancel := context.WithCancel(ctxT(t))
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	waitClosed(t, ch)
	// The store itself keeps working.
	mustCreate(t, s, NewEntry("k", "v1"))
}

func testCloseClosesWatch(t *testing.T, open Opener) {
	s, _ := handles(t, open)
	ctx := ctxT(t)
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	waitClosed(t, ch)
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := s.Get(ctx, "k", "v1"); !errors.Is(err, registry.ErrClosed) {
		t.Fatalf("get after close: %v, want ErrClosed", err)
	}
	if err := s.Create(ctx, NewEntry("k", "v1")); !errors.Is(err, registry.ErrClosed) {
		t.Fatalf("create after close: %v, want ErrClosed", err)
	}
	if _, err := s.Watch(ctx); !errors.Is(err, registry.ErrClosed) {
		t.Fatalf("watch after close: %v, want ErrClosed", err)
	}
}
