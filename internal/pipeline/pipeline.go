package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/consumer"
	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/sink"
)

// Opener is the decryption core as the pipeline uses it; *decrypt.Decryptor
// implements it. Open returns a record, or an error carrying a reason
// (decrypt.Reason), decrypt.ErrDuplicate or decrypt.ErrTransient. Forget
// removes an accepted record from the replay window when it could not be
// delivered.
type Opener interface {
	Open(ctx context.Context, m decrypt.Message) (decrypt.Record, error)
	Forget(r decrypt.Record)
}

// ErrClosed is returned by Process once Close has stopped the pipeline.
var ErrClosed = errors.New("pipeline: closed")

// Defaults of Options.
const (
	DefaultMaxBatch   = 1024
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 10 * time.Second
)

// maxErrorText bounds the error text kept in a dead letter.
const maxErrorText = 1024

// Options configure a Pipeline. Opener, at least one sink and DeadLetter
// are required; zero values take the defaults.
type Options struct {
	Opener Opener
	// Sinks receive every record. Their names label metrics and must be
	// distinct, and distinct from DeadLetter's.
	Sinks []sink.Sink
	// DeadLetter receives every message that cannot be decrypted, as
	// received (sink.DeadLetter records).
	DeadLetter sink.Sink

	// MaxBatch bounds the records of one sink Write (default 1024).
	MaxBatch int
	// Linger, when positive, is the longest an idle batcher waits for more
	// records once it holds one, while other Process calls are still on
	// their way. Default 0: an idle batcher writes at once, and the records
	// that arrive during that write share the next one (group commit), so
	// batches grow with the load by themselves; lingering only adds latency
	// unless a sink charges per Write more than per record.
	Linger time.Duration
	// MinBackoff and MaxBackoff bound the wait between retries of a
	// transient fault, doubling from MinBackoff, with jitter (defaults 100ms
	// and 10s).
	MinBackoff, MaxBackoff time.Duration

	// KMSUnwraps, if set, reports the KMS unwraps made so far (the daemon
	// counts them from the key cache's audit events); Replay reports the
	// difference in its Summary.
	KMSUnwraps func() uint64

	Registerer prometheus.Registerer // nil: metrics kept, not exported
	Logger     *zap.Logger           // nil: no logging
	// Now is the clock (latency metrics); default time.Now.
	Now func() time.Time
	// Rand returns a number in [0, 1) for back-off jitter (default
	// math/rand/v2.Float64).
	Rand func() float64
}

// Pipeline is the processor between intake and sinks. Create it with New;
// it implements consumer.Processor.
type Pipeline struct {
	o        Options
	m        *metrics
	log      *zap.Logger
	batchers []*batcher
	dead     *batcher

	// active counts Process calls under way; a batcher stops lingering once
	// it holds as many records as there are calls that could send one.
	active atomic.Int64
	flight tracker

	kmsDown atomic.Bool
	seenMu  sync.Mutex
	seen    map[string]struct{} // revoked-key errors already logged

	stop      chan struct{} // closed by Close: batchers drain and exit
	writeCtx  context.Context
	cancel    context.CancelFunc // ends the batchers' retries at Close's deadline
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

var _ consumer.Processor = (*Pipeline)(nil)

// New validates o, registers the metrics and starts one batcher per sink.
func New(o Options) (*Pipeline, error) {
	switch {
	case o.Opener == nil:
		return nil, errors.New("pipeline: Options.Opener is required")
	case len(o.Sinks) == 0:
		return nil, errors.New("pipeline: Options.Sinks: at least one sink is required")
	case o.DeadLetter == nil:
		return nil, errors.New("pipeline: Options.DeadLetter is required: a message that cannot be decrypted is kept, never dropped")
	case o.MaxBatch < 0 || o.Linger < 0 || o.MinBackoff < 0 || o.MaxBackoff < 0:
		return nil, errors.New("pipeline: Options: MaxBatch, Linger and back-offs must not be negative")
	}
	if o.MaxBatch == 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		return nil, fmt.Errorf("pipeline: Options.MaxBackoff %s is below MinBackoff %s", o.MaxBackoff, o.MinBackoff)
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	names := map[string]bool{}
	var list []string
	for i, s := range append(append([]sink.Sink(nil), o.Sinks...), o.DeadLetter) {
		if s == nil {
			return nil, fmt.Errorf("pipeline: Options.Sinks[%d] is nil", i)
		}
		n := s.Name()
		if n == "" || names[n] {
			return nil, fmt.Errorf("pipeline: sink name %q: empty or used twice (names label metrics)", n)
		}
		names[n] = true
		list = append(list, n)
	}
	m, err := newMetrics(o.Registerer, list)
	if err != nil {
		return nil, err
	}
	p := &Pipeline{
		o:    o,
		m:    m,
		log:  o.Logger.With(zap.String("component", "pipeline")),
		seen: map[string]struct{}{},
		stop: make(chan struct{}),
	}
	p.flight.active = map[uint64]struct{}{}
	p.writeCtx, p.cancel = context.WithCancel(context.Background())
	for _, s := range o.Sinks {
		p.batchers = append(p.batchers, p.newBatcher(s))
	}
	p.dead = p.newBatcher(o.DeadLetter)
	for _, b := range append(append([]*batcher(nil), p.batchers...), p.dead) {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			b.run()
		}()
	}
	return p, nil
}

