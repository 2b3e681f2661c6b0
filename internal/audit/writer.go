package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/decryptd/decryptd/internal/fileperm"
	"github.com/decryptd/decryptd/internal/fsutil"
)

type options struct {
	actor string
	clock func() time.Time
}

// Option configures Open.
type Option func(*options)

// WithActor sets the actor of events that name none (default "decryptd").
func WithActor(a string) Option { return func(o *options) { o.actor = a } }

// WithClock sets the clock that stamps events without a Time (tests).
func WithClock(now func() time.Time) Option { return func(o *options) { o.clock = now } }

// Writer appends events to an audit log. Safe for concurrent use, and for
// use alongside Writers in other processes on the same file.
//
// Concurrent appends are committed in groups: the appends queued while one
// group is written and fsynced are written together by the next (one
// flock, one write(2), one fsync), so N concurrent unwraps cost about two
// fsyncs instead of N in a row. Each call still returns only once its own
// lines are durable.
type Writer struct {
	path string
	opt  options

	// lead is the group commit's baton (capacity 1): its holder takes every
	// queued request and commits them; the others wait for their answer or
	// for the baton, whichever comes first.
	lead  chan struct{}
	qmu   sync.Mutex
	queue []*request

	mu     sync.Mutex // the file state below; held by the leader while it writes
	f      *os.File
	size   int64 // the file's size after our last append; -1: unknown
	prev   string
	seq    uint64
	buf    []byte // one encoded line
	batch  []byte // a group's lines
	closed bool
}

// Open opens (creating, mode 0600) the audit log at path and reads its last
// line, so the next event continues the chain.
func Open(ctx context.Context, path string, opts ...Option) (*Writer, error) {
	o := options{actor: "decryptd", clock: time.Now}
	for _, f := range opts {
		f(&o)
	}
	if !validToken(o.actor) {
		return nil, fmt.Errorf("%w: actor %q", ErrInvalidEvent, o.actor)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit log %s: %w", path, err)
	}
	if err := fileperm.Private(path, fi.Mode()); err != nil {
		f.Close()
		return nil, fmt.Errorf("audit log %w", err)
	}
	w := &Writer{path: path, opt: o, f: f, size: -1, lead: make(chan struct{}, 1)}
	if err := fsutil.Lock(ctx, f, fsutil.Exclusive); err != nil {
		f.Close()
		return nil, fmt.Errorf("audit log %s: lock: %w", path, err)
	}
	defer fsutil.Unlock(f)
	if err := w.syncTail(); err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

// Append writes e as the next line and returns it as written (Seq, Prev,
// Hash, Time, Actor filled in). It returns after the line is fsynced.
func (w *Writer) Append(ctx context.Context, e Event) (Event, error) {
	if e.Actor == "" {
		e.Actor = w.opt.actor
	}
	if e.Time.IsZero() {
		e.Time = w.opt.clock()
	}
	if err := e.normalise(); err != nil {
		return Event{}, err
	}
	out, err := w.commit(ctx, []Event{e})
	if err != nil {
		return Event{}, err
	}
	return out[0], nil
}

// AppendMany writes events as consecutive lines and returns them as written,
// like Append does for one, but under one lock, with one write(2) and one
// fsync for the whole batch: provisioning 100,000 keys records 100,000
// events, which one fsync each would make take minutes. Every event is
// checked before anything is written, so an invalid one fails the batch
// with ErrInvalidEvent and writes nothing. The events are in the log, in
// order and chained, once AppendMany returned nil; a crash during the write
// leaves a prefix of them (the torn last line is cut by the next writer).
func (w *Writer) AppendMany(ctx context.Context, events []Event) ([]Event, error) {
	if len(events) == 0 {
		return nil, nil
	}
	out := make([]Event, len(events))
	for i, e := range events {
		if e.Actor == "" {
			e.Actor = w.opt.actor
		}
		if e.Time.IsZero() {
			e.Time = w.opt.clock()
		}
		if err := e.normalise(); err != nil {
			return nil, fmt.Errorf("events[%d]: %w", i, err)
		}
		out[i] = e
	}
	return w.commit(ctx, out)
}

// request is one Append or AppendMany waiting for its group: events, once
// normalised; out and err, set before done is closed.
type request struct {
	ctx    context.Context
	events []Event
	out    []Event
	err    error
	done   chan struct{}
}

// commit queues events (normalised, consecutive in the log) and returns
// them as written once they are durable. The caller that takes the baton
// writes every queued request in one group; the others wait for it.
func (w *Writer) commit(ctx context.Context, events []Event) ([]Event, error) {
	r := &request{ctx: ctx, events: events, done: make(chan struct{})}
	w.qmu.Lock()
	w.queue = append(w.queue, r)
	w.qmu.Unlock()
	for {
		select {
		case <-r.done:
			return r.out, r.err
		case w.lead <- struct{}{}:
		}
		select {
		case <-r.done: // answered by the leader before us
		default:
			w.writeGroup(r)
		}
		<-w.lead
		select {
		case <-r.done:
			return r.out, r.err
		default:
			// Our lock attempt failed on our own context and someone
			// else's request went first: wait again.
		}
	}
}

// writeGroup, called with the baton, commits every queued request. The
// file lock is taken under the leader's context: if that fails, only the
// leader's own request (me) is answered, and the others stay queued for
// the next leader, so one caller's cancelled context fails no one else.
func (w *Writer) writeGroup(me *request) {
	w.qmu.Lock()
	group := w.queue
	w.queue = nil
	w.qmu.Unlock()
	answer := func(rs []*request, err error) {
		for _, r := range rs {
			if err != nil {
				r.out, r.err = nil, err
			}
			close(r.done)
		}
	}
	requeue := func(rs []*request) {
		w.qmu.Lock()
		w.queue = append(rs, w.queue...)
		w.qmu.Unlock()
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		answer(group, errors.New("audit log: closed"))
		return
	}
	if err := fsutil.Lock(me.ctx, w.f, fsutil.Exclusive); err != nil {
		others := make([]*request, 0, len(group))
		for _, r := range group {
			if r != me {
				others = append(others, r)
			}
		}
		requeue(others)
		answer([]*request{me}, fmt.Errorf("audit log %s: lock: %w", w.path, err))
		return
	}
	defer fsutil.Unlock(w.f)
	fi, err := w.f.Stat()
	if err != nil {
		answer(group, fmt.Errorf("audit log %s: %w", w.path, err))
		return
	}
	if fi.Size() != w.size {
		// Another process appended (or our last write failed half way).
		if err := w.syncTail(); err != nil {
			answer(group, err)
			return
		}
	}
	seq, prev := w.seq, w.prev
	batch := w.batch[:0]
	written := group[:0:0]
	for _, r := range group {
		// A request whose line cannot be encoded fails alone; the chain
		// goes on from the request before it.
		s0, p0, n0 := seq, prev, len(batch)
		out := make([]Event, len(r.events))
		var rerr error
		for i, e := range r.events {
			seq++
			e.Seq, e.Prev = seq, prev
			line, h, err := encodeLine(w.buf, &e)
			if err != nil {
				rerr = err
				break
			}
			w.buf = line
			batch = append(batch, line...)
			batch = append(batch, '\n')
			e.Hash, prev = h, h
			out[i] = e
		}
		if rerr != nil {
			seq, prev, batch = s0, p0, batch[:n0]
			answer([]*request{r}, rerr)
			continue
		}
		r.out = out
		written = append(written, r)
	}
	w.batch = batch[:0]
	if len(written) == 0 {
		return
	}
	if _, err := w.f.Write(batch); err != nil {
		w.size = -1
		answer(written, fmt.Errorf("audit log %s: write: %w", w.path, err))
		return
	}
	if err := w.f.Sync(); err != nil {
		w.size = -1
		answer(written, fmt.Errorf("audit log %s: fsync: %w", w.path, err))
		return
	}
	w.size += int64(len(batch))
	w.prev, w.seq = prev, seq
	answer(written, nil)
}

// Head returns the anchor of the last line this Writer knows of: keep it
// elsewhere to detect truncation later (VerifyAnchor).
func (w *Writer) Head() Anchor {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Anchor{Seq: w.seq, Hash: w.prev}
}

// Close closes the file. Safe to call more than once.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	return w.f.Close()
}

