package decrypt

import (
	"encoding/binary"
	"hash/maphash"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// replayKey is the first 16 bytes of SHA-256(key_id 0x00 key_version 0x00
// nonce): a fixed-size stand-in for the triple, so an entry costs the same
// whatever the names' lengths. 128 bits keep an accidental collision (a
// false replay) out of reach for any realistic window. The SHA-256 is the
// one the record id needs anyway (the spec's id is its hex of the first
// sealed value's triple), so for shape A the key costs nothing more; a
// cheaper keyed hash would be an extra pass, not a saving. Only shape B's
// second and later sealed values pay a SHA-256 of their own (about 40 ns
// with the SHA extensions), so every value of a message, first or not,
// gets the same key for its triple.
type replayKey [16]byte

// msgDigest is a 64-bit keyed hash of (topic, payload): what tells an
// exact repeat of an accepted message (amendment 1: a duplicate) from a
// different message reusing its nonce (a replay). The spec's example is
// SHA-256 truncated to 16 bytes; this is hash/maphash (the runtime's
// AES-based hash) of the payload under one random seed of the window's own,
// XORed with maphash of the topic under a second: one pass over the bytes,
// no copy, a fifth of SHA-256's cost over a 300-byte message.
//
// Why 64 bits are enough: a digest is only ever compared with the digest
// of an entry whose 128-bit replayKey the message shares, that is, only
// for a message that is already a repeat or a replay. Identical (topic,
// payload) always give identical digests, so a repeat is never taken for a
// replay. Two different ones collide with probability 2^-64 per such
// comparison (the two seeded hashes are independent, so a pair differing
// in the payload, the topic, or both collides only by chance), and the
// seeds never leave the process, so a collision cannot be aimed at. Its
// only effect would be a replay acknowledged and counted as a duplicate
// instead of dead-lettered as a replay: delivered in neither case.
type msgDigest [8]byte

// digester computes msgDigests: one per window, its seeds fixed for the
// window's life so digests of one window compare.
type digester struct{ payload, topic maphash.Seed }

func newDigester() digester { return digester{maphash.MakeSeed(), maphash.MakeSeed()} }

// digest returns the digest of (topic, payload). The two parts are hashed
// under independent seeds, so no separator is needed between them.
func (g *digester) digest(topic string, payload []byte) msgDigest {
	var d msgDigest
	binary.LittleEndian.PutUint64(d[:], maphash.Bytes(g.payload, payload)^maphash.String(g.topic, topic))
	return d
}

// Layout of the window (see doc.go for what it promises).
//
// Accepted entries (key, digest, acceptance time: 32 bytes, two to a cache
// line) are appended, in order, to the current generation: one of
// windowGens slices, each holding up to genCap entries, so an insert writes
// its entry next to the last one, never at a random place. When the
// current one is full the oldest generation is dropped whole (its slice is
// reused, nothing is deleted entry by entry) and becomes the current one. The windowGens-1 full generations always
// hold at least max entries, so the window remembers at least the last max
// accepted entries (and at most max+genCap).
//
// A table of 64-byte lines indexes them: word 0 of a line is its overflow
// mark, words 1..15 are slots. A slot packs a fingerprint of the key (its
// high bits), the entry's generation (genBits bits, modulo 64) and its index
// in that generation's slice. A key's home line is chosen by the key's low
// bits; it goes into the first slot of the first line from there whose slot
// is empty or belongs to a dropped generation, and every full line it passes
// is marked with the current generation. A lookup reads the home line (one
// cache line: the common case for a new nonce, which is then inserted into
// the same line) and goes on to the next line only while the mark names a
// generation still held. Only a fingerprint match in a held generation
// reads the entry itself, and the answer "seen" comes only from that exact
// comparison of the full key (and the acceptance time against maxAge), so a
// fingerprint collision costs one extra memory read, never a false "seen".
// A generation number that wraps (modulo 64) can make a stale slot or mark
// look held: again only an extra read, as the exact check decides.
const (
	windowGens = 17 // generations; windowGens-1 of them hold at least max entries
	genBits    = 6  // windowGens <= 1<<genBits
	genMask    = 1<<genBits - 1
	lineWords  = 16 // 64 bytes
	// maxLoad is the share of slots in use (entries of held generations)
	// above which the table doubles.
	maxLoadNum, maxLoadDen = 3, 5
	minLines               = 64
)

type line [lineWords]uint32

// wentry is one accepted entry: 32 bytes, two to a cache line.
type wentry struct {
	key    replayKey
	digest msgDigest
	at     int64 // unix nanoseconds of acceptance; 0 once forgotten
}

// wentrySize is the bytes of one wentry (see bytes).
const wentrySize = 32

// window remembers accepted triples and their messages' digests, bounded
// by count and age.
type window struct {
	mu     sync.Mutex
	max    int
	maxAge int64
	dg     digester // read-only after newWindow

	genCap  int
	gens    [windowGens][]wentry
	cur     uint64 // current generation; gens[cur%windowGens] takes new entries
	curSlot int    // cur % windowGens
	held    int    // entries in held generations (forgotten ones included)
	idxBits uint   // slot bits of an entry's index
	fpShift uint   // idxBits + genBits: a slot's fingerprint is v >> fpShift

	table  []line
	mask   uint64
	growAt int
	// lines is table as published for prefetch, which reads it without
	// the lock: a copy of the slice header, replaced when the table grows.
	lines atomic.Pointer[[]line]
}

func newWindow(entries int, maxAge time.Duration) *window {
	c := (entries + windowGens - 2) / (windowGens - 1)
	w := &window{max: entries, maxAge: int64(maxAge), genCap: max(c, 1), dg: newDigester()}
	w.idxBits = uint(max(bits.Len(uint(w.genCap-1)), 1))
	w.fpShift = w.idxBits + genBits
	w.resize(minLines)
	return w
}

func (w *window) resize(lines int) {
	w.table = make([]line, lines)
	w.mask = uint64(lines - 1)
	w.growAt = lines * (lineWords - 1) * maxLoadNum / maxLoadDen
	t := w.table
	w.lines.Store(&t)
}

// prefetch starts loading k's home line into the cache without waiting for
// it and without the lock, so that the memory access of a later admit of k
// overlaps with the work done meanwhile (the tag check and the plaintext
// scan take longer than a cache miss). At the production bound the table
// is megabytes, so a lookup's line is otherwise a miss to memory, paid
// inside the lock. A hint only: it reads no memory that Go sees.
func (w *window) prefetch(k *replayKey) {
	t := *w.lines.Load()
	i := binary.LittleEndian.Uint64(k[:8]) & uint64(len(t)-1)
	prefetch(unsafe.Pointer(&t[i]))
}

// home returns k's home line and fingerprint (never 0: 0 is an empty slot).
func (w *window) home(k *replayKey) (uint64, uint32) {
	h := binary.LittleEndian.Uint64(k[:8])
	fp := uint32(h >> (64 - (32 - w.fpShift)))
	if fp == 0 {
		fp = 1
	}
	return h & w.mask, fp
}

// gen returns the generation a slot or mark's genBits name, and whether it
// is still held.
func (w *window) gen(g uint32) (uint64, bool) {
	age := (w.cur - uint64(g)) & genMask
	return w.cur - age, age < windowGens
}

// find returns the held, unexpired entry for k and where its slot is, or
// nil.
func (w *window) find(k *replayKey, now int64) (e *wentry, li uint64, slot int) {
	i, fp := w.home(k)
	idxMask := uint32(1)<<w.idxBits - 1
	for {
		ln := &w.table[i]
		for j := 1; j < lineWords; j++ {
			v := ln[j]
			if v>>w.fpShift != fp {
				continue
			}
			g, held := w.gen(v >> w.idxBits & genMask)
			if !held {
				continue
			}
			s := w.gens[g%windowGens]
			if x := int(v & idxMask); x < len(s) && s[x].key == *k && s[x].at != 0 && s[x].at >= now-w.maxAge {
				return &s[x], i, j
			}
		}
		m := ln[0]
		if m == 0 {
			return nil, 0, 0
		}
		if _, held := w.gen(m - 1); !held {
			return nil, 0, 0
		}
		i = (i + 1) & w.mask
	}
}

// insert puts the slot of entry x of generation g into the table.
func (w *window) insert(k *replayKey, g uint64, x int) {
	i, fp := w.home(k)
	v := fp<<w.fpShift | uint32(g&genMask)<<w.idxBits | uint32(x)
	for {
		ln := &w.table[i]
		for j := 1; j < lineWords; j++ {
			if o := ln[j]; o == 0 {
				ln[j] = v
				return
			} else if _, held := w.gen(o >> w.idxBits & genMask); !held {
				ln[j] = v
				return
			}
		}
		ln[0] = uint32(g&genMask) + 1
		i = (i + 1) & w.mask
	}
}

// admit checks keys, the triples of one message whose digest is d, against
// the window and, when none was accepted before (nor repeats within keys),
// accepts them all at once. A key already there with the same digest is an
// exact repeat: ErrDuplicate; with another digest, or a key twice in keys,
// ErrReplay. Nothing is inserted then.
func (w *window) admit(keys []replayKey, d *msgDigest, now int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	repeat := false
	for i := range keys {
		if e, _, _ := w.find(&keys[i], now); e != nil {
			if e.digest != *d {
				return ErrReplay
			}
			repeat = true
		}
		for _, prev := range keys[:i] {
			if prev == keys[i] {
				// The same nonce twice under one key in one message: a
				// device reusing nonces.
				return ErrReplay
			}
		}
	}
	if repeat {
		return ErrDuplicate
	}
	for i := range keys {
		w.push(&keys[i], d, now)
	}
	return nil
}

func (w *window) push(k *replayKey, d *msgDigest, now int64) {
	s := &w.gens[w.curSlot]
	if len(*s) == w.genCap {
		w.cur++
		w.curSlot = int(w.cur % windowGens)
		s = &w.gens[w.curSlot]
		w.held -= len(*s)
		*s = (*s)[:0]
	}
	if cap(*s) == 0 {
		// A generation's room is taken once, when it is first used, and
		// reused from then on.
		*s = make([]wentry, 0, w.genCap)
	}
	x := len(*s)
	*s = append(*s, wentry{key: *k, digest: *d, at: now})
	w.held++
	if w.held > w.growAt {
		w.grow()
		return
	}
	w.insert(k, w.cur, x)
}

// grow doubles the table and indexes every held entry again, oldest
// generation first (so each mark ends up naming the newest generation that
// passed it).
func (w *window) grow() {
	w.resize(2 * len(w.table))
	for age := uint64(windowGens - 1); ; age-- {
		if age <= w.cur {
			g := w.cur - age
			for x, e := range w.gens[g%windowGens] {
				if e.at != 0 {
					w.insert(&e.key, g, x)
				}
			}
		}
		if age == 0 {
			return
		}
	}
}

// forget removes keys, so a redelivery of a message the caller could not
// deliver is processed afresh. Their entries keep their place in their
// generation until it is dropped.
func (w *window) forget(keys []replayKey) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range keys {
		// Every entry of the key, expired ones included (now 0): one that
		// expired may share the key with the one accepted after it.
		for {
			e, li, j := w.find(&keys[i], 0)
			if e == nil {
				break
			}
			e.at = 0
			w.table[li][j] = 0
		}
	}
}

// len is the number of keys the window holds (forgotten ones excluded;
// expired ones count until their generation is dropped).
func (w *window) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for age := uint64(0); age < windowGens && age <= w.cur; age++ {
		for _, e := range w.gens[(w.cur-age)%windowGens] {
			if e.at != 0 {
				n++
			}
		}
	}
	return n
}

// bytes is the memory the window holds now.
func (w *window) bytes() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(w.table) * lineWords * 4
	for _, s := range w.gens {
		n += cap(s) * wentrySize
	}
	return n
}