// Result is what became of one message.
type Result struct {
	Outcome string // OutcomeDelivered, OutcomeDeadLettered or OutcomeDuplicate
	Reason  string // the dead-letter reason, for OutcomeDeadLettered
}

// Process takes one message to the sinks or the dead-letter sink. It
// returns nil when the message may be acknowledged, or ctx's error (or
// ErrClosed) when it may not.
func (p *Pipeline) Process(ctx context.Context, m consumer.Message) error {
	_, err := p.process(ctx, decrypt.Message{Topic: m.Topic, Payload: m.Payload, Dup: m.Dup, ReceivedAt: m.ReceivedAt})
	return err
}

func (p *Pipeline) process(ctx context.Context, m decrypt.Message) (Result, error) {
	ticket := p.flight.begin()
	defer p.flight.end(ticket)
	p.active.Add(1)
	defer p.active.Add(-1)

	waited := false
	for {
		rec, err := p.open(ctx, m)
		switch {
		case err == nil:
			return p.deliver(ctx, m, rec)
		case errors.Is(err, decrypt.ErrDuplicate):
			if waited {
				p.m.duplicates.Inc()
				p.m.processed.WithLabelValues(OutcomeDuplicate).Inc()
				return Result{Outcome: OutcomeDuplicate}, nil
			}
			// The first copy may still be on its way to the sinks, and may
			// yet fail and be forgotten: acknowledge this copy only once
			// every delivery that started before it has finished, then ask
			// the decryptor again.
			if err := p.flight.waitBefore(ctx, ticket); err != nil {
				return Result{}, err
			}
			waited = true
			continue
		}
		reason := decrypt.Reason(err)
		if reason == "" {
			// Only a context end leaves open without a record or a reason.
			return Result{}, err
		}
		p.m.failures.WithLabelValues(reason).Inc()
		if reason == "key_revoked" {
			p.logOnce("message under a revoked key", err)
		}
		return p.deadLetter(ctx, m, reason, err.Error())
	}
}