// syncTail reads the last whole line for seq and hash, first cutting away a
// torn last line (a crashed writer's, never acknowledged). The caller holds
// the file lock.
func (w *Writer) syncTail() error {
	fi, err := w.f.Stat()
	if err != nil {
		return fmt.Errorf("audit log %s: %w", w.path, err)
	}
	size := fi.Size()
	if size == 0 {
		w.size, w.seq, w.prev = 0, 0, zeroHash
		return nil
	}
	n := min(size, int64(2*maxLine+2))
	tail := make([]byte, n)
	if _, err := w.f.ReadAt(tail, size-n); err != nil {
		return fmt.Errorf("audit log %s: read tail: %w", w.path, err)
	}
	if tail[len(tail)-1] != '\n' {
		cut := bytes.LastIndexByte(tail, '\n') + 1 // 0 if none
		if cut == 0 && n < size {
			return fmt.Errorf("audit log %s: last line longer than %d bytes", w.path, 2*maxLine)
		}
		keep := size - n + int64(cut)
		if err := w.f.Truncate(keep); err != nil {
			return fmt.Errorf("audit log %s: cut torn last line: %w", w.path, err)
		}
		if err := w.f.Sync(); err != nil {
			return fmt.Errorf("audit log %s: fsync: %w", w.path, err)
		}
		return w.syncTail()
	}
	body := tail[:len(tail)-1]
	start := bytes.LastIndexByte(body, '\n') + 1
	if start == 0 && n < size {
		return fmt.Errorf("audit log %s: last line longer than %d bytes", w.path, 2*maxLine)
	}
	e, err := parseLine(body[start:])
	if err != nil {
		// Appending onto a line that does not verify would hide the damage
		// behind a fresh, valid-looking tail.
		return fmt.Errorf("audit log %s: last line does not verify, refusing to append: %w", w.path, err)
	}
	w.size, w.seq, w.prev = size, e.Seq, e.Hash
	return nil
}
