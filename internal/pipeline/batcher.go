package pipeline

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/redact"
	"github.com/decryptd/decryptd/internal/sink"
)

// job is one record handed to one batcher for one delivery; the batcher
// answers d (idx: which of d's sinks it is).
type job struct {
	rec sink.Record
	d   *delivery
	idx int
}

// batcher owns one sink and commits its records in groups (group commit).
// Deliveries append their jobs under a mutex at any time, also while a
// batch is being written; one writer goroutine (run) writes one batch at a
// time, so the sink's Write is never called concurrently, and answers
// every job of it. When the writer finishes a batch it takes everything
// appended meanwhile (up to MaxBatch records and MaxBatchBytes) at once:
// the records that arrived during one write + fsync share the next one
// (and, with a sink.GroupWriter, all of them share one fsync: flushGroup).
// Appending never blocks and wakes the writer only when it is idle, so a
// busy pipeline costs no goroutine hand-off per record.
//
// A batch the sink fails to write is split: the retry writes its first
// half, halving down to one record, and once a part is written the size
// doubles back towards the whole batch. A sink that cannot take a batch
// whole (a disk with room for some records, a receiver limiting request
// bodies) thus gets what fits, instead of the same batch retried forever.
// Parts are written in order, so records keep their order per sink, and
// each record is answered only once its part was written.
type batcher struct {
	p    *Pipeline
	s    sink.Sink
	gw   sink.GroupWriter // s, when it can make several batches durable at once; else nil
	enc  RecordEncoder    // s's own record encoding, or nil: the standard JSON
	name string
	log  *zap.Logger

	mu sync.Mutex
	// pending and pendingAcks are the queued jobs, split: the records, as
	// the sink's Write takes them, so the writer hands a batch over
	// without copying it record by record; and by index, what answering
	// each one takes.
	pending      []sink.Record
	pendingAcks  []ack
	pendingBytes int       // the records' JSON in pending
	firstAt      time.Time // when pending's first job came (set only with a positive Linger)
	idle         bool      // the writer waits for add's wake-up
	// lingering: the writer waits for its batch to fill (full) or its
	// oldest record to have waited Linger; add wakes it only when full.
	lingering bool
	closed    bool // the writer has exited: add refuses, so no job is ever stranded
	wake      chan struct{}
	exited    chan struct{}

	down bool // owned by the writer
}

func (p *Pipeline) newBatcher(s sink.Sink) *batcher {
	enc, _ := s.(RecordEncoder)
	gw, _ := s.(sink.GroupWriter)
	return &batcher{
		p: p, s: s, gw: gw, enc: enc, name: s.Name(),
		log:    p.log.With(zap.String("sink", s.Name())),
		wake:   make(chan struct{}, 1),
		exited: make(chan struct{}),
	}
}

