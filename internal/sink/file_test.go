package sink_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/sink/sinktest"
)

// splitLines returns the non-empty lines of b.
func splitLines(b []byte) [][]byte {
	var out [][]byte
	for _, l := range bytes.Split(b, []byte{'\n'}) {
		if len(l) > 0 {
			out = append(out, l)
		}
	}
	return out
}

// readRotated reads path.<keep> … path.1 then path: every record the sink
// still holds, oldest first.
func readRotated(t *testing.T, path string, keep int) [][]byte {
	t.Helper()
	var all []byte
	for i := keep; i >= 0; i-- {
		p := path
		if i > 0 {
			p += "." + strconv.Itoa(i)
		}
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return splitLines(all)
}

func TestFileContract(t *testing.T) {
	variants := []struct {
		name string
		opts sink.FileOptions
	}{
		{"fsync_batch", sink.FileOptions{}},
		{"fsync_interval", sink.FileOptions{Fsync: sink.FsyncInterval, FsyncInterval: 5 * time.Millisecond}},
		{"fsync_never", sink.FileOptions{Fsync: sink.FsyncNever}},
		// Small files and many kept: the suite's records cross rotations.
		{"rotating", sink.FileOptions{MaxBytes: 4096, Keep: 100}},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			sinktest.Run(t, func(t *testing.T) sinktest.Subject {
				opts := v.opts
				opts.Name = "file"
				opts.Path = filepath.Join(t.TempDir(), "out", "records.jsonl")
				s, err := sink.NewFile(opts)
				if err != nil {
					t.Fatal(err)
				}
				keep := max(opts.Keep, 5)
				return sinktest.Subject{
					Sink: s,
					Read: func(t *testing.T) [][]byte { return readRotated(t, opts.Path, keep) },
				}
			})
		})
	}
}

