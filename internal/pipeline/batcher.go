package pipeline

import (
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/sink"
)

// job is one record handed to one batcher; the batcher answers on done
// (buffered, so a waiter that left never blocks it).
type job struct {
	rec  sink.Record
	idx  int
	done chan<- answer
}

type answer struct {
	idx int
	err error
}

// batcher owns one sink and commits its records in groups. Two goroutines:
// the collector (run) takes jobs at any time, also while a batch is being
// written, and the writer (writeLoop) writes one batch at a time, so the
// sink's Write is never called concurrently. When the writer finishes a
// batch it takes everything collected meanwhile (up to MaxBatch) at once:
// the records that arrived during one write + fsync share the next one,
// instead of waiting for the batcher to come back for them.
type batcher struct {
	p    *Pipeline
	s    sink.Sink
	name string
	// in is unbuffered on purpose: a send succeeds only when the collector
	// takes the job, so a job can never be stranded in a buffer after the
	// batcher has exited. The collector is never blocked by a write, so a
	// send waits only for the collector's loop.
	in     chan *job
	exited chan struct{}
	log    *zap.Logger

	// work hands a batch to the writer; finished hands its slice back once
	// every job in it has been answered.
	work     chan []*job
	finished chan []*job

	down bool          // owned by the writer
	recs []sink.Record // owned by the writer
}

func (p *Pipeline) newBatcher(s sink.Sink) *batcher {
	return &batcher{
		p: p, s: s, name: s.Name(),
		in:       make(chan *job),
		exited:   make(chan struct{}),
		log:      p.log.With(zap.String("sink", s.Name())),
		work:     make(chan []*job),
		finished: make(chan []*job),
	}
}

// run is the collector. It keeps pending (jobs taken, not yet handed to
// the writer) and hands them over when the writer is idle and either the
// writer has just finished a batch (they waited a whole write already),
// MaxBatch are pending, or, with a positive Linger, every Process call
// under way has handed its record over (nobody else can join soon) or the
// first of them has lingered Linger; with Linger 0, at once.
func (b *batcher) run() {
	defer close(b.exited)
	go b.writeLoop()
	defer close(b.work) // after the last batch is answered: the writer exits

	maxBatch := b.p.o.MaxBatch
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var (
		pending, spare []*job
		writing        bool // the writer holds a batch
		lingering      bool // timer runs for pending's first job
		lingered       bool // it fired
		justFinished   bool // pending collected during the last write
		stopping       bool
	)
	for {
		ready := len(pending) > 0 && !writing &&
			(justFinished || lingered || stopping || b.p.o.Linger == 0 || len(pending) >= maxBatch ||
				int64(len(pending)) >= b.p.active.Load())
		if ready {
			n := min(len(pending), maxBatch)
			batch := pending[:n]
			pending = append(spare[:0], pending[n:]...)
			spare = nil
			if lingering {
				timer.Stop()
			}
			lingering, lingered, justFinished = false, false, false
			b.work <- batch // the writer is idle: it takes it at once
			writing = true
			continue
		}
		if stopping && !writing && len(pending) == 0 {
			// Take whatever senders are still waiting; exit once none is.
			select {
			case j := <-b.in:
				pending = append(pending, j)
				continue
			default:
				return
			}
		}
		if len(pending) > 0 && !writing && !lingering && !lingered && !stopping && b.p.o.Linger > 0 {
			timer.Reset(b.p.o.Linger)
			lingering = true
		}
		var stop <-chan struct{}
		if !stopping {
			stop = b.p.stop
		}
		select {
		case j := <-b.in:
			pending = append(pending, j)
		case buf := <-b.finished:
			clear(buf)
			spare = buf[:0]
			writing = false
			justFinished = len(pending) > 0
		case <-timer.C:
			lingering, lingered = false, true
		case <-stop:
			stopping = true
		}
	}
}

// writeLoop is the writer: one batch at a time, every job answered before
// the slice goes back to the collector.
func (b *batcher) writeLoop() {
	for batch := range b.work {
		b.flush(batch)
		b.finished <- batch
	}
}

// flush writes the batch and answers every job in it.
func (b *batcher) flush(batch []*job) {
	b.recs = b.recs[:0]
	for _, j := range batch {
		b.recs = append(b.recs, j.rec)
	}
	err := b.write(b.recs)
	if errors.Is(err, sink.ErrBadRecord) && len(batch) > 1 {
		// The sink checks the whole batch before writing any of it: find
		// the records it refuses, write the others.
		for _, j := range batch {
			j.done <- answer{j.idx, b.write([]sink.Record{j.rec})}
		}
	} else {
		for _, j := range batch {
			j.done <- answer{j.idx, err}
		}
	}
	clear(b.recs)
}

// write writes recs, retrying every failure but sink.ErrBadRecord until it
// succeeds or the pipeline's write context ends.
func (b *batcher) write(recs []sink.Record) error {
	m := b.p.m
	for attempt := 0; ; attempt++ {
		t0 := time.Now()
		err := b.s.Write(b.p.writeCtx, recs)
		m.sinkWrite.WithLabelValues(b.name).Observe(time.Since(t0).Seconds())
		if err == nil {
			m.sinkBatch.WithLabelValues(b.name).Observe(float64(len(recs)))
			m.delivered.WithLabelValues(b.name).Add(float64(len(recs)))
			if b.down {
				b.down = false
				m.sinkUp.WithLabelValues(b.name).Set(1)
				b.log.Info("sink back up", zap.Int("attempts", attempt+1))
			}
			return nil
		}
		m.sinkErrors.WithLabelValues(b.name).Inc()
		if errors.Is(err, sink.ErrBadRecord) {
			return err
		}
		if b.p.writeCtx.Err() != nil {
			return fmt.Errorf("pipeline: sink %s: gave up at shutdown: %w", b.name, err)
		}
		if !b.down {
			b.down = true
			m.sinkUp.WithLabelValues(b.name).Set(0)
			b.log.Warn("sink down; holding its records and retrying", zap.Error(err))
		}
		m.retries.WithLabelValues(causeSink).Inc()
		if serr := sleep(b.p.writeCtx, b.p.backoff(attempt)); serr != nil {
			return fmt.Errorf("pipeline: sink %s: gave up at shutdown: %w", b.name, err)
		}
	}
}