// open calls the Opener, retrying transient faults until ctx ends.
func (p *Pipeline) open(ctx context.Context, m decrypt.Message) (decrypt.Record, error) {
	for attempt := 0; ; attempt++ {
		t0 := time.Now()
		rec, err := p.o.Opener.Open(ctx, m)
		p.m.decryptDur.Observe(time.Since(t0).Seconds())
		if !errors.Is(err, decrypt.ErrTransient) {
			if p.kmsDown.Load() && p.kmsDown.CompareAndSwap(true, false) {
				p.log.Info("keys resolvable again")
			}
			return rec, err
		}
		if ctx.Err() != nil {
			return decrypt.Record{}, fmt.Errorf("pipeline: %w (last attempt: %w)", ctx.Err(), err)
		}
		if p.kmsDown.CompareAndSwap(false, true) {
			p.log.Warn("key could not be resolved for now (KMS or registry unreachable); retrying, never dead-lettering", zap.Error(err))
		}
		p.m.retries.WithLabelValues(causeKMS).Inc()
		if err := sleep(ctx, p.backoff(attempt)); err != nil {
			return decrypt.Record{}, fmt.Errorf("pipeline: %w", err)
		}
	}
}

// deliver hands rec to every sink and waits until each holds it.
func (p *Pipeline) deliver(ctx context.Context, m decrypt.Message, rec decrypt.Record) (Result, error) {
	buf := rec.AppendJSON(make([]byte, 0, 320+len(rec.Data)+len(rec.Metadata)+len(rec.Topic)))
	if bytes.ContainsAny(buf, "\r\n") {
		// A plaintext or message sent pretty-printed: line breaks outside
		// strings are insignificant in JSON (inside them they are
		// escaped), and every sink frames records by line. Compact keeps
		// every token's text, so numbers keep theirs.
		var c bytes.Buffer
		if err := json.Compact(&c, buf); err == nil {
			clear(buf)
			buf = c.Bytes()
		}
	}
	clear(rec.Data)
	clear(rec.Metadata)
	sr := sink.Record{ID: rec.ID, DeviceID: rec.DeviceID, JSON: buf}
	errs, err := p.send(ctx, p.batchers, sr)
	if err != nil {
		p.o.Opener.Forget(rec)
		return Result{}, err
	}
	var rejected []error
	for i, e := range errs {
		switch {
		case e == nil:
		case errors.Is(e, sink.ErrBadRecord):
			rejected = append(rejected, fmt.Errorf("sink %s: %w", p.batchers[i].name, e))
		default:
			// The batcher gave up: the pipeline is closing.
			p.o.Opener.Forget(rec)
			return Result{}, e
		}
	}
	if len(rejected) > 0 {
		res, err := p.deadLetter(ctx, m, ReasonSinkRejected, errors.Join(rejected...).Error())
		if err != nil {
			p.o.Opener.Forget(rec)
		}
		return res, err
	}
	// Every sink holds the record and no batcher refers to it any more.
	clear(buf)
	if lat := p.o.Now().Sub(rec.Time()); lat >= 0 {
		p.m.e2e.Observe(lat.Seconds())
	} else {
		p.m.e2e.Observe(0) // a device clock ahead of ours
	}
	p.m.processed.WithLabelValues(OutcomeDelivered).Inc()
	return Result{Outcome: OutcomeDelivered}, nil
}

// deadLetter keeps m as received, with its reason, in the dead-letter sink.
func (p *Pipeline) deadLetter(ctx context.Context, m decrypt.Message, reason, errText string) (Result, error) {
	if len(errText) > maxErrorText {
		errText = errText[:maxErrorText] + "..."
	}
	received := m.ReceivedAt
	if received.IsZero() {
		received = p.o.Now()
	}
	d := sink.DeadLetter{Reason: reason, Error: errText, Topic: m.Topic, ReceivedAt: received.UTC(), Dup: m.Dup, Payload: m.Payload}
	errs, err := p.send(ctx, []*batcher{p.dead}, d.Record())
	if err == nil {
		err = errs[0]
	}
	if err != nil {
		// A dead letter the sink refuses for good (sink.ErrBadRecord) would
		// be a bug in the dead-letter encoding; retrying cannot help, and
		// dropping would lose the message: it stays unacknowledged.
		return Result{}, err
	}
	p.m.deadLetters.WithLabelValues(reason).Inc()
	p.m.processed.WithLabelValues(OutcomeDeadLettered).Inc()
	return Result{Outcome: OutcomeDeadLettered, Reason: reason}, nil
}

