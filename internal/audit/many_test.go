package audit

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// AppendMany continues the chain where Append left it (and Append continues
// after it), across Writers, and the whole log verifies.
func TestAppendMany(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	a := openT(t, path, WithActor("dekctl"))
	b := openT(t, path, WithActor("telemsim"))
	if _, err := a.Append(t.Context(), event(0)); err != nil {
		t.Fatal(err)
	}
	batch := make([]Event, 1000)
	for i := range batch {
		batch[i] = event(i + 1)
	}
	batch[3].Actor = "decryptd"
	got, err := b.AppendMany(t.Context(), batch)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(batch) {
		t.Fatalf("%d events returned, want %d", len(got), len(batch))
	}
	for i, e := range got {
		if e.Seq != uint64(i+2) || e.Hash == "" || (i > 0 && e.Prev != got[i-1].Hash) {
			t.Fatalf("event %d: seq %d, prev %s, hash %s", i, e.Seq, e.Prev, e.Hash)
		}
		if want := "telemsim"; i != 3 && e.Actor != want {
			t.Fatalf("event %d: actor %q, want %q", i, e.Actor, want)
		}
	}
	if got[3].Actor != "decryptd" || batch[0].Seq != 0 {
		t.Fatal("AppendMany overrode an actor or changed its argument")
	}
	if b.Head() != (Anchor{Seq: 1001, Hash: got[999].Hash}) {
		t.Fatalf("Head %+v", b.Head())
	}
	// The other Writer notices the batch and goes on after it.
	next, err := a.Append(t.Context(), event(2000))
	if err != nil || next.Seq != 1002 || next.Prev != got[999].Hash {
		t.Fatalf("append after the batch: %+v, %v", next, err)
	}
	if _, err := a.AppendMany(t.Context(), nil); err != nil {
		t.Fatalf("empty batch: %v", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := Verify(bytes.NewReader(data)); err != nil || n != 1002 {
		t.Fatalf("Verify = %d, %v; want 1002", n, err)
	}
	if _, err := VerifyAnchor(bytes.NewReader(data), Anchor{Seq: 1001, Hash: got[999].Hash}); err != nil {
		t.Fatalf("VerifyAnchor: %v", err)
	}
}

// One invalid event fails the whole batch before anything is written.
func TestAppendManyAllOrNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openT(t, path)
	batch := []Event{event(1), event(2), {Action: "Bad Action", Result: ResultOK}, event(4)}
	if _, err := w.AppendMany(t.Context(), batch); !errors.Is(err, ErrInvalidEvent) {
		t.Fatalf("AppendMany: %v, want ErrInvalidEvent", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != 0 {
		t.Fatalf("a rejected batch wrote %d bytes (%v)", fi.Size(), err)
	}
	if w.Head().Seq != 0 {
		t.Fatalf("Head moved: %+v", w.Head())
	}
	w.Close()
	if _, err := w.AppendMany(t.Context(), []Event{event(1)}); err == nil {
		t.Fatal("AppendMany on a closed Writer")
	}
}

// BenchmarkAppendMany1000: 1,000 events in one call (one fsync); compare
// its ns/event with BenchmarkAppend's ns/op (one fsync per event).
func BenchmarkAppendMany1000(b *testing.B) {
	w := openT(b, filepath.Join(b.TempDir(), "audit.jsonl"))
	batch := make([]Event, 1000)
	for i := range batch {
		batch[i] = event(i)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.AppendMany(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/event")
}
