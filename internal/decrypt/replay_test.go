package decrypt

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

// TestWindowModel drives the window with random admits, forgets and clock
// steps, against a plain model of the same rules: every accepted key in
// order, the i-th in generation i/genCap; a key is seen while its
// generation is one of the windowGens newest, it is not forgotten and not
// older than maxAge; seen with the same digest is a duplicate, with another
// a replay. It also checks the bound the window promises: at least the
// last max accepted keys are held.
func TestWindowModel(t *testing.T) {
	type mslot struct {
		key    replayKey
		digest msgDigest
		at     int64
		live   bool
	}
	for seed := range uint64(30) {
		rng := rand.New(rand.NewPCG(seed, 7))
		max := 1 + rng.IntN(3000)
		if seed%5 == 0 {
			max = 1 + rng.IntN(40) // tiny windows: many generations turn over
		}
		maxAge := time.Duration(1+rng.IntN(1000)) * time.Second
		w := newWindow(max, maxAge)
		var hist []mslot
		now := int64(1e18)
		pool := make([]replayKey, 1+rng.IntN(4000))
		for i := range pool {
			binary.LittleEndian.PutUint64(pool[i][:8], rng.Uint64())
			binary.LittleEndian.PutUint64(pool[i][8:], rng.Uint64())
			if rng.IntN(8) == 0 && i > 0 {
				// Keys sharing a home line and fingerprint exercise
				// probing, overflow marks and the exact check.
				copy(pool[i][:8], pool[i-1][:8])
			}
		}
		digests := []msgDigest{{1}, {2}}
		modelFind := func(k replayKey) *mslot {
			if len(hist) == 0 {
				return nil
			}
			last := (len(hist) - 1) / w.genCap
			for p := len(hist) - 1; p >= 0; p-- {
				s := &hist[p]
				if p/w.genCap < last-(windowGens-1) {
					break
				}
				if s.live && s.key == k && s.at >= now-int64(maxAge) {
					return s
				}
			}
			return nil
		}
		for range 8000 {
			switch op := rng.IntN(10); {
			case op < 7:
				k := pool[rng.IntN(len(pool))]
				d := digests[rng.IntN(len(digests))]
				err := w.admit([]replayKey{k}, &d, now)
				var want error
				if s := modelFind(k); s != nil {
					want = ErrReplay
					if s.digest == d {
						want = ErrDuplicate
					}
				} else {
					hist = append(hist, mslot{key: k, digest: d, at: now, live: true})
				}
				if !errors.Is(err, want) || (want == nil) != (err == nil) {
					t.Fatalf("seed %d: admit = %v, model %v", seed, err, want)
				}
			case op < 8:
				k := pool[rng.IntN(len(pool))]
				w.forget([]replayKey{k})
				for i := range hist {
					if hist[i].key == k {
						hist[i].live = false
					}
				}
			default:
				now += int64(rng.IntN(int(maxAge/10) + 1))
			}
		}
		live := 0
		if len(hist) > 0 {
			last := (len(hist) - 1) / w.genCap
			held := 0
			for p, s := range hist {
				if p/w.genCap >= last-(windowGens-1) {
					held++
					if s.live {
						live++
					}
				}
			}
			if held < min(len(hist), max) {
				t.Fatalf("seed %d: %d keys held, fewer than the bound %d", seed, held, max)
			}
		}
		if got := w.len(); got != live {
			t.Fatalf("seed %d: window holds %d keys, model %d", seed, got, live)
		}
	}
}

// TestWindowRepeatAndReplay: one message's keys against the window: an
// exact repeat of all or of the keys still held is a duplicate; a key of
// the message under another digest, or one key twice, a replay.
func TestWindowRepeatAndReplay(t *testing.T) {
	w := newWindow(100, time.Hour)
	a, b, c := replayKey{1}, replayKey{2}, replayKey{3}
	d1, d2 := msgDigest{1}, msgDigest{2}
	for _, tc := range []struct {
		name string
		keys []replayKey
		d    msgDigest
		want error
	}{
		{"first", []replayKey{a, b}, d1, nil},
		{"exact repeat", []replayKey{a, b}, d1, ErrDuplicate},
		{"other message reusing a nonce", []replayKey{c, b}, d2, ErrReplay},
		{"same nonce twice in one message", []replayKey{c, c}, d2, ErrReplay},
		{"new", []replayKey{c}, d2, nil},
	} {
		if err := w.admit(tc.keys, &tc.d, 1); !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
			t.Fatalf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestWindowFootprint: at its production bound the window stays compact:
// one 64-byte table line per 15 slots kept at most 60% full, and 40-byte
// entries, well under what a map of the same entries takes.
func TestWindowFootprint(t *testing.T) {
	w := newWindow(DefaultReplayEntries, time.Hour)
	var k replayKey
	var d msgDigest
	for i := range 2 * DefaultReplayEntries {
		binary.LittleEndian.PutUint64(k[:8], uint64(i)*0x9e3779b97f4a7c15)
		binary.LittleEndian.PutUint64(k[8:], uint64(i))
		if err := w.admit([]replayKey{k}, &d, 1); err != nil {
			t.Fatal(err)
		}
	}
	held := w.len()
	if held < DefaultReplayEntries || held > DefaultReplayEntries*windowGens/(windowGens-1)+1 {
		t.Fatalf("holds %d entries", held)
	}
	if b := w.bytes(); b > 56*held {
		t.Fatalf("%d bytes for %d entries (%.1f per entry)", b, held, float64(b)/float64(held))
	} else {
		t.Logf("%d entries in %d bytes (%.1f per entry)", held, b, float64(b)/float64(held))
	}
}
