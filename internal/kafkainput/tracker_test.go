package kafkainput

import (
	"math/rand/v2"
	"testing"
)

func TestTracker(t *testing.T) {
	type step struct {
		add    int64 // offset to add (when finish < 0)
		finish int   // index (in add order) to finish, or -1
		want   int64 // commit offset after the step
	}
	cases := []struct {
		name      string
		committed int64
		steps     []step
	}{
		{"in order", 10, []step{{10, -1, 10}, {11, -1, 10}, {0, 0, 11}, {0, 1, 12}}},
		{"out of order waits", 10, []step{{10, -1, 10}, {11, -1, 10}, {12, -1, 10}, {0, 2, 10}, {0, 1, 10}, {0, 0, 13}}},
		{"gaps in offsets (compaction, markers)", 5, []step{{7, -1, 5}, {9, -1, 5}, {0, 1, 5}, {0, 0, 10}}},
		{"no committed offset: first record", -1, []step{{40, -1, 40}, {41, -1, 40}, {0, 1, 40}, {0, 0, 42}}},
		{"repeat finish ignored", 0, []step{{0, -1, 0}, {1, -1, 0}, {0, 0, 1}, {0, 0, 1}, {0, 1, 2}}},
		{"middle done, head not", 0, []step{{0, -1, 0}, {1, -1, 0}, {2, -1, 0}, {0, 1, 0}, {0, 2, 0}, {0, 0, 3}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr := newTracker(c.committed)
			var seqs []uint64
			for i, s := range c.steps {
				if s.finish < 0 {
					seqs = append(seqs, tr.add(s.add, 3))
				} else {
					tr.finish(seqs[s.finish])
				}
				if got, _ := tr.commitOffset(); got != s.want {
					t.Fatalf("step %d: commit offset %d, want %d", i, got, s.want)
				}
			}
		})
	}
	tr := newTracker(0)
	if tr.finish(5) {
		t.Fatal("finish of a seq never handed out advanced")
	}
}

// TestTrackerRandomOrder: whatever order messages finish in, the commit
// offset is always one past the longest done prefix, never past a message
// not done.
func TestTrackerRandomOrder(t *testing.T) {
	for seed := uint64(0); seed < 200; seed++ {
		checkRandomOrder(t, seed, 1+int(seed%300))
	}
}

func checkRandomOrder(t *testing.T, seed uint64, n int) {
	r := rand.New(rand.NewPCG(seed, 1))
	tr := newTracker(100)
	offs := make([]int64, n)
	seqs := make([]uint64, n)
	off := int64(100)
	for i := range n {
		off += 1 + int64(r.IntN(3)) // gaps
		offs[i] = off
		seqs[i] = tr.add(off, 0)
	}
	done := make([]bool, n)
	for _, i := range r.Perm(n) {
		tr.finish(seqs[i])
		done[i] = true
		want := int64(100)
		for j := 0; j < n && done[j]; j++ {
			want = offs[j] + 1
		}
		if got, _ := tr.commitOffset(); got != want {
			t.Fatalf("seed %d: commit offset %d, want %d", seed, got, want)
		}
	}
	if tr.outstanding() != 0 {
		t.Fatalf("seed %d: %d outstanding after all finished", seed, tr.outstanding())
	}
}

func FuzzTracker(f *testing.F) {
	f.Add(uint64(1), uint16(50))
	f.Fuzz(func(t *testing.T, seed uint64, n uint16) {
		checkRandomOrder(t, seed, 1+int(n%2000))
	})
}