func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	path := filepath.Join(dir, "r.jsonl")
	s, err := sink.NewFile(sink.FileOptions{Name: "f", Path: path, MaxBytes: 600, Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	for i := range 5 {
		if err := s.Write(t.Context(), sinktest.Records(fmt.Sprint("m", i), 2)); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{path, path + ".1", path + ".2"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if m := st.Mode().Perm(); m != 0o600 {
			t.Errorf("%s: mode %v, want 0600", filepath.Base(p), m)
		}
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m := st.Mode().Perm(); m != 0o700 {
		t.Errorf("created directory: mode %v, want 0700", m)
	}
}

func TestFileRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.jsonl")
	const maxBytes = 1000
	s, err := sink.NewFile(sink.FileOptions{Name: "f", Path: path, MaxBytes: maxBytes, Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	var batches [][]sink.Record
	for i := range 12 {
		b := sinktest.Records(fmt.Sprint("rot", i), 1+i%3)
		batches = append(batches, b)
		if err := s.Write(t.Context(), b); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".3"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("path.3 exists with Keep 2 (err %v)", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 3 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("directory holds %v, want r.jsonl, r.jsonl.1, r.jsonl.2", names)
	}
	// Each file is whole batches and within MaxBytes (no batch here is
	// larger on its own), and together they end with the last batches.
	var held [][]byte
	for _, p := range []string{path + ".2", path + ".1", path} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > maxBytes || len(b) == 0 {
			t.Errorf("%s: %d bytes, want 1..%d", filepath.Base(p), len(b), maxBytes)
		}
		held = append(held, splitLines(b)...)
	}
	var all []sink.Record
	for _, b := range batches {
		all = append(all, b...)
	}
	tail := all[len(all)-len(held):]
	for i, r := range tail {
		if !bytes.Equal(held[i], r.JSON) {
			t.Fatalf("held record %d is not the %d-th newest written", i, len(held)-i)
		}
	}
}

func TestFileOversizedBatchStillWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.jsonl")
	s, err := sink.NewFile(sink.FileOptions{Name: "f", Path: path, MaxBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	big := sinktest.Records("big", 3)
	for range 2 {
		if err := s.Write(t.Context(), big); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{path, path + ".1"} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := len(splitLines(b)); got != 3 {
			t.Errorf("%s: %d records, want the 3 of one batch", filepath.Base(p), got)
		}
	}
}

func TestFileRepairsTornLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.jsonl")
	if err := os.WriteFile(path, []byte("{\"id\":\"ok\"}\n{\"id\":\"tor"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := sink.NewFile(sink.FileOptions{Name: "f", Path: path})
	if err != nil {
		t.Fatal(err)
	}
	rec := sinktest.Records("after", 1)
	if err := s.Write(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	lines := splitLines(b)
	if len(lines) != 3 || string(lines[1]) != `{"id":"tor` || !bytes.Equal(lines[2], rec[0].JSON) {
		t.Fatalf("file after torn line: %q", b)
	}
}

func TestFileFinishesInterruptedRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.jsonl")
	old := []byte("{\"id\":\"old\"}\n")
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	// A crash between the hard link and the rename over Path.
	if err := os.Link(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	s, err := sink.NewFile(sink.FileOptions{Name: "f", Path: path, MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Write(t.Context(), sinktest.Records("new", 1)); err != nil {
		t.Fatal(err)
	}
	s.Close(context.Background())
	if b, _ := os.ReadFile(path + ".1"); !bytes.Equal(b, old) {
		t.Fatalf("path.1 changed: %q", b)
	}
	if b, _ := os.ReadFile(path); bytes.Contains(b, []byte(`"old"`)) {
		t.Fatalf("path still holds the rotated data: %q", b)
	}
}

func TestFileOptionsValidation(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		opts sink.FileOptions
		want string // substring naming the field
	}{
		{"no name", sink.FileOptions{Path: filepath.Join(dir, "x")}, "name"},
		{"no path", sink.FileOptions{Name: "f"}, "path"},
		{"bad policy", sink.FileOptions{Name: "f", Path: filepath.Join(dir, "x"), Fsync: 7}, "fsync"},
		{"negative interval", sink.FileOptions{Name: "f", Path: filepath.Join(dir, "x"), FsyncInterval: -1}, "fsync_interval"},
		{"negative max", sink.FileOptions{Name: "f", Path: filepath.Join(dir, "x"), MaxBytes: -1}, "max_bytes"},
		{"negative keep", sink.FileOptions{Name: "f", Path: filepath.Join(dir, "x"), Keep: -1}, "keep"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := sink.NewFile(tc.opts)
			if err == nil {
				s.Close(context.Background())
				t.Fatal("NewFile accepted invalid options")
			}
			if !strings.Contains(err.Error(), tc.want+":") {
				t.Fatalf("error %q does not name %s", err, tc.want)
			}
		})
	}
}

func TestParseFsyncPolicy(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want sink.FsyncPolicy
		ok   bool
	}{
		{"", sink.FsyncBatch, true},
		{"batch", sink.FsyncBatch, true},
		{"interval", sink.FsyncInterval, true},
		{"never", sink.FsyncNever, true},
		{"always", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := sink.ParseFsyncPolicy(tc.in)
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("ParseFsyncPolicy(%q) = %v, %v", tc.in, got, err)
			}
			if tc.ok && tc.in != "" && got.String() != tc.in {
				t.Fatalf("String() = %q, want %q", got.String(), tc.in)
			}
		})
	}
}

func BenchmarkFileWrite(b *testing.B) {
	for _, p := range []sink.FsyncPolicy{sink.FsyncBatch, sink.FsyncNever} {
		b.Run(p.String(), func(b *testing.B) {
			s, err := sink.NewFile(sink.FileOptions{Name: "f", Path: filepath.Join(b.TempDir(), "r"), Fsync: p})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close(context.Background())
			batch := sinktest.Records("bench", 100)
			b.ReportAllocs()
			for b.Loop() {
				if err := s.Write(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// WriteUnsynced and Sync (sink.GroupWriter): batches written unsynced,
// across rotations, are in the files in order once Sync returned; a bad
// record fails its batch before anything of it is written; a closed sink
// refuses both.
func TestFileGroupWriter(t *testing.T) {
	for _, v := range []struct {
		name string
		opts sink.FileOptions
	}{
		{"fsync_batch", sink.FileOptions{}},
		{"fsync_batch_rotating", sink.FileOptions{MaxBytes: 200, Keep: 100}},
		{"fsync_never", sink.FileOptions{Fsync: sink.FsyncNever}},
	} {
		t.Run(v.name, func(t *testing.T) {
			ctx := context.Background()
			o := v.opts
			o.Name, o.Path = "f", filepath.Join(t.TempDir(), "out.jsonl")
			s, err := sink.NewFile(o)
			if err != nil {
				t.Fatal(err)
			}
			var gw sink.GroupWriter = s
			var want []string
			for b := range 5 {
				var batch []sink.Record
				for i := range 3 {
					j := fmt.Sprintf(`{"id":"b%d-%d"}`, b, i)
					want = append(want, j)
					batch = append(batch, sink.Record{ID: fmt.Sprintf("b%d-%d", b, i), JSON: []byte(j)})
				}
				if err := gw.WriteUnsynced(ctx, batch); err != nil {
					t.Fatal(err)
				}
			}
			bad := []sink.Record{{ID: "ok", JSON: []byte(`{"id":"ok"}`)}, {ID: "bad", JSON: []byte("{\n}")}}
			if err := gw.WriteUnsynced(ctx, bad); !errors.Is(err, sink.ErrBadRecord) {
				t.Fatalf("WriteUnsynced of a record spanning lines: %v, want ErrBadRecord", err)
			}
			if err := gw.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range readRotated(t, o.Path, 100) {
				got = append(got, string(l))
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("files hold\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if err := s.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if err := gw.WriteUnsynced(ctx, bad[:1]); !errors.Is(err, sink.ErrClosed) {
				t.Errorf("WriteUnsynced after Close: %v, want ErrClosed", err)
			}
			if err := gw.Sync(ctx); !errors.Is(err, sink.ErrClosed) {
				t.Errorf("Sync after Close: %v, want ErrClosed", err)
			}
		})
	}
}

// linesOK, the file sink's check of a batch's lines as one buffer, agrees
// with CheckBatch.
func TestLinesOKAsCheckBatch(t *testing.T) {
	rec := func(j string) sink.Record { return sink.Record{ID: j, JSON: []byte(j)} }
	for _, batch := range [][]sink.Record{
		nil,
		{rec(`{"a":1}`)},
		{rec(`{"a":1}`), rec(`{"b":2}`)},
		{rec(`{"a":1}`), rec("")},
		{rec("{\n}")},
		{rec(`{"a":1}`), rec("{\"b\":\r2}")},
		{rec("{}\n"), rec("{}")},
		{rec("\n")},
	} {
		want := sink.CheckBatch(batch) == nil
		if got := sink.LinesOK(sink.AppendLines(nil, batch), batch); got != want {
			t.Errorf("batch %q: linesOK %v, CheckBatch passes: %v", batch, got, want)
		}
	}
}

func FuzzLinesOK(f *testing.F) {
	f.Add(`{"a":1}`, `{"b":2}`)
	f.Add("{\n}", "")
	f.Add("\r", "{}")
	f.Fuzz(func(t *testing.T, a, b string) {
		batch := []sink.Record{{ID: "a", JSON: []byte(a)}, {ID: "b", JSON: []byte(b)}}
		want := sink.CheckBatch(batch) == nil
		if got := sink.LinesOK(sink.AppendLines(nil, batch), batch); got != want {
			t.Errorf("%q, %q: linesOK %v, CheckBatch passes: %v", a, b, got, want)
		}
	})
}
