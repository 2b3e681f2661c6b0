package decrypt

import (
	"sync"
	"time"
)

// replayKey is the first 16 bytes of SHA-256(key_id 0x00 key_version 0x00
// nonce): a fixed-size stand-in for the triple, so an entry costs the same
// whatever the names' lengths. 128 bits keep an accidental collision (a
// false replay) out of reach for any realistic window.
type replayKey [16]byte

// window remembers accepted triples, oldest first, bounded by count and
// age. A FIFO ring holds insertion order and times; a map from key to
// insertion sequence number answers lookups. The ring grows on demand up to
// the bound, so a small deployment pays for what it uses.
type window struct {
	mu     sync.Mutex
	max    int
	maxAge time.Duration

	idx  map[replayKey]uint64 // key → sequence number of its slot
	ring []slot
	head int    // ring index of the oldest slot
	n    int    // slots in use
	next uint64 // sequence number of the next insert; slots hold next-n .. next-1
}

type slot struct {
	key replayKey
	at  int64 // unix nanoseconds of acceptance
}

func newWindow(max int, maxAge time.Duration) *window {
	return &window{max: max, maxAge: maxAge, idx: make(map[replayKey]uint64)}
}

// expire drops the oldest slots older than maxAge.
func (w *window) expire(now int64) {
	limit := now - int64(w.maxAge)
	for w.n > 0 && w.ring[w.head].at < limit {
		w.evictHead()
	}
}

func (w *window) evictHead() {
	s := &w.ring[w.head]
	seq := w.next - uint64(w.n)
	if q, ok := w.idx[s.key]; ok && q == seq {
		delete(w.idx, s.key)
	}
	w.head++
	if w.head == len(w.ring) {
		w.head = 0
	}
	w.n--
}

// seen reports whether k was accepted and is still within the window.
func (w *window) seen(k replayKey, now int64) bool {
	q, ok := w.idx[k]
	if !ok || q < w.next-uint64(w.n) {
		return false
	}
	s := &w.ring[(w.head+int(q-(w.next-uint64(w.n))))%len(w.ring)]
	return s.at >= now-int64(w.maxAge)
}

// admit checks keys against the window and, when none was accepted before
// (nor repeats within keys), accepts them all at once. A key already there
// gives ErrDuplicate for a DUP redelivery and ErrReplay otherwise; nothing
// is inserted then.
func (w *window) admit(keys []replayKey, dup bool, now int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.expire(now)
	for i, k := range keys {
		if w.seen(k, now) {
			if dup {
				return ErrDuplicate
			}
			return ErrReplay
		}
		for _, prev := range keys[:i] {
			if prev == k {
				// The same nonce twice under one key in one message: a
				// device reusing nonces, never a broker redelivery.
				return ErrReplay
			}
		}
	}
	for _, k := range keys {
		w.push(k, now)
	}
	return nil
}

func (w *window) push(k replayKey, now int64) {
	if w.n == len(w.ring) {
		if len(w.ring) < w.max {
			size := min(max(2*len(w.ring), 1024), w.max)
			ring := make([]slot, size)
			for i := range w.n {
				ring[i] = w.ring[(w.head+i)%len(w.ring)]
			}
			w.ring, w.head = ring, 0
		} else {
			w.evictHead()
		}
	}
	w.ring[(w.head+w.n)%len(w.ring)] = slot{key: k, at: now}
	w.idx[k] = w.next
	w.next++
	w.n++
}

// forget removes keys, so a redelivery of a message the caller could not
// deliver is processed afresh. Its ring slots stay until they age out;
// evictHead skips them because the map no longer points at them.
func (w *window) forget(keys []replayKey) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, k := range keys {
		delete(w.idx, k)
	}
}

func (w *window) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.idx)
}
