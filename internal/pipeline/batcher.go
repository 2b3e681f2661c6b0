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
// appended meanwhile (up to MaxBatch) at once: the records that arrived
// during one write + fsync share the next one. Appending never blocks and
// wakes the writer only when it is idle, so a busy pipeline costs no
// goroutine hand-off per record.
type batcher struct {
	p    *Pipeline
	s    sink.Sink
	enc  RecordEncoder // s's own record encoding, or nil: the standard JSON
	name string
	log  *zap.Logger

	mu      sync.Mutex
	pending []job
	firstAt time.Time // when pending's first job came (set only with a positive Linger)
	idle    bool      // the writer waits for add's wake-up
	// lingering: the writer waits for its batch to fill (full) or its
	// oldest record to have waited Linger; add wakes it only when full.
	lingering bool
	closed    bool // the writer has exited: add refuses, so no job is ever stranded
	wake      chan struct{}
	exited    chan struct{}

	down bool          // owned by the writer
	recs []sink.Record // owned by the writer
}

func (p *Pipeline) newBatcher(s sink.Sink) *batcher {
	enc, _ := s.(RecordEncoder)
	return &batcher{
		p: p, s: s, enc: enc, name: s.Name(),
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
	b.pending = append(b.pending, j)
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
// positive Linger, once MaxBatch are pending, or the oldest pending record
// has waited Linger (a lone record of the only delivery under way goes at
// once). While it writes, the next batch gathers. After Close's stop it
// writes what is pending and exits.
func (b *batcher) run() {
	defer close(b.exited)
	maxBatch := b.p.o.MaxBatch
	linger := b.p.o.Linger
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var batch []job
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
		n := min(len(b.pending), maxBatch)
		if n == len(b.pending) {
			batch, b.pending = b.pending, batch[:0]
		} else {
			batch = append(batch[:0], b.pending[:n]...)
			k := copy(b.pending, b.pending[n:])
			clear(b.pending[k:])
			b.pending = b.pending[:k]
			b.firstAt = time.Now() // the rest waited a little; close enough
		}
		b.mu.Unlock()
		b.flush(batch)
		clear(batch)
	}
}

// full reports whether the pending batch should go out without lingering
// further: MaxBatch records, or a lone record of the only delivery under
// way (nothing else can join it soon). A batch of several records
// lingers its whole Linger even when every delivery under way has handed
// its record over: under load the next messages are already on their way
// from the broker, and on a virtual disk one fsync costs as much CPU as
// decrypting a hundred messages. Called with b.mu held.
func (b *batcher) full() bool {
	n := len(b.pending)
	return n >= b.p.o.MaxBatch || (n == 1 && b.p.active.Load() <= 1)
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
// pipeline's write context ends, and answers every job in it.
func (b *batcher) flush(batch []job) {
	m := b.p.m
	for attempt := 0; len(batch) > 0; attempt++ {
		b.recs = b.recs[:0]
		for i := range batch {
			b.recs = append(b.recs, batch[i].rec)
		}
		t0 := time.Now()
		err := b.s.Write(b.p.writeCtx, b.recs)
		m.sinkWrite.WithLabelValues(b.name).Observe(time.Since(t0).Seconds())
		clear(b.recs)
		if err == nil {
			m.sinkBatch.WithLabelValues(b.name).Observe(float64(len(batch)))
			m.delivered.WithLabelValues(b.name).Add(float64(len(batch)))
			if b.down {
				b.down = false
				m.sinkUp.WithLabelValues(b.name).Set(1)
				b.log.Info("sink back up", zap.Int("attempts", attempt+1))
				b.p.sinkState(b.name, true, nil)
			}
			answerAll(batch, nil)
			return
		}
		m.sinkErrors.WithLabelValues(b.name).Inc()
		if errors.Is(err, sink.ErrBadRecord) {
			if len(batch) == 1 {
				answerAll(batch, err)
				return
			}
			// The sink checks the whole batch before writing any of it:
			// find the records it refuses, write the others.
			for i := range batch {
				b.flush(batch[i : i+1])
			}
			return
		}
		if b.p.writeCtx.Err() != nil {
			answerAll(batch, fmt.Errorf("pipeline: sink %s: gave up at shutdown: %w", b.name, err))
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
		batch = dropAbandoned(batch)
		if serr := b.sleep(batch, b.p.backoff(attempt)); serr != nil {
			answerAll(batch, fmt.Errorf("pipeline: sink %s: gave up at shutdown: %w", b.name, err))
			return
		}
		batch = dropAbandoned(batch)
	}
}

// sleep waits d before the next attempt, or less when the first record
// still waited for is abandoned meanwhile (its delivery's context ended);
// it fails only when the pipeline's write context ends.
func (b *batcher) sleep(batch []job, d time.Duration) error {
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
func dropAbandoned(batch []job) []job {
	kept := batch[:0]
	for _, j := range batch {
		if err := j.d.ctx.Err(); err != nil {
			j.d.answer(j.idx, fmt.Errorf("pipeline: waiting for the sinks: %w", err))
			continue
		}
		kept = append(kept, j)
	}
	clear(batch[len(kept):])
	return kept
}

func answerAll(batch []job, err error) {
	for _, j := range batch {
		j.d.answer(j.idx, err)
	}
}
