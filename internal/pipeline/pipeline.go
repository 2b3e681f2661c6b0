package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/spool"
)

// Opener is the decryption core as the pipeline uses it; *decrypt.Decryptor
// implements it. Open returns a record, or an error carrying a reason
// (decrypt.Reason), decrypt.ErrDuplicate or decrypt.ErrTransient. Forget
// removes an accepted record from the replay window when it could not be
// delivered.
type Opener interface {
	Open(ctx context.Context, m decrypt.Message) (decrypt.Record, error)
	// TryOpen is Open that never waits: decrypt.ErrWouldBlock when Open
	// would wait for a key.
	TryOpen(m decrypt.Message) (decrypt.Record, error)
	Forget(r decrypt.Record)
}

// RecordEncoder is implemented by a sink that encodes the records it
// receives itself, for instance under a per-sink field policy (fields
// dropped, hashed or pseudonymized): the pipeline hands that sink what
// AppendRecord appended to dst instead of the record's standard JSON
// (decrypt.Record.AppendJSON), which the other sinks share. It is called
// once per record, on the goroutine delivering it, before the plaintext is
// wiped, and must not keep rec; dst is a recycled buffer, wiped once the
// sink has written it. An error refuses the record for that sink only, as
// sink.ErrBadRecord does (dead-lettered as sink_rejected). The output must
// be one line of JSON, like every record.
type RecordEncoder interface {
	AppendRecord(dst []byte, rec *decrypt.Record) ([]byte, error)
}

// ErrClosed is returned by Process once Close has stopped the pipeline.
var ErrClosed = errors.New("pipeline: closed")

// Defaults of Options.
const (
	DefaultMaxBatch = 1024
	// DefaultMaxBatchBytes bounds a batch's records' JSON (4 MiB).
	DefaultMaxBatchBytes = 4 << 20
	DefaultMinBackoff    = 100 * time.Millisecond
	DefaultMaxBackoff    = 10 * time.Second
	DefaultKeyWait       = time.Second
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
	// MaxBatchBytes bounds the bytes (records' JSON) of one sink Write
	// beside MaxBatch, so that what a sink copies for one write is bounded
	// whatever the record sizes; a record larger than it is written alone
	// (default DefaultMaxBatchBytes).
	MaxBatchBytes int
	// Linger, when positive, is the longest a record waits for others to
	// join its batch, unless the batch reaches MaxBatch first; a lone record
	// of the only delivery under way is written at once. Default 0: the
	// writer takes what is pending whenever it is free, and the records
	// that arrive during a write share the next one (group commit), so
	// batches grow with the load by themselves; a Linger makes them larger
	// still, for fewer writes and fsyncs per record at the cost of up to
	// that much latency.
	Linger time.Duration
	// MinBackoff and MaxBackoff bound the wait between retries of a
	// transient fault, doubling from MinBackoff, with jitter (defaults 100ms
	// and 10s).
	MinBackoff, MaxBackoff time.Duration

	// Spool, if set, keeps messages whose key cannot be resolved for now
	// (decrypt.ErrTransient) durably, so that they are acknowledged and
	// the others keep moving; see spool.go. The pipeline runs its replay
	// loop and closes it at Close.
	Spool *spool.Spool
	// KeyWait, with a Spool, bounds how long a message waits for its key
	// before it is spooled (default 1s): a KMS that hangs delays a
	// message by at most this much.
	KeyWait time.Duration

	// KMSUnwraps, if set, reports the KMS unwraps made so far (the daemon
	// counts them from the key cache's audit events); Replay reports the
	// difference in its Summary.
	KMSUnwraps func() uint64

	// SinkState, if set, is told when a sink goes down (up false, err
	// its failure) and when it is back up (up true, err nil), once per
	// change, on that sink's writer goroutine; it must not block. The
	// daemon's health tracker listens here (decryptd_degraded{cause="sink"}).
	SinkState func(sink string, up bool, err error)

	Registerer prometheus.Registerer // nil: metrics kept, not exported
	Logger     *zap.Logger           // nil: no logging
	// Now is the clock (latency metrics); default time.Now.
	Now func() time.Time
	// Rand returns a number in [0, 1) for back-off jitter (default
	// math/rand/v2.Float64).
	Rand func() float64
}