// send hands r to each batcher and waits for each one's answer. err is
// non-nil when ctx ended or the pipeline closed first; errs[i] is the
// answer of bs[i] otherwise.
func (p *Pipeline) send(ctx context.Context, bs []*batcher, r sink.Record) ([]error, error) {
	done := make(chan answer, len(bs))
	for i, b := range bs {
		j := &job{rec: r, idx: i, done: done}
		select {
		case b.in <- j:
		case <-b.exited:
			return nil, ErrClosed
		case <-ctx.Done():
			return nil, fmt.Errorf("pipeline: waiting for sink %s: %w", b.name, ctx.Err())
		}
	}
	errs := make([]error, len(bs))
	for range bs {
		select {
		case a := <-done:
			errs[a.idx] = a.err
		case <-ctx.Done():
			return nil, fmt.Errorf("pipeline: waiting for the sinks: %w", ctx.Err())
		}
	}
	return errs, nil
}

// logOnce logs a state worth a line once per distinct error text (bounded).
func (p *Pipeline) logOnce(msg string, err error) {
	k := err.Error()
	p.seenMu.Lock()
	_, dup := p.seen[k]
	if !dup && len(p.seen) < 1024 {
		p.seen[k] = struct{}{}
	}
	p.seenMu.Unlock()
	if !dup {
		p.log.Warn(msg, zap.Error(err))
	}
}

// backoff is the wait before retry attempt+1: MinBackoff doubled per
// attempt, capped at MaxBackoff, with jitter in its upper half so that
// retries of many messages do not march in step.
func (p *Pipeline) backoff(attempt int) time.Duration {
	d := p.o.MaxBackoff
	if attempt < 32 {
		if e := p.o.MinBackoff << attempt; e > 0 && e < d {
			d = e
		}
	}
	return d/2 + time.Duration(p.o.Rand()*float64(d/2))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops the pipeline once intake has stopped: each batcher writes
// what it still holds (retrying until ctx ends), then every sink is
// flushed and closed. Later Process calls fail with ErrClosed. Errors are
// joined; Close returns the same result when called again.
func (p *Pipeline) Close(ctx context.Context) error {
	p.closeOnce.Do(func() {
		close(p.stop)
		done := make(chan struct{})
		go func() { p.wg.Wait(); close(done) }()
		var errs []error
		select {
		case <-done:
		case <-ctx.Done():
			p.cancel() // stop retrying: waiters get an error, messages stay unacknowledged
			<-done
			errs = append(errs, fmt.Errorf("pipeline: batches still unwritten at the shutdown deadline (their messages stay unacknowledged): %w", ctx.Err()))
		}
		p.cancel()
		for _, b := range append(append([]*batcher(nil), p.batchers...), p.dead) {
			if err := b.s.Flush(ctx); err != nil {
				errs = append(errs, fmt.Errorf("pipeline: flush sink %s: %w", b.name, err))
			}
			if err := b.s.Close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("pipeline: close sink %s: %w", b.name, err))
			}
		}
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

// tracker numbers Process calls so a duplicate can wait for every call
// that started before it.
type tracker struct {
	mu      sync.Mutex
	next    uint64
	active  map[uint64]struct{}
	changed chan struct{} // closed when a call ends, made only when someone waits
}

func (t *tracker) begin() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	t.active[t.next] = struct{}{}
	return t.next
}

func (t *tracker) end(id uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.active, id)
	if t.changed != nil {
		close(t.changed)
		t.changed = nil
	}
}

// waitBefore returns once no call numbered below id is under way.
func (t *tracker) waitBefore(ctx context.Context, id uint64) error {
	for {
		t.mu.Lock()
		busy := false
		for a := range t.active {
			if a < id {
				busy = true
				break
			}
		}
		if !busy {
			t.mu.Unlock()
			return nil
		}
		if t.changed == nil {
			t.changed = make(chan struct{})
		}
		ch := t.changed
		t.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("pipeline: waiting for an earlier delivery before acknowledging a duplicate: %w", ctx.Err())
		}
	}
}