// add queues j for the next batch. It returns false, taking nothing, once
// the batcher has stopped.
func (b *batcher) add(j job) bool {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return false
	}
	if len(b.pending) == 0 && b.p.o.Linger > 0 {
		b.firstAt = time.Now()
	}
	b.pending = append(b.pending, j.rec)
	b.pendingAcks = append(b.pendingAcks, ack{j.d, j.idx})
	b.pendingBytes += len(j.rec.JSON)
	// A lingering writer needs waking only once its batch may go out.
	wake := b.idle || (b.lingering && b.full())
	b.mu.Unlock()
	if wake {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// run is the writer. It writes the pending records at once, or, with a
// positive Linger, once MaxBatch records or MaxBatchBytes are pending, or
// the oldest pending record has waited Linger (a lone record of the only
// delivery under way goes at once). While it writes, the next batch
// gathers. After Close's stop it writes what is pending and exits.
func (b *batcher) run() {
	defer close(b.exited)
	maxBatch, maxBytes := b.p.o.MaxBatch, b.p.o.MaxBatchBytes
	linger := b.p.o.Linger
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var batch []sink.Record
	var acks []ack
	stopping := false
	for {
		b.mu.Lock()
		for len(b.pending) == 0 {
			if stopping {
				b.closed = true
				b.mu.Unlock()
				return
			}
			stopping = b.wait(nil)
		}
		if linger > 0 && !stopping {
			deadline := b.firstAt.Add(linger)
			for !b.full() {
				left := time.Until(deadline)
				if left <= 0 {
					break
				}
				timer.Reset(left)
				b.lingering = true
				stop := b.wait(timer.C)
				b.lingering = false
				timer.Stop()
				if stop {
					stopping = true
					break
				}
			}
		}
		n, size := b.take(maxBatch, maxBytes)
		group := n < len(b.pending) && b.gw != nil && !b.down
		if group {
			// More than one batch waits (the writer was busy while they
			// came): write them all, each within the bounds, and make
			// them durable with one fsync (see flushGroup).
			n, size = len(b.pending), b.pendingBytes
		}
		b.pendingBytes -= size
		if n == len(b.pending) {
			batch, b.pending = b.pending, batch[:0]
			acks, b.pendingAcks = b.pendingAcks, acks[:0]
		} else {
			batch = append(batch[:0], b.pending[:n]...)
			k := copy(b.pending, b.pending[n:])
			clear(b.pending[k:])
			b.pending = b.pending[:k]
			acks = append(acks[:0], b.pendingAcks[:n]...)
			copy(b.pendingAcks, b.pendingAcks[n:])
			clear(b.pendingAcks[k:])
			b.pendingAcks = b.pendingAcks[:k]
			b.firstAt = time.Now() // the rest waited a little; close enough
		}
		b.mu.Unlock()
		if group {
			b.flushGroup(batch, acks, maxBatch, maxBytes)
		} else {
			b.flush(batch, acks)
		}
		clear(batch)
		clear(acks)
	}
}

// flushGroup writes the jobs of several batches to a GroupWriter sink, each
// batch (at most maxRecords records and maxBytes of JSON, as take cuts
// them) with one WriteUnsynced call, and then makes them all durable with
// one Sync, answering every job only after that Sync succeeded. A sink
// whose write and fsync take milliseconds thus holds as many records per
// fsync as came while the previous one ran, instead of one batch's
// MaxBatch: the records a group holds are the ones pending when the writer
// took them, which the inputs' in-flight bounds (records and bytes) bound.
// Each batch still reaches the sink within the batch bounds, in order.
//
// On any failure, the group's batches are written again one by one by
// flush (Write, with its fsync, retried as flush retries): a failed fsync
// is not cured by a later one, so none of the group counts as held; the
// file then holds some records twice (sinks tolerate repeats), and in
// order, the last copies included.
func (b *batcher) flushGroup(batch []sink.Record, acks []ack, maxRecords, maxBytes int) {
	m := b.p.m
	t0 := time.Now()
	var err error
	for rest := batch; len(rest) > 0 && err == nil; {
		n, _ := takeRecords(rest, maxRecords, maxBytes)
		err = b.gw.WriteUnsynced(b.p.writeCtx, rest[:n])
		rest = rest[n:]
	}
	if err == nil {
		err = b.gw.Sync(b.p.writeCtx)
	}
	m.sinkWrite.WithLabelValues(b.name).Observe(time.Since(t0).Seconds())
	if err != nil {
		m.sinkErrors.WithLabelValues(b.name).Inc()
		for i := 0; i < len(batch); {
			n, _ := takeRecords(batch[i:], maxRecords, maxBytes)
			b.flush(batch[i:i+n], acks[i:i+n])
			i += n
		}
		return
	}
	m.sinkBatch.WithLabelValues(b.name).Observe(float64(len(batch)))
	m.delivered.WithLabelValues(b.name).Add(float64(len(batch)))
	b.p.settle(acks)
}

// take returns how many of the pending records the next batch holds: at
// most maxRecords, and at most maxBytes of JSON unless the first record
// alone is larger; and their bytes. Called with b.mu held.
func (b *batcher) take(maxRecords, maxBytes int) (n, size int) {
	return takeRecords(b.pending, maxRecords, maxBytes)
}

// takeRecords is take for the first records of rs.
func takeRecords(rs []sink.Record, maxRecords, maxBytes int) (n, size int) {
	for n < len(rs) && n < maxRecords {
		l := len(rs[n].JSON)
		if n > 0 && size+l > maxBytes {
			break
		}
		size += l
		n++
	}
	return n, size
}

// full reports whether the pending batch should go out without lingering
// further: MaxBatch records or MaxBatchBytes, or a lone record of the only
// delivery under way (nothing else can join it soon). A batch of several records
// lingers its whole Linger even when every delivery under way has handed
// its record over: under load the next messages are already on their way
// from the broker, and on a virtual disk one fsync costs as much CPU as
// decrypting a hundred messages. Called with b.mu held.
func (b *batcher) full() bool {
	n := len(b.pending)
	return n >= b.p.o.MaxBatch || b.pendingBytes >= b.p.o.MaxBatchBytes || (n == 1 && b.p.active.Load() <= 1)
}

// wait releases b.mu until add wakes the writer, the timer fires or the
// pipeline stops (then it returns true); b.mu is held again on return.
func (b *batcher) wait(timer <-chan time.Time) (stop bool) {
	b.idle = !b.lingering
	b.mu.Unlock()
	select {
	case <-b.wake:
	case <-timer:
	case <-b.p.stop:
		stop = true
	}
	b.mu.Lock()
	b.idle = false
	return stop
}

// flush writes the batch, retrying every failure but sink.ErrBadRecord
// until it succeeds, nobody waits for its records any more, or the
// pipeline's write context ends, and answers every job in it. After a
// failure it writes the batch in parts (see batcher): part is the records
// of the next attempt, halved after each failure down to one, doubled
// after each success up to the whole batch. acks[i] answers batch[i].
func (b *batcher) flush(batch []sink.Record, acks []ack) {
	m := b.p.m
	part := len(batch)
	fails := 0 // failures since the last write that succeeded at one record
	for attempt := 0; len(batch) > 0; attempt++ {
		n := min(part, len(batch))
		t0 := time.Now()
		err := b.s.Write(b.p.writeCtx, batch[:n])
		m.sinkWrite.WithLabelValues(b.name).Observe(time.Since(t0).Seconds())
		if err == nil {
			m.sinkBatch.WithLabelValues(b.name).Observe(float64(n))
			m.delivered.WithLabelValues(b.name).Add(float64(n))
			// Up once the whole batch is written: while parts still fail
			// now and then, the sink counts as down (one log line each way,
			// not one per part). Before the answers: whoever sees its
			// record delivered sees the sink up.
			if b.down && n == len(batch) {
				b.down = false
				m.sinkUp.WithLabelValues(b.name).Set(1)
				b.log.Info("sink back up", zap.Int("attempts", attempt+1))
				b.p.sinkState(b.name, true, nil)
			}
			b.p.settle(acks[:n])
			clear(batch[:n])
			clear(acks[:n])
			batch, acks = batch[n:], acks[n:]
			part, fails = min(2*part, len(batch)), 0
			part = max(part, 1)
			continue
		}
		m.sinkErrors.WithLabelValues(b.name).Inc()
		if errors.Is(err, sink.ErrBadRecord) {
			if n == 1 {
				answerAll(acks[:1], err)
				batch, acks = batch[1:], acks[1:]
				continue
			}
			// The sink checks the whole batch before writing any of it:
			// find the records it refuses, write the others.
			for i := range batch[:n] {
				b.flush(batch[i:i+1], acks[i:i+1])
			}
			batch, acks = batch[n:], acks[n:]
			continue
		}
		if b.p.writeCtx.Err() != nil {
			answerAll(acks, fmt.Errorf("pipeline: sink %s: gave up at shutdown: %w", b.name, err))
			return
		}
		if !b.down {
			b.down = true
			m.sinkUp.WithLabelValues(b.name).Set(0)
			// redact: a sink's error may quote its URL (an HTTP
			// client error does, query and all).
			b.log.Warn("sink down; holding its records and retrying", zap.Error(redact.Error(err)))
			b.p.sinkState(b.name, false, err)
		}
		m.retries.WithLabelValues(causeSink).Inc()
		// Split before waiting long: a smaller write may fit (a nearly full
		// disk) where the whole batch cannot. While halving, wait only the
		// shortest back-off; at one record, back off as usual.
		wait := b.p.backoff(0)
		if n > 1 {
			part = n / 2
		} else {
			wait = b.p.backoff(fails)
			fails++
		}
		batch, acks = dropAbandoned(batch, acks)
		if serr := b.sleep(acks, wait); serr != nil {
			answerAll(acks, fmt.Errorf("pipeline: sink %s: gave up at shutdown: %w", b.name, err))
			return
		}
		batch, acks = dropAbandoned(batch, acks)
	}
}

// sleep waits d before the next attempt, or less when the first record
// still waited for is abandoned meanwhile (its delivery's context ended);
// it fails only when the pipeline's write context ends.
func (b *batcher) sleep(batch []ack, d time.Duration) error {
	if len(batch) == 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-batch[0].d.ctx.Done():
		return nil
	case <-b.p.writeCtx.Done():
		return b.p.writeCtx.Err()
	}
}

