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

// batcher owns one sink: it alone calls its Write, so the sink's "never
// concurrently" rule holds, and it turns the records of concurrent Process
// calls into batches.
type batcher struct {
	p    *Pipeline
	s    sink.Sink
	name string
	// in is unbuffered on purpose: a send succeeds only when the batcher
	// takes the job, so a job can never be stranded in a buffer after the
	// batcher has exited.
	in     chan *job
	exited chan struct{}
	log    *zap.Logger

	down  bool // owned by run
	batch []*job
	recs  []sink.Record
	timer *time.Timer
}

func (p *Pipeline) newBatcher(s sink.Sink) *batcher {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &batcher{
		p: p, s: s, name: s.Name(),
		in:     make(chan *job),
		exited: make(chan struct{}),
		log:    p.log.With(zap.String("sink", s.Name())),
		timer:  t,
	}
}

func (b *batcher) run() {
	defer close(b.exited)
	maxBatch := b.p.o.MaxBatch
	for {
		var first *job
		select {
		case first = <-b.in:
		case <-b.p.stop:
			b.drain()
			return
		}
		b.batch = append(b.batch[:0], first)
		b.timer.Reset(b.p.o.Linger)
	collect:
		// Stop lingering once every Process call under way has handed its
		// record over: nobody else can join this batch soon.
		for len(b.batch) < maxBatch && int64(len(b.batch)) < b.p.active.Load() {
			select {
			case j := <-b.in:
				b.batch = append(b.batch, j)
			case <-b.timer.C:
				break collect
			case <-b.p.stop:
				break collect
			}
		}
		b.timer.Stop()
		b.flush()
	}
}

// drain takes whatever senders are still waiting, writes it and returns.
func (b *batcher) drain() {
	for {
		b.batch = b.batch[:0]
	take:
		for len(b.batch) < b.p.o.MaxBatch {
			select {
			case j := <-b.in:
				b.batch = append(b.batch, j)
			default:
				break take
			}
		}
		if len(b.batch) == 0 {
			return
		}
		b.flush()
	}
}

// flush writes the batch and answers every job in it.
func (b *batcher) flush() {
	b.recs = b.recs[:0]
	for _, j := range b.batch {
		b.recs = append(b.recs, j.rec)
	}
	err := b.write(b.recs)
	if errors.Is(err, sink.ErrBadRecord) && len(b.batch) > 1 {
		// The sink checks the whole batch before writing any of it: find
		// the records it refuses, write the others.
		for _, j := range b.batch {
			j.done <- answer{j.idx, b.write([]sink.Record{j.rec})}
		}
	} else {
		for _, j := range b.batch {
			j.done <- answer{j.idx, err}
		}
	}
	clear(b.batch)
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
