package audit

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Concurrent appends are committed in groups; each caller gets its own
// event back as it is in the log, and the chain verifies.
func TestGroupCommitConcurrentAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openT(t, path)
	const goroutines, each = 32, 8
	got := make(chan Event, goroutines*(each+1))
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				if i == each/2 {
					evs, err := w.AppendMany(context.Background(), []Event{event(g*1000 + i), event(g*1000 + i + 500)})
					if err != nil {
						t.Error(err)
						return
					}
					if evs[1].Seq != evs[0].Seq+1 || evs[1].Prev != evs[0].Hash {
						t.Errorf("AppendMany's events not consecutive: %+v", evs)
					}
					for _, e := range evs {
						got <- e
					}
					continue
				}
				e, err := w.Append(context.Background(), event(g*1000+i))
				if err != nil {
					t.Error(err)
					return
				}
				got <- e
			}
		})
	}
	wg.Wait()
	close(got)
	const total = goroutines * (each + 1)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := Verify(bytes.NewReader(data)); err != nil || n != total {
		t.Fatalf("Verify = %d, %v; want %d lines", n, err, total)
	}
	lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	seen := map[uint64]bool{}
	for e := range got {
		if e.Seq == 0 || e.Seq > total || seen[e.Seq] {
			t.Fatalf("seq %d returned twice or out of range", e.Seq)
		}
		seen[e.Seq] = true
		inLog, err := parseLine(lines[e.Seq-1])
		if err != nil {
			t.Fatal(err)
		}
		if inLog.Hash != e.Hash || inLog.KeyVersion != e.KeyVersion || inLog.Prev != e.Prev {
			t.Fatalf("returned %+v, line %d is %+v", e, e.Seq, inLog)
		}
	}
	if len(seen) != total {
		t.Fatalf("%d events returned, want %d", len(seen), total)
	}
	if h := w.Head(); h.Seq != total {
		t.Fatalf("head %+v, want seq %d", h, total)
	}
}

// The leader takes the file lock under its own context: when that context
// ends while another process holds the lock, only the leader's append
// fails; the others wait for the next leader and are written.
func TestGroupCommitLeaderContextFailsOnlyItself(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openT(t, path)
	other, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	shortErr := make(chan error, 1)
	go func() {
		_, err := w.Append(short, event(1))
		shortErr <- err
	}()
	const n = 5
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := w.Append(context.Background(), event(10+i))
			errs <- err
		}()
	}
	<-short.Done()
	time.Sleep(20 * time.Millisecond) // a leader with the short context has given up by now, if it led
	_ = syscall.Flock(int(other.Fd()), syscall.LOCK_UN)
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("append under a live context: %v", err)
		}
	}
	want := n
	switch err := <-shortErr; {
	case err == nil:
		want++ // it was in a group led by another caller
	case !errors.Is(err, context.DeadlineExceeded):
		t.Fatalf("append under the ended context: %v", err)
	}
	data, _ := os.ReadFile(path)
	if got, err := Verify(bytes.NewReader(data)); err != nil || got != want {
		t.Fatalf("Verify = %d, %v; want %d", got, err, want)
	}
}

// BenchmarkAppend16: 16 concurrent appenders (the key cache's default
// unwrap cap) against one file, each Append returning after its fsync;
// compare ns/op with BenchmarkAppend (one at a time) in the same run.
func BenchmarkAppend16(b *testing.B) {
	w := openT(b, filepath.Join(b.TempDir(), "audit.jsonl"))
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := w.Append(context.Background(), event(1)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