// dropAbandoned answers, and removes from a batch being retried, the jobs
// whose delivery's context has ended: their messages will not be
// acknowledged, so writing them is no longer owed.
func dropAbandoned(batch []sink.Record, acks []ack) ([]sink.Record, []ack) {
	k := 0
	for i, a := range acks {
		if err := a.d.ctx.Err(); err != nil {
			a.d.answer(a.idx, fmt.Errorf("pipeline: waiting for the sinks: %w", err))
			continue
		}
		batch[k], acks[k] = batch[i], a
		k++
	}
	clear(batch[k:])
	clear(acks[k:])
	return batch[:k], acks[:k]
}

func answerAll(acks []ack, err error) {
	for _, a := range acks {
		a.d.answer(a.idx, err)
	}
}

// Settling a written batch: answering each of its records takes the
// delivery on (the last sink's answer finishes it: the flight tracker, the
// buffers' recycling, metrics, and the input's done callback, which takes
// the input's own locks). That is most of the writer's CPU per record, and
// the writer is serial: on many cores it capped a replica's records per
// second. So a written batch's answers go, in chunks, to settler goroutines
// (GOMAXPROCS of them, per pipeline) while the writer writes the next
// batch; only a small batch, or a remainder, is answered by the writer
// itself (a lone record is not delayed by a hand-off), and so is a chunk
// when the settlers' queue is full.
//
// Dones thus run in no particular order across the records of a batch,
// as with several sinks they already did: the inputs accept any order
// (kafkainput's tracker commits past a record only once all before it are
// done, the MQTT acknowledgement queue sends PUBACKs in receive order),
// and per-device order is the order of the writes, which is unchanged.
// Every answer still comes after its record's write (and fsync) returned.
const (
	settleChunk = 128 // most answers in one hand-off
	settleMin   = 32  // fewer are answered by the writer itself
	// settleQueue is how many chunks may wait for a settler. The records
	// waiting are messages in flight, which the inputs bound (records and
	// bytes) until done, so the queue need not pace the writer; it is
	// large so that the writer never settles on a busy machine, where
	// that would only move the same work onto the serial goroutine.
	settleQueue = 4096
)

// ack is one answer owed: job j's j.d.answer(j.idx, nil).
type ack struct {
	d   *delivery
	idx int
}

// settle answers the records of a batch the sink holds (see
// settleChunk). batch stays the caller's: the settlers get copies.
func (p *Pipeline) settle(batch []ack) {
	for len(batch) >= settleMin {
		n := min(len(batch), settleChunk)
		cp, _ := p.acks.Get().(*[]ack)
		if cp == nil {
			c := make([]ack, 0, settleChunk)
			cp = &c
		}
		*cp = append((*cp)[:0], batch[:n]...)
		select {
		case p.settleq <- cp:
		default:
			p.settleAcks(cp)
		}
		batch = batch[n:]
	}
	answerAll(batch, nil)
}

// settleAcks answers a chunk and recycles it.
func (p *Pipeline) settleAcks(cp *[]ack) {
	c := *cp
	for _, a := range c {
		a.d.answer(a.idx, nil)
	}
	clear(c)
	*cp = c[:0]
	p.acks.Put(cp)
}

// settler answers chunks until Close closes the queue (after every
// writer exited).
func (p *Pipeline) settler() {
	for cp := range p.settleq {
		p.settleAcks(cp)
	}
}
