package registrytest

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
)

// BulkSize is the batch the bulk contract and benchmarks use: a hospital's
// fleet provisioned in one call.
const BulkSize = 10_000

// bulkEntries returns n valid device-key entries named device/<prefix>-<i>@v1.
func bulkEntries(prefix string, n int) []registry.Entry {
	es := make([]registry.Entry, n)
	for i := range es {
		es[i] = NewEntry(fmt.Sprintf("device/%s-%06d", prefix, i), "v1")
	}
	return es
}

// bulkOf returns s's bulk path, failing the test if it has none.
func bulkOf(t testing.TB, s registry.Store) registry.BulkCreator {
	t.Helper()
	bc, ok := s.(registry.BulkCreator)
	if !ok {
		t.Fatalf("%T does not implement registry.BulkCreator", s)
	}
	return bc
}

// RunBulkContract runs the contract of registry.BulkCreator. RunStoreContract
// calls it for a store that implements it; a backend that must have it may
// call it directly, which then fails if the store lacks it.
func RunBulkContract(t *testing.T, open Opener) {
	t.Run("CreateManyLarge", func(t *testing.T) { testCreateManyLarge(t, open) })
	t.Run("CreateManyAllOrNothing", func(t *testing.T) { testCreateManyAllOrNothing(t, open) })
	t.Run("CreateManyWatch", func(t *testing.T) { testCreateManyWatch(t, open) })
	t.Run("CreateManyLargeWatch", func(t *testing.T) { testCreateManyLargeWatch(t, open) })
}

// runBulkIfImplemented runs RunBulkContract when the opener's stores
// implement registry.BulkCreator.
func runBulkIfImplemented(t *testing.T, open Opener) {
	first, another := open(t)
	_, ok := first.(registry.BulkCreator)
	_ = first.Close()
	_ = another
	if !ok {
		t.Logf("%T has no CreateMany: bulk contract not run", first)
		return
	}
	RunBulkContract(t, open)
}

func testCreateManyLarge(t *testing.T, open Opener) {
	s, another := handles(t, open)
	ctx := ctxT(t)
	mustCreate(t, s, NewEntry("device/before", "v1"))
	es := bulkEntries("bulk", BulkSize)
	es[7].Devices = []string{"a", "b"} // a group-style entry among them
	es[9].CreatedAt = time.Date(2025, 1, 2, 3, 4, 5, 6000, time.UTC)
	start := time.Now()
	if err := bulkOf(t, s).CreateMany(ctx, es); err != nil {
		t.Fatalf("CreateMany of %d: %v", len(es), err)
	}
	t.Logf("CreateMany of %d entries took %v", len(es), time.Since(start))
	for _, h := range []registry.Store{s, another()} {
		list, err := h.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != BulkSize+1 {
			t.Fatalf("%d entries listed, want %d", len(list), BulkSize+1)
		}
		byRef := make(map[dek.Ref]registry.Entry, len(list))
		for _, e := range list {
			byRef[e.Ref()] = e
		}
		for i, want := range es {
			got, ok := byRef[want.Ref()]
			if !ok || !registry.SameContent(got, want) {
				t.Fatalf("entries[%d] %s: stored %v, %+v", i, want.Ref(), ok, got)
			}
			if got.CreatedAt.IsZero() || !got.UpdatedAt.Equal(got.CreatedAt) || !got.StateChangedAt.Equal(got.CreatedAt) {
				t.Fatalf("entries[%d]: timestamps not filled in: %+v", i, got)
			}
		}
		if got := byRef[es[9].Ref()]; !got.CreatedAt.Equal(es[9].CreatedAt) {
			t.Fatalf("caller's CreatedAt not kept: %v", got.CreatedAt)
		}
	}
}

func testCreateManyAllOrNothing(t *testing.T, open Opener) {
	s, _ := handles(t, open)
	ctx := ctxT(t)
	existing := mustCreate(t, s, NewEntry("device/taken", "v1"))
	bc := bulkOf(t, s)
	if err := bc.CreateMany(ctx, nil); err != nil {
		t.Fatalf("empty batch: %v", err)
	}
	cases := []struct {
		name    string
		batch   func() []registry.Entry
		want    error
		mention string
	}{
		{"one already stored", func() []registry.Entry {
			es := bulkEntries("a", 500)
			es[250] = NewEntry("device/taken", "v1")
			return es
		}, registry.ErrExists, "device/taken@v1"},
		{"last already stored", func() []registry.Entry {
			return append(bulkEntries("a", 3), NewEntry("device/taken", "v1"))
		}, registry.ErrExists, "device/taken@v1"},
		{"listed twice", func() []registry.Entry {
			es := bulkEntries("a", 100)
			return append(es, NewEntry(es[42].KeyID, "v1"))
		}, registry.ErrExists, "device/a-000042@v1"},
		{"one invalid", func() []registry.Entry {
			es := bulkEntries("a", 100)
			es[60].Wrapped.Ciphertext = nil
			return es
		}, registry.ErrInvalid, "device/a-000060@v1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := bc.CreateMany(ctx, tc.batch())
			if !errors.Is(err, tc.want) {
				t.Fatalf("CreateMany: %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("error %q does not name %s", err, tc.mention)
			}
			list, err := s.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(list) != 1 || !EqualEntries(list[0], existing) {
				t.Fatalf("a rejected batch left %d entries behind", len(list)-1)
			}
		})
	}
}

