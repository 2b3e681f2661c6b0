package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"

	"github.com/decryptd/decryptd/internal/fileperm"
)

func openT(t testing.TB, path string, opts ...Option) *Writer {
	t.Helper()
	w, err := Open(context.Background(), path, opts...)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

func event(i int) Event {
	return Event{
		Action: ActionUnwrap, KeyID: "device/sensor-001", KeyVersion: fmt.Sprintf("v%d", i),
		RootKeyID: "root-1", RootKeyVersion: "rv1", Result: ResultOK, DurationMS: 1.25,
	}
}

// writeLog writes n events and returns the file's bytes.
func writeLog(t *testing.T, n int) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openT(t, path)
	for i := range n {
		if _, err := w.Append(t.Context(), event(i)); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestAppendAndVerify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clock := time.Date(2025, 6, 1, 12, 0, 0, 123456789, time.FixedZone("CEST", 7200))
	w := openT(t, path, WithActor("dekctl"), WithClock(func() time.Time { return clock }))
	first, err := w.Append(t.Context(), Event{Action: ActionShred, KeyID: "device/s1", KeyVersion: "v1", Result: ResultOK, Detail: "operator request\nsecond line"})
	if err != nil {
		t.Fatal(err)
	}
	if first.Seq != 1 || first.Prev != zeroHash || first.Actor != "dekctl" || first.Time.Location() != time.UTC || !first.Time.Equal(clock) {
		t.Fatalf("first event: %+v", first)
	}
	second, err := w.Append(t.Context(), Event{Actor: "decryptd", Action: ActionUnwrap, Result: ResultOf(dek.ErrRevoked)})
	if err != nil {
		t.Fatal(err)
	}
	if second.Seq != 2 || second.Prev != first.Hash || second.Result != ResultRevoked {
		t.Fatalf("second event: %+v", second)
	}
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2 (a newline in detail must be escaped)", len(lines))
	}
	if !strings.Contains(lines[0], `"time":"2025-06-01T10:00:00.123456789Z"`) {
		t.Fatalf("time not RFC 3339 nanoseconds UTC: %s", lines[0])
	}
	if n, err := Verify(bytes.NewReader(data)); err != nil || n != 2 {
		t.Fatalf("Verify = %d, %v", n, err)
	}
	if w.Head() != (Anchor{Seq: 2, Hash: second.Hash}) {
		t.Fatalf("Head = %+v", w.Head())
	}
	// A new Writer continues the chain.
	w.Close()
	w2 := openT(t, path)
	third, err := w2.Append(t.Context(), event(3))
	if err != nil || third.Seq != 3 || third.Prev != second.Hash {
		t.Fatalf("after reopen: %+v, %v", third, err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestInvalidEvents(t *testing.T) {
	w := openT(t, filepath.Join(t.TempDir(), "audit.jsonl"))
	for name, e := range map[string]Event{
		"no action":    {Result: ResultOK},
		"no result":    {Action: ActionWrap},
		"bad action":   {Action: "Unwrap Key", Result: ResultOK},
		"long result":  {Action: ActionWrap, Result: strings.Repeat("x", 33)},
		"actor spaces": {Actor: "de cryptd", Action: ActionWrap, Result: ResultOK},
	} {
		if _, err := w.Append(t.Context(), e); !errors.Is(err, ErrInvalidEvent) {
			t.Errorf("%s: %v, want ErrInvalidEvent", name, err)
		}
	}
	// Oversized free fields are clipped, keeping lines bounded.
	e, err := w.Append(t.Context(), Event{Action: ActionUnwrap, Result: ResultOK, KeyID: strings.Repeat("k", 10000), Detail: strings.Repeat("é", 5000)})
	if err != nil {
		t.Fatal(err)
	}
	if len(e.KeyID) != maxNameLen || len(e.Detail) > maxDetailLen || !strings.HasPrefix(e.Detail, "é") {
		t.Fatalf("not clipped: key id %d, detail %d bytes", len(e.KeyID), len(e.Detail))
	}
}

func TestResultOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ResultOK},
		{fmt.Errorf("x: %w", kms.ErrTransient), ResultTransient},
		{dek.ErrUnavailable, ResultTransient},
		{context.DeadlineExceeded, ResultTransient},
		{kms.ErrRootRevoked, ResultRevoked},
		{dek.ErrRevoked, ResultRevoked},
		{registry.ErrNotFound, ResultUnknownKey},
		{dek.ErrUnknownKey, ResultUnknownKey},
		{registry.ErrShredded, ResultShredded},
		{context.Canceled, ResultCanceled},
		{errors.New("bad ciphertext"), ResultError},
	} {
		if got := ResultOf(tc.err); got != tc.want {
			t.Errorf("ResultOf(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// Tamper table: each change is reported at the line where the chain first
// stops holding.
func TestVerifyDetectsTampering(t *testing.T) {
	orig := writeLog(t, 6)
	lines := func() [][]byte { return bytes.SplitAfter(bytes.Clone(orig), []byte("\n"))[:6] }
	join := func(ls [][]byte) []byte { return bytes.Join(ls, nil) }
	rehash := func(line []byte) []byte {
		e, err := parseLine(bytes.TrimSuffix(line, []byte("\n")))
		if err != nil {
			panic(err)
		}
		e.Result = ResultError // the attacker's edit
		out, _, _ := encodeLine(nil, &e)
		return append(out, '\n')
	}
	for _, tc := range []struct {
		name   string
		tamper func() []byte
		line   int
	}{
		{"one field changed in line 3", func() []byte {
			ls := lines()
			ls[2] = bytes.Replace(ls[2], []byte(`"result":"ok"`), []byte(`"result":"no"`), 1)
			return join(ls)
		}, 3},
		{"first line changed", func() []byte {
			ls := lines()
			ls[0] = bytes.Replace(ls[0], []byte(`"v0"`), []byte(`"v9"`), 1)
			return join(ls)
		}, 1},
		{"last line changed", func() []byte {
			ls := lines()
			ls[5] = bytes.Replace(ls[5], []byte(`1.25`), []byte(`9.25`), 1)
			return join(ls)
		}, 6},
		{"line 4 changed and its hash recomputed", func() []byte {
			ls := lines()
			ls[3] = rehash(ls[3])
			return join(ls)
		}, 5},
		{"line 2 removed", func() []byte {
			ls := lines()
			return join(append(ls[:1], ls[2:]...))
		}, 2},
		{"lines 3 and 4 swapped", func() []byte {
			ls := lines()
			ls[2], ls[3] = ls[3], ls[2]
			return join(ls)
		}, 3},
		{"line inserted", func() []byte {
			ls := lines()
			return join(append(ls[:2], append([][]byte{ls[1]}, ls[2:]...)...))
		}, 3},
		{"last line torn", func() []byte { return orig[:len(orig)-10] }, 6},
		{"hash member moved", func() []byte {
			ls := lines()
			ls[1] = bytes.Replace(ls[1], []byte(`{"seq":2,`), []byte(`{ "seq":2,`), 1)
			return join(ls)
		}, 2},
		{"garbage line", func() []byte {
			ls := lines()
			ls[4] = []byte("hello\n")
			return join(ls)
		}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := Verify(bytes.NewReader(tc.tamper()))
			var ce *ChainError
			if !errors.Is(err, ErrChainBroken) || !errors.As(err, &ce) {
				t.Fatalf("Verify = %d, %v; want ErrChainBroken", n, err)
			}
			if ce.Line != tc.line || n != tc.line-1 {
				t.Fatalf("broken at line %d (n=%d), want %d: %v", ce.Line, n, tc.line, err)
			}
		})
	}
	t.Run("untouched", func(t *testing.T) {
		if n, err := Verify(bytes.NewReader(orig)); err != nil || n != 6 {
			t.Fatalf("Verify = %d, %v", n, err)
		}
	})
	t.Run("empty log", func(t *testing.T) {
		if n, err := Verify(bytes.NewReader(nil)); err != nil || n != 0 {
			t.Fatalf("Verify = %d, %v", n, err)
		}
	})
}

// A whole line cut from the end leaves a valid chain; only an anchor kept
// elsewhere reveals it.
func TestTruncationNeedsAnAnchor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openT(t, path)
	for i := range 5 {
		if _, err := w.Append(t.Context(), event(i)); err != nil {
			t.Fatal(err)
		}
	}
	anchor := w.Head()
	data, _ := os.ReadFile(path)
	cut := data[:bytes.LastIndexByte(data[:len(data)-1], '\n')+1]

	if n, err := Verify(bytes.NewReader(cut)); err != nil || n != 4 {
		t.Fatalf("a chain alone cannot see the cut: Verify = %d, %v", n, err)
	}
	if _, err := VerifyAnchor(bytes.NewReader(cut), anchor); !errors.Is(err, ErrTruncated) {
		t.Fatalf("VerifyAnchor on a truncated log: %v, want ErrTruncated", err)
	}
	if n, err := VerifyAnchor(bytes.NewReader(data), anchor); err != nil || n != 5 {
		t.Fatalf("VerifyAnchor on the whole log: %d, %v", n, err)
	}
	// An older anchor still holds as the log grows.
	if _, err := w.Append(t.Context(), event(9)); err != nil {
		t.Fatal(err)
	}
	data, _ = os.ReadFile(path)
	if _, err := VerifyAnchor(bytes.NewReader(data), anchor); err != nil {
		t.Fatalf("older anchor: %v", err)
	}
	// A log rebuilt from scratch to the same length fails the anchor.
	other := writeLog(t, 5)
	if _, err := VerifyAnchor(bytes.NewReader(other), anchor); !errors.Is(err, ErrTruncated) {
		t.Fatalf("rewritten log: %v, want ErrTruncated", err)
	}
}

// Two Writers on one file stand for the daemon and dekctl: every event of
// both lands on the chain, in one sequence.
func TestTwoWritersOneFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	a := openT(t, path, WithActor("decryptd"))
	b := openT(t, path, WithActor("dekctl"))
	const perWriter = 40
	var wg sync.WaitGroup
	for _, w := range []*Writer{a, b} {
		for g := range 4 {
			wg.Go(func() {
				for i := range perWriter / 4 {
					if _, err := w.Append(context.Background(), event(g*100+i)); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	data, _ := os.ReadFile(path)
	if n, err := Verify(bytes.NewReader(data)); err != nil || n != 2*perWriter {
		t.Fatalf("Verify = %d, %v; want %d lines", n, err, 2*perWriter)
	}
	if a.Head().Seq+b.Head().Seq == 0 || max(a.Head().Seq, b.Head().Seq) != 2*perWriter {
		t.Fatalf("heads %+v %+v", a.Head(), b.Head())
	}
}

// A crash mid-append leaves a line without its newline; it was never
// acknowledged, so the next writer cuts it and the chain goes on whole.
func TestTornLastLineIsCut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openT(t, path)
	for i := range 3 {
		if _, err := w.Append(t.Context(), event(i)); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	good, _ := os.ReadFile(path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"seq":4,"time":"2025-`)
	f.Close()

	w2 := openT(t, path)
	e, err := w2.Append(t.Context(), event(4))
	if err != nil {
		t.Fatal(err)
	}
	if e.Seq != 4 {
		t.Fatalf("seq %d after a torn line, want 4", e.Seq)
	}
	data, _ := os.ReadFile(path)
	if !bytes.HasPrefix(data, good) {
		t.Fatal("whole lines before the torn one changed")
	}
	if n, err := Verify(bytes.NewReader(data)); err != nil || n != 4 {
		t.Fatalf("Verify = %d, %v", n, err)
	}
}

// A log whose last line was altered is not appended to: that would bury the
// damage under valid lines.
func TestRefusesToExtendABrokenTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	data := writeLog(t, 3)
	data = bytes.Replace(data, []byte(`"v2"`), []byte(`"v7"`), 1)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(t.Context(), path); err == nil {
		t.Fatal("opened a log whose last line does not verify")
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(t.Context(), path); !errors.Is(err, fileperm.ErrExposed) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-writable log: %v", err)
	}
	// Readable by its group only is refused too (package fileperm says why).
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(t.Context(), path); !errors.Is(err, fileperm.ErrExposed) {
		t.Fatalf("group-readable log: %v", err)
	}
}

func FuzzVerify(f *testing.F) {
	f.Add(writeLogF(f, 3))
	f.Add([]byte("{}\n"))
	f.Add([]byte(""))
	f.Add([]byte("\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := Verify(bytes.NewReader(data))
		if err == nil && n != bytes.Count(data, []byte("\n")) {
			t.Fatalf("Verify ok with n=%d for %d lines", n, bytes.Count(data, []byte("\n")))
		}
		var ce *ChainError
		if err != nil && (!errors.As(err, &ce) || ce.Line != n+1) {
			t.Fatalf("error %v not a ChainError at line n+1=%d", err, n+1)
		}
	})
}

func FuzzParseLine(f *testing.F) {
	for _, l := range bytes.Split(bytes.TrimSpace(writeLogF(f, 2)), []byte("\n")) {
		f.Add(l)
	}
	f.Add([]byte(`{"seq":1}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		e, err := parseLine(line)
		if err != nil {
			return
		}
		// Whatever parses must re-encode to a line that parses to the same event.
		out, h, err := encodeLine(nil, &e)
		if err != nil {
			t.Fatal(err)
		}
		e2, err := parseLine(out)
		if err != nil || e2.Hash != h || e2.Seq != e.Seq || e2.Prev != e.Prev || e2.Detail != e.Detail || !e2.Time.Equal(e.Time) {
			t.Fatalf("round trip: %+v, %v", e2, err)
		}
	})
}

func writeLogF(f *testing.F, n int) []byte {
	path := filepath.Join(f.TempDir(), "audit.jsonl")
	w, err := Open(context.Background(), path)
	if err != nil {
		f.Fatal(err)
	}
	defer w.Close()
	for i := range n {
		if _, err := w.Append(context.Background(), event(i)); err != nil {
			f.Fatal(err)
		}
	}
	data, _ := os.ReadFile(path)
	return data
}

func BenchmarkAppend(b *testing.B) {
	w := openT(b, filepath.Join(b.TempDir(), "audit.jsonl"))
	e := event(1)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.Append(ctx, e); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendParallel(b *testing.B) {
	w := openT(b, filepath.Join(b.TempDir(), "audit.jsonl"))
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		e := event(1)
		for pb.Next() {
			if _, err := w.Append(ctx, e); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	path := filepath.Join(b.TempDir(), "audit.jsonl")
	w := openT(b, path)
	for i := range 1000 {
		if _, err := w.Append(context.Background(), event(i)); err != nil {
			b.Fatal(err)
		}
	}
	data, _ := os.ReadFile(path)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Verify(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}
