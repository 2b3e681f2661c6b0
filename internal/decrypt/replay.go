package decrypt

import (
	"encoding/binary"
	"sync"
	"time"
)

// replayKey is the first 16 bytes of SHA-256(key_id 0x00 key_version 0x00
// nonce): a fixed-size stand-in for the triple, so an entry costs the same
// whatever the names' lengths. 128 bits keep an accidental collision (a
// false replay) out of reach for any realistic window.
type replayKey [16]byte

// tag is the key's hash bits, kept in its table entry. The key is already a
// cryptographic digest, so its bits serve as the hash.
func (k *replayKey) tag() uint32 { return binary.LittleEndian.Uint32(k[:4]) }

// window remembers accepted triples, oldest first, bounded by count and
// age. A FIFO ring holds the keys and their acceptance times; an
// open-addressing table (linear probing, at most half full) maps a key to
// its ring slot. Each table entry carries the key's hash bits, so probing
// and deleting touch the ring only to confirm a likely match: at a million
// entries every touch is a cache miss. About 24 bytes of ring plus 16 to
// 32 of table per entry; both grow on demand up to the bound, so a small
// deployment pays for what it uses.
type window struct {
	mu     sync.Mutex
	max    int
	maxAge time.Duration

	ring []slot
	head int // ring index of the oldest slot
	n    int // slots in use

	table []entry
	mask  uint32
}

// entry is one table slot: ring index + 1 (0: empty) and the key's tag.
type entry struct {
	ref uint32
	tag uint32
}

type slot struct {
	key replayKey
	at  int64 // unix nanoseconds of acceptance
}

func newWindow(max int, maxAge time.Duration) *window {
	return &window{max: max, maxAge: maxAge}
}

// lookup returns the table index holding k, or -1.
func (w *window) lookup(k *replayKey) int {
	if len(w.table) == 0 {
		return -1
	}
	tag := k.tag()
	for i := tag & w.mask; ; i = (i + 1) & w.mask {
		e := w.table[i]
		if e.ref == 0 {
			return -1
		}
		if e.tag == tag && w.ring[e.ref-1].key == *k {
			return int(i)
		}
	}
}

// lookupSlot returns the table index pointing at ring slot r, or -1 (the
// slot was forgotten).
func (w *window) lookupSlot(r int) int {
	for i := w.ring[r].key.tag() & w.mask; ; i = (i + 1) & w.mask {
		e := w.table[i]
		if e.ref == 0 {
			return -1
		}
		if int(e.ref-1) == r {
			return int(i)
		}
	}
}

func (w *window) insert(r int) {
	tag := w.ring[r].key.tag()
	i := tag & w.mask
	for w.table[i].ref != 0 {
		i = (i + 1) & w.mask
	}
	w.table[i] = entry{ref: uint32(r + 1), tag: tag}
}

// remove empties table slot i, shifting later entries of its probe run
// back so that lookups need no tombstones.
func (w *window) remove(i uint32) {
	for j := (i + 1) & w.mask; w.table[j].ref != 0; j = (j + 1) & w.mask {
		h := w.table[j].tag & w.mask
		// The entry at j may move to i unless its home lies cyclically
		// in (i, j].
		if (j > i && (h <= i || h > j)) || (j < i && h <= i && h > j) {
			w.table[i] = w.table[j]
			i = j
		}
	}
	w.table[i] = entry{}
}

// expire drops the oldest slots older than maxAge.
func (w *window) expire(now int64) {
	limit := now - int64(w.maxAge)
	for w.n > 0 && w.ring[w.head].at < limit {
		w.evictHead()
	}
}

func (w *window) evictHead() {
	if i := w.lookupSlot(w.head); i >= 0 {
		w.remove(uint32(i))
	}
	w.head++
	if w.head == len(w.ring) {
		w.head = 0
	}
	w.n--
}

// seen reports whether k was accepted and is still within the window.
func (w *window) seen(k *replayKey, now int64) bool {
	i := w.lookup(k)
	return i >= 0 && w.ring[w.table[i].ref-1].at >= now-int64(w.maxAge)
}

// admit checks keys against the window and, when none was accepted before
// (nor repeats within keys), accepts them all at once. A key already there
// gives ErrDuplicate for a DUP redelivery and ErrReplay otherwise; nothing
// is inserted then.
func (w *window) admit(keys []replayKey, dup bool, now int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.expire(now)
	for i := range keys {
		if w.seen(&keys[i], now) {
			if dup {
				return ErrDuplicate
			}
			return ErrReplay
		}
		for _, prev := range keys[:i] {
			if prev == keys[i] {
				// The same nonce twice under one key in one message: a
				// device reusing nonces, never a broker redelivery.
				return ErrReplay
			}
		}
	}
	for i := range keys {
		w.push(&keys[i], now)
	}
	return nil
}

func (w *window) push(k *replayKey, now int64) {
	if w.n == len(w.ring) {
		if len(w.ring) < w.max {
			w.grow(min(max(2*len(w.ring), 1024), w.max))
		} else {
			w.evictHead()
		}
	}
	r := (w.head + w.n) % len(w.ring)
	w.ring[r] = slot{key: *k, at: now}
	w.n++
	w.insert(r)
}

// grow moves the ring to size slots, oldest first, and rebuilds the table
// at twice that or more (a power of two).
func (w *window) grow(size int) {
	old, oldTable := w.ring, w.table
	w.ring = make([]slot, size)
	// Forgotten slots are kept (they still count against the bound) but
	// must not come back: remember which old slots the table points at.
	live := make([]bool, len(old))
	for _, e := range oldTable {
		if e.ref != 0 {
			live[e.ref-1] = true
		}
	}
	tsize := 1
	for tsize < 2*size {
		tsize *= 2
	}
	w.table = make([]entry, tsize)
	w.mask = uint32(tsize - 1)
	for i := range w.n {
		r := (w.head + i) % len(old)
		w.ring[i] = old[r]
		if live[r] {
			w.insert(i)
		}
	}
	w.head = 0
}

// forget removes keys, so a redelivery of a message the caller could not
// deliver is processed afresh. Their ring slots stay until they age out or
// are pushed out; evictHead finds no table entry for them then.
func (w *window) forget(keys []replayKey) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range keys {
		if t := w.lookup(&keys[i]); t >= 0 {
			w.remove(uint32(t))
		}
	}
}

// len is the number of keys the window holds.
func (w *window) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, e := range w.table {
		if e.ref != 0 {
			n++
		}
	}
	return n
}