// testCreateManyWatch: a small batch reaches every watcher, of this handle
// and of another, as one ChangeCreated per entry.
func testCreateManyWatch(t *testing.T, open Opener) {
	a, another := handles(t, open)
	b := another()
	ctx := ctxT(t)
	chA, err := a.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	chB, err := b.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	es := bulkEntries("w", 50)
	start := time.Now()
	if err := bulkOf(t, a).CreateMany(ctx, es); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]<-chan registry.Change{"same handle": chA, "other handle": chB} {
		for _, e := range es {
			c, took := waitChange(t, ch, start, e.KeyID, e.Version)
			if c.Kind != registry.ChangeCreated || c.State != dek.StateActive {
				t.Fatalf("%s: %s: got %+v, want created/active", name, e.Ref(), c)
			}
			if took > WatchBound {
				t.Fatalf("%s: %s seen after %v, bound %v", name, e.Ref(), took, WatchBound)
			}
		}
	}
}

// testCreateManyLargeWatch: every entry of a large batch reaches a watcher
// as a ChangeCreated, unless a ChangeReset covers it. The batch is larger
// than a watcher's queue (feed.DefaultQueue), the case where a backend may
// collapse it into a reset.
func testCreateManyLargeWatch(t *testing.T, open Opener) {
	a, another := handles(t, open)
	b := another()
	ctx := ctxT(t)
	chA, err := a.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	chB, err := b.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	es := bulkEntries("lw", BulkSize/4)
	if err := bulkOf(t, a).CreateMany(ctx, es); err != nil {
		t.Fatal(err)
	}
	// Measured from the batch's commit. Logged, not asserted: the bound is
	// WatchOtherHandle's to check, and a 10,000-entry reload under the race
	// detector on a busy machine is not what this test is about.
	start := time.Now()
	for name, ch := range map[string]<-chan registry.Change{"same handle": chA, "other handle": chB} {
		pending := make(map[dek.Ref]struct{}, len(es))
		for _, e := range es {
			pending[e.Ref()] = struct{}{}
		}
		created, resets := 0, 0
		deadline := time.After(waitLimit)
		for len(pending) > 0 {
			select {
			case c, ok := <-ch:
				if !ok {
					t.Fatalf("%s: watch closed", name)
				}
				switch c.Kind {
				case registry.ChangeReset:
					resets++
					clear(pending)
				case registry.ChangeCreated:
					created++
					delete(pending, dek.Ref{KeyID: c.KeyID, Version: c.Version})
				}
			case <-deadline:
				t.Fatalf("%s: %d of %d entries neither seen nor covered by a reset within %v", name, len(pending), len(es), waitLimit)
			}
		}
		t.Logf("%s: %d created, %d resets, covered %v after the call returned", name, created, resets, time.Since(start))
	}
	// Whatever a watcher was told, the entries are there to re-read.
	if got, err := b.Get(ctx, es[len(es)-1].KeyID, "v1"); err != nil || !registry.SameContent(got, es[len(es)-1]) {
		t.Fatalf("last entry through the other handle: %v", err)
	}
}

// BenchmarkCreateMany measures one CreateMany of BulkSize entries into a
// fresh store from open (opened and closed outside the timer), reporting
// ns/entry alongside ns/op.
func BenchmarkCreateMany(b *testing.B, open func(b *testing.B) registry.Store) {
	benchCreate(b, open, BulkSize, func(s registry.Store, es []registry.Entry) error {
		return bulkOf(b, s).CreateMany(b.Context(), es)
	})
}

// BenchmarkCreateEach is the baseline of BenchmarkCreateMany: n entries
// created one Create at a time (n small: the file store rewrites its file
// per Create, so its cost grows with n squared).
func BenchmarkCreateEach(b *testing.B, open func(b *testing.B) registry.Store, n int) {
	benchCreate(b, open, n, func(s registry.Store, es []registry.Entry) error {
		for _, e := range es {
			if err := s.Create(b.Context(), e); err != nil {
				return err
			}
		}
		return nil
	})
}

func benchCreate(b *testing.B, open func(b *testing.B) registry.Store, n int, create func(registry.Store, []registry.Entry) error) {
	es := bulkEntries("bench", n)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := open(b)
		b.StartTimer()
		if err := create(s, es); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		_ = s.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/entry")
}
