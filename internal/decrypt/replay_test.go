package decrypt

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

// TestWindowModel drives the window with random admits, forgets and clock
// steps, against a plain model of the same rules: a FIFO of accepted slots
// (forgotten ones included) bounded by count, entries older than maxAge
// gone.
func TestWindowModel(t *testing.T) {
	type mslot struct {
		key  replayKey
		at   int64
		live bool
	}
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 7))
		max := 1 + rng.IntN(3000)
		maxAge := time.Duration(1+rng.IntN(1000)) * time.Second
		w := newWindow(max, maxAge)
		var fifo []mslot
		now := int64(1e18)
		pool := make([]replayKey, 1+rng.IntN(4000))
		for i := range pool {
			binary.LittleEndian.PutUint64(pool[i][:8], rng.Uint64())
			binary.LittleEndian.PutUint64(pool[i][8:], rng.Uint64())
			if rng.IntN(8) == 0 && i > 0 {
				// Keys sharing a home slot exercise probing and removal.
				copy(pool[i][:8], pool[i-1][:8])
			}
		}
		modelSeen := func(k replayKey) bool {
			for _, s := range fifo {
				if s.live && s.key == k && s.at >= now-int64(maxAge) {
					return true
				}
			}
			return false
		}
		for range 6000 {
			switch op := rng.IntN(10); {
			case op < 7:
				k := pool[rng.IntN(len(pool))]
				dup := rng.IntN(2) == 0
				err := w.admit([]replayKey{k}, dup, now)
				// Model: expire, then check, then push with count eviction.
				for len(fifo) > 0 && fifo[0].at < now-int64(maxAge) {
					fifo = fifo[1:]
				}
				var want error
				if modelSeen(k) {
					want = ErrReplay
					if dup {
						want = ErrDuplicate
					}
				} else {
					if len(fifo) == max {
						fifo = fifo[1:]
					}
					fifo = append(fifo, mslot{key: k, at: now, live: true})
				}
				if !errors.Is(err, want) || (want == nil) != (err == nil) {
					t.Fatalf("seed %d: admit = %v, model %v", seed, err, want)
				}
			case op < 8:
				k := pool[rng.IntN(len(pool))]
				w.forget([]replayKey{k})
				for i := range fifo {
					if fifo[i].key == k {
						fifo[i].live = false
					}
				}
			default:
				now += int64(rng.IntN(int(maxAge/10) + 1))
			}
		}
		live := 0
		for _, s := range fifo {
			if s.live {
				live++
			}
		}
		if got := w.len(); got != live {
			t.Fatalf("seed %d: window holds %d keys, model %d", seed, got, live)
		}
	}
}
