package kafkainput

// tracker is one partition's ordered-commit state: the offsets handed to
// the Processor, in fetch order, and which of them are done. Its commit
// offset is one past the last offset of the longest done prefix, so a
// commit never passes a message that is not done, whatever order the
// messages finish in. It is not safe for concurrent use (the partition's
// mutex guards it).
type tracker struct {
	// next is the commit offset: every offset below it that was handed
	// out is done (or was committed before this assignment); -1 while
	// nothing is known (no committed offset and no record yet).
	next  int64
	epoch int32 // leader epoch of the record at next-1 (-1: unknown)
	// items are the handed-out offsets from the first one not done on,
	// in fetch order; headSeq is the sequence number of items[0].
	items   []item
	headSeq uint64
}

type item struct {
	off   int64
	epoch int32
	done  bool
}

// newTracker starts at the committed offset (-1: none).
func newTracker(committed int64) tracker {
	return tracker{next: committed, epoch: -1}
}

// add hands out off (larger than every offset added before) and returns
// its sequence number for finish.
func (t *tracker) add(off int64, epoch int32) uint64 {
	if t.next < 0 && len(t.items) == 0 {
		t.next = off
	}
	t.items = append(t.items, item{off: off, epoch: epoch})
	return t.headSeq + uint64(len(t.items)) - 1
}

// finish marks the message with sequence number seq done and advances the
// commit offset over the done prefix; it reports whether it advanced. A
// seq already done or not handed out is ignored.
func (t *tracker) finish(seq uint64) bool {
	if seq < t.headSeq || seq-t.headSeq >= uint64(len(t.items)) {
		return false
	}
	t.items[seq-t.headSeq].done = true
	n := 0
	for n < len(t.items) && t.items[n].done {
		n++
	}
	if n == 0 {
		return false
	}
	last := t.items[n-1]
	t.next, t.epoch = last.off+1, last.epoch
	clear(t.items[:n])
	t.items = t.items[n:]
	t.headSeq += uint64(n)
	if len(t.items) == 0 {
		t.items = t.items[:0:0] // let the backing array go
	}
	return true
}

// commitOffset is the offset to commit (-1: none known) and its leader
// epoch.
func (t *tracker) commitOffset() (int64, int32) { return t.next, t.epoch }

// outstanding is how many handed-out messages are not in the done prefix.
func (t *tracker) outstanding() int { return len(t.items) }