// Pipeline is the processor between intake and sinks. Create it with New;
// it implements intake.Processor.
type Pipeline struct {
	o        Options
	m        *metrics
	log      *zap.Logger
	batchers []*batcher
	dead     *batcher

	// active counts Process calls under way, with a positive Linger only
	// (the one place it is read): a batcher stops lingering once it holds
	// as many records as there are calls that could send one. Without a
	// Linger it is not kept, sparing every message two increments of one
	// shared counter.
	active atomic.Int64
	flight tracker
	// encoders: some sink is a RecordEncoder, so records are encoded per
	// sink as well (deliver); without, one encoding is shared.
	encoders bool

	bufs       sync.Pool // *[]byte for records' JSON, see getBuf
	deliveries sync.Pool // *delivery, see begin and finish

	sp *spool.Spool // nil without a spool
	// lastTransient is when a key was last found unresolvable (Unix ns):
	// during an outage, messages are spooled without waiting KeyWait.
	lastTransient atomic.Int64
	replayCancel  context.CancelFunc
	replayDone    chan struct{}

	kmsDown atomic.Bool
	seenMu  sync.Mutex
	seen    map[string]struct{} // revoked-key errors already logged

	// settleq hands written records' answers to the settlers (see
	// settle); closed by Close once every writer has exited.
	settleq  chan *[]ack
	acks     sync.Pool // *[]ack, the chunks
	settlers sync.WaitGroup

	stop      chan struct{} // closed by Close: batchers drain and exit
	writeCtx  context.Context
	cancel    context.CancelFunc // ends the batchers' retries at Close's deadline
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

var _ intake.Processor = (*Pipeline)(nil)

// New validates o, registers the metrics and starts one batcher per sink.
func New(o Options) (*Pipeline, error) {
	switch {
	case o.Opener == nil:
		return nil, errors.New("pipeline: Options.Opener is required")
	case len(o.Sinks) == 0:
		return nil, errors.New("pipeline: Options.Sinks: at least one sink is required")
	case o.DeadLetter == nil:
		return nil, errors.New("pipeline: Options.DeadLetter is required: a message that cannot be decrypted is kept, never dropped")
	case o.MaxBatch < 0 || o.MaxBatchBytes < 0 || o.Linger < 0 || o.MinBackoff < 0 || o.MaxBackoff < 0 || o.KeyWait < 0:
		return nil, errors.New("pipeline: Options: MaxBatch, MaxBatchBytes, Linger, back-offs and KeyWait must not be negative")
	}
	if o.MaxBatch == 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.MaxBatchBytes == 0 {
		o.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.KeyWait == 0 {
		o.KeyWait = DefaultKeyWait
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
	p.writeCtx, p.cancel = context.WithCancel(context.Background())
	nset := runtime.GOMAXPROCS(0)
	p.settleq = make(chan *[]ack, settleQueue)
	for range nset {
		p.settlers.Add(1)
		go func() {
			defer p.settlers.Done()
			pprof.Do(context.Background(), pprof.Labels("goroutine", "settler"), func(context.Context) {
				p.settler()
			})
		}()
	}
	for _, s := range o.Sinks {
		b := p.newBatcher(s)
		p.encoders = p.encoders || b.enc != nil
		p.batchers = append(p.batchers, b)
	}
	p.dead = p.newBatcher(o.DeadLetter)
	for _, b := range append(append([]*batcher(nil), p.batchers...), p.dead) {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			// The label lets a CPU profile tell the writers' serial work
			// apart (go tool pprof -tagfocus goroutine=writer): it caps a
			// replica's records per second, whatever the cores.
			pprof.Do(context.Background(), pprof.Labels("goroutine", "writer", "sink", b.name), func(context.Context) {
				b.run()
			})
		}()
	}
	p.startSpool()
	return p, nil
}

// Result is what became of one message.
type Result struct {
	Outcome string // OutcomeDelivered, OutcomeDeadLettered or OutcomeDuplicate
	Reason  string // the dead-letter reason, for OutcomeDeadLettered
	Cause   string // DuplicateRedelivery or DuplicateRepeat, for OutcomeDuplicate
}

// Process takes m towards the sinks (or the dead-letter sink) and calls
// done exactly once: nil when m may be acknowledged, ctx's error or
// ErrClosed when it may not. Process returns as soon as m no longer needs
// the calling goroutine: it blocks while m's key is loaded, a transient
// fault is retried or a duplicate waits for its first copy, but not while
// the sinks write and fsync, so one goroutine can keep many messages in
// flight. done may run on another goroutine, before or after Process
// returns, and must not block. m.Payload must stay untouched until done.
// Records reach each sink in the order of the Process (and TryProcess)
// calls that handed them over.
func (p *Pipeline) Process(ctx context.Context, m intake.Message, done func(error)) {
	p.submit(ctx, m, done, nil)
}

// TryProcess is Process for a caller that must never block (the MQTT
// intake's own goroutine): when m would have to wait (its key is not
// cached, a transient fault, a possible duplicate) it returns false having
// done nothing, and the caller hands m to Process on a goroutine that may
// wait. Otherwise it returns true and done is called as for Process; ctx
// bounds only how long a failing sink retries m.
func (p *Pipeline) TryProcess(ctx context.Context, m intake.Message, done func(error)) bool {
	if p.sp != nil && !p.sp.Idle() && p.sp.Pending(spool.Key(m)) {
		return false // behind its device's spooled messages: Process spools it
	}
	t0 := time.Now()
	rec, err := p.o.Opener.TryOpen(m)
	if errors.Is(err, decrypt.ErrWouldBlock) || errors.Is(err, decrypt.ErrTransient) || errors.Is(err, decrypt.ErrDuplicate) {
		return false
	}
	p.m.decryptDur.Observe(time.Since(t0).Seconds())
	d := p.begin(ctx, m, done, nil)
	p.opened(d, rec, err)
	return true
}

// Handle is Process that waits: it returns what became of m once done, or
// ctx's error when ctx ends first (a record already handed to a sink may
// still be written then; m must not be acknowledged).
func (p *Pipeline) Handle(ctx context.Context, m intake.Message) (Result, error) {
	return p.handle(ctx, m)
}

func (p *Pipeline) handle(ctx context.Context, m decrypt.Message) (Result, error) {
	type outcome struct {
		res Result
		err error
	}
	ch := make(chan outcome, 1)
	p.submit(ctx, m, nil, func(r Result, err error) { ch <- outcome{r, err} })
	select {
	case o := <-ch:
		return o.res, o.err
	case <-ctx.Done():
		return Result{}, fmt.Errorf("pipeline: waiting for the sinks: %w", ctx.Err())
	}
}

// delivery is one message on its way: decrypted and handed to the sinks,
// or to the dead-letter sink, until each has answered. Batchers answer on
// their own goroutines; the last answer finishes it.
type delivery struct {
	p      *Pipeline
	ctx    context.Context // a batcher retrying a failed write gives up on it when this ends
	m      decrypt.Message
	ticket flightTicket        // in p.flight from begin to finish
	done   func(error)         // the consumer's callback, or
	fin    func(Result, error) // Handle's

	rec    decrypt.Record
	hasRec bool      // rec was accepted by the Opener: Forget it if it is not delivered
	buf    *[]byte   // rec's JSON, wiped and recycled once every sink is done with it
	own    []*[]byte // by sink: the record as its RecordEncoder wrote it (nil without encoders)
	dead   bool      // the job out is a dead letter
	reason string    // its reason

	pending atomic.Int32
	errs    []error  // each sink's answer, by index
	errBuf  [1]error // errs' storage with one sink: no allocation per message
}

func (p *Pipeline) begin(ctx context.Context, m decrypt.Message, done func(error), fin func(Result, error)) *delivery {
	if p.o.Linger > 0 {
		p.active.Add(1)
	}
	// Deliveries are recycled (one 512-byte allocation less per message):
	// finish is the last use of one, see there.
	d, _ := p.deliveries.Get().(*delivery)
	if d == nil {
		d = new(delivery)
	}
	*d = delivery{p: p, ctx: ctx, m: m, done: done, fin: fin}
	p.flight.begin(&d.ticket)
	return d
}

// finish ends d: its ticket, then the caller's callback; then d goes back
// to the pool. Contract: finish runs once, as the very last use of d by
// anyone: every path that finishes d returns without touching it again,
// no batcher holds an unanswered job of it (the last answer is what
// finishes a delivered one), and its ticket is unlinked here. The callbacks
// get what they need as arguments and never see d.
func (d *delivery) finish(res Result, err error) {
	p := d.p
	p.flight.end(&d.ticket)
	if p.o.Linger > 0 {
		p.active.Add(-1)
	}
	done, fin := d.done, d.fin
	*d = delivery{} // drop the message, the context and the callbacks
	p.deliveries.Put(d)
	if done != nil {
		done(err)
	} else {
		fin(res, err)
	}
}

func (p *Pipeline) submit(ctx context.Context, m decrypt.Message, done func(error), fin func(Result, error)) {
	d := p.begin(ctx, m, done, fin)
	var spoolable *delivery
	if p.sp != nil && done != nil {
		// Handle (fin) is for callers that wait for the outcome: never
		// spooled.
		if p.spoolBehind(d) {
			return
		}
		spoolable = d
	}
	waited := false
	for {
		rec, err := p.open(ctx, m, spoolable)
		if errors.Is(err, errSpooled) {
			return
		}
		if errors.Is(err, decrypt.ErrDuplicate) && !waited {
			// An exact repeat (a broker redelivery, or a device's resend):
			// the first copy may still be on its way to the sinks, and may
			// yet fail and be forgotten: acknowledge this copy only once
			// every delivery that started before it has finished, then ask
			// the decryptor again (a forgotten first copy makes this one
			// new).
			if werr := p.flight.waitBefore(ctx, &d.ticket); werr != nil {
				d.finish(Result{}, werr)
				return
			}
			waited = true
			continue
		}
		p.opened(d, rec, err)
		return
	}
}

// opened takes d on from the Opener's answer.
func (p *Pipeline) opened(d *delivery, rec decrypt.Record, err error) {
	switch {
	case err == nil:
		p.deliver(d, rec)
		return
	case errors.Is(err, decrypt.ErrDuplicate):
		cause := DuplicateRepeat
		if d.m.Redelivered {
			cause = DuplicateRedelivery
		}
		p.m.duplicates.WithLabelValues(cause).Inc()
		p.m.processedDuplicate.Inc()
		d.finish(Result{Outcome: OutcomeDuplicate, Cause: cause}, nil)
		return
	}
	reason := decrypt.Reason(err)
	if reason == "" {
		// Only a context end leaves open without a record or a reason.
		d.finish(Result{}, err)
		return
	}
	p.m.failures.WithLabelValues(reason).Inc()
	if reason == "key_revoked" {
		p.logOnce("message under a revoked key", err)
	}
	p.deadLetter(d, reason, err.Error())
}

// sinkState reports a sink's change of state to Options.SinkState.
func (p *Pipeline) sinkState(name string, up bool, err error) {
	if p.o.SinkState != nil {
		p.o.SinkState(name, up, err)
	}
}

// open calls the Opener, retrying transient faults until ctx ends. With
// spoolable (a Process call, with a Spool) it waits at most KeyWait for a
// key and then spools the message (errSpooled: spoolable is finished once
// the spool holds it), or, when the spool is full, goes on retrying.
func (p *Pipeline) open(ctx context.Context, m decrypt.Message, spoolable *delivery) (decrypt.Record, error) {
	for attempt := 0; ; attempt++ {
		t0 := time.Now()
		octx, cancel := ctx, context.CancelFunc(func() {})
		if spoolable != nil {
			octx, cancel = context.WithTimeout(ctx, p.keyWait())
		}
		rec, err := p.o.Opener.Open(octx, m)
		cancel()
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
		p.lastTransient.Store(time.Now().UnixNano())
		if spoolable != nil && p.spool(spoolable, false) {
			return decrypt.Record{}, errSpooled
		}
		p.m.retries.WithLabelValues(causeKMS).Inc()
		if err := sleep(ctx, p.backoff(attempt)); err != nil {
			return decrypt.Record{}, fmt.Errorf("pipeline: %w", err)
		}
	}
}

// deliver hands rec to every sink; the last sink's answer finishes d.
func (p *Pipeline) deliver(d *delivery, rec decrypt.Record) {
	bp := p.getBuf(320 + len(rec.Data) + len(rec.Metadata) + len(rec.Topic))
	buf := rec.AppendJSON(*bp)
	// Two IndexByte scans (vectorised) cost a fraction of one ContainsAny
	// (a byte at a time) on every record.
	if bytes.IndexByte(buf, '\n') >= 0 || bytes.IndexByte(buf, '\r') >= 0 {
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
	*bp = buf // grown, or replaced by the compacted copy: the buffer to recycle
	d.rec, d.hasRec, d.buf = rec, true, bp
	var encErrs []error
	if p.encoders {
		// &d.rec, not &rec: rec stays on the stack.
		d.own, encErrs = p.encodeOwn(&d.rec)
	}
	clear(rec.Data)
	clear(rec.Metadata)
	if len(p.batchers) == 1 {
		d.errs = d.errBuf[:]
	} else {
		d.errs = make([]error, len(p.batchers))
	}
	d.pending.Store(int32(len(p.batchers)))
	sr := sink.Record{ID: rec.ID, DeviceID: rec.DeviceID, JSON: buf, KeyID: rec.KeyID, KeyVersion: rec.KeyVersion, Sealed: rec.Sealed}
	for i, b := range p.batchers {
		r := sr
		if d.own != nil && b.enc != nil {
			if encErrs[i] != nil {
				d.answer(i, encErrs[i])
				continue
			}
			r.JSON = *d.own[i]
		}
		if !b.add(job{rec: r, d: d, idx: i}) {
			d.answer(i, ErrClosed)
		}
	}
}

// encodeOwn runs each RecordEncoder sink's encoding of rec into a buffer
// of its own; errs[i] is sink i's refusal (sink.ErrBadRecord).
func (p *Pipeline) encodeOwn(rec *decrypt.Record) (own []*[]byte, errs []error) {
	own = make([]*[]byte, len(p.batchers))
	errs = make([]error, len(p.batchers))
	for i, b := range p.batchers {
		if b.enc == nil {
			continue
		}
		bp := p.getBuf(320 + len(rec.Data) + len(rec.Metadata) + len(rec.Topic))
		out, err := b.enc.AppendRecord(*bp, rec)
		*bp = out
		own[i] = bp
		if err == nil && (len(out) == 0 || bytes.ContainsAny(out, "\r\n")) {
			err = errors.New("not one line of JSON")
		}
		if err != nil {
			errs[i] = fmt.Errorf("encode record: %w: %w", sink.ErrBadRecord, err)
		}
	}
	return own, errs
}

// putOwn recycles the buffers of encodeOwn.
func (d *delivery) putOwn() {
	for i, bp := range d.own {
		d.p.putBuf(bp)
		d.own[i] = nil
	}
	d.own = nil
}

// deadLetter hands m as received, with its reason, to the dead-letter
// sink; its answer finishes d.
func (p *Pipeline) deadLetter(d *delivery, reason, errText string) {
	if len(errText) > maxErrorText {
		errText = errText[:maxErrorText] + "..."
	}
	m := d.m
	received := m.ReceivedAt
	if received.IsZero() {
		received = p.o.Now()
	}
	dl := sink.DeadLetter{Reason: reason, Error: errText, Message: m}
	dl.ReceivedAt = received.UTC()
	d.dead, d.reason = true, reason
	d.errBuf[0] = nil
	d.errs = d.errBuf[:]
	d.pending.Store(1)
	if !p.dead.add(job{rec: dl.Record(), d: d}) {
		d.answer(0, ErrClosed)
	}
}

// answer records a batcher's answer for d (nil: the sink holds the record)
// and, with the last one, takes d on.
func (d *delivery) answer(idx int, err error) {
	d.errs[idx] = err
	if d.pending.Add(-1) != 0 {
		return
	}
	p := d.p
	if d.dead {
		if err != nil {
			// A dead letter the sink refuses for good (sink.ErrBadRecord)
			// would be a bug in the dead-letter encoding; retrying cannot
			// help, and dropping would lose the message: it stays
			// unacknowledged.
			d.forget()
			d.finish(Result{}, err)
			return
		}
		p.m.deadLetters.WithLabelValues(d.reason).Inc()
		p.m.processedDeadLettered.Inc()
		d.finish(Result{Outcome: OutcomeDeadLettered, Reason: d.reason}, nil)
		return
	}
	var rejected []error
	for i, e := range d.errs {
		switch {
		case e == nil:
		case errors.Is(e, sink.ErrBadRecord):
			rejected = append(rejected, fmt.Errorf("sink %s: %w", p.batchers[i].name, e))
		default:
			// The batcher gave up: the pipeline is closing, or nobody
			// waits for the record any more.
			d.forget()
			d.finish(Result{}, e)
			return
		}
	}
	// Every sink is done with the record: no batcher refers to it any more.
	p.putBuf(d.buf)
	d.buf = nil
	d.putOwn()
	if len(rejected) > 0 {
		p.deadLetter(d, ReasonSinkRejected, errors.Join(rejected...).Error())
		return
	}
	if lat := p.o.Now().Sub(d.rec.Time()); lat >= 0 {
		p.m.e2e.Observe(lat.Seconds())
	} else {
		p.m.e2e.Observe(0) // a device clock ahead of ours
	}
	p.m.processedDelivered.Inc()
	d.finish(Result{Outcome: OutcomeDelivered}, nil)
}

// forget takes an undelivered record out of the replay window, so that the
// broker's redelivery is decrypted again instead of being taken for a
// duplicate or a replay.
func (d *delivery) forget() {
	if d.hasRec {
		d.p.o.Opener.Forget(d.rec)
		d.hasRec = false
	}
	d.p.putBuf(d.buf)
	d.buf = nil
	d.putOwn()
}

// getBuf returns an empty buffer for a record's JSON, with room for n
// bytes; putBuf wipes it (it held plaintext) and keeps it for the next
// record. Records are similar in size, so a pool saves an allocation of a
// few hundred bytes per message.
func (p *Pipeline) getBuf(n int) *[]byte {
	if b, ok := p.bufs.Get().(*[]byte); ok {
		if cap(*b) < n {
			*b = make([]byte, 0, n)
		}
		*b = (*b)[:0]
		return b
	}
	b := make([]byte, 0, max(n, 512))
	return &b
}

func (p *Pipeline) putBuf(b *[]byte) {
	if b == nil {
		return
	}
	clear(*b)
	if cap(*b) > 64<<10 {
		return // an outsized record: let it go
	}
	*b = (*b)[:0]
	p.bufs.Put(b)
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

// closeGrace is how long Close, called after its deadline, waits for
// writers to exit before reporting unwritten batches.
const closeGrace = 250 * time.Millisecond

// Close stops the pipeline once intake has stopped: each batcher writes
// what it still holds (retrying until ctx ends), then every sink is
// flushed and closed. Later Process calls fail with ErrClosed. Errors are
// joined; Close returns the same result when called again.
func (p *Pipeline) Close(ctx context.Context) error {
	p.closeOnce.Do(func() {
		p.stopReplay()
		close(p.stop)
		done := make(chan struct{})
		go func() {
			p.wg.Wait()
			// The writers' last answers may still be with the settlers.
			close(p.settleq)
			p.settlers.Wait()
			close(done)
		}()
		var errs []error
		// Finished batchers win over a deadline already past, so that a
		// healthy sink is never reported as holding unwritten batches: when
		// an earlier shutdown step used up the deadline, writers holding
		// nothing still get a moment to exit.
		if ctx.Err() != nil {
			t := time.NewTimer(closeGrace)
			select {
			case <-done:
			case <-t.C:
			}
			t.Stop()
		}
		select {
		case <-done:
		default:
			select {
			case <-done:
			case <-ctx.Done():
				p.cancel() // stop retrying: waiters get an error, messages stay unacknowledged
				<-done
				errs = append(errs, fmt.Errorf("pipeline: batches still unwritten at the shutdown deadline (their messages stay unacknowledged): %w", ctx.Err()))
			}
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
		if p.sp != nil {
			if err := p.sp.Close(); err != nil {
				errs = append(errs, fmt.Errorf("pipeline: close spool: %w", err))
			}
		}
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}
