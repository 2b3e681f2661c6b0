package consumer

import (
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Ordering and acknowledgement: the per-topic workers that call the
// Processor for messages that may wait, retrying in order, and the acker
// of each link, which writes the PUBACKs of the finished prefix of its
// connection's receive order (MQTT-4.6.0-2), in one write per prefix.
//
// Workers are keyed by topic across links: a topic's messages that came in
// on different connections queue behind each other in the order their
// routers handed them over, so a replica processes one topic's messages
// one at a time whatever connection brought them.

// finish is the Processor's done for e.
func (e *entry) finish(err error) {
	c := e.c
	if err != nil && c.procCtx.Err() == nil {
		// A Processor returns an error only when its context ended; one
		// that does otherwise breaks that contract, and the message is
		// retried rather than left blocking every later acknowledgement
		// until a reconnect: in the worker, in order, when the call has
		// not returned yet, otherwise on its own after a back-off.
		e.callErr = err
		if e.call.CompareAndSwap(callRunning, callFailedInCall) {
			return
		}
		c.retryLater(e)
		return
	}
	if err == nil {
		e.done.Store(true)
		// Only the oldest unacknowledged message of its connection lets the
		// acker advance; a later one waits for it anyway, so it wakes no
		// one. (The acker stores the next head before it checks that
		// head's done, and this loads head after storing done: one of the
		// two sees the other.)
		if e.l.head.Load() == e {
			select {
			case e.l.ackWake <- struct{}{}:
			default:
			}
		}
	}
	c.unref(e)
}

func (c *Consumer) work(q *workQueue) {
	defer c.wg.Done()
	for {
		e, ok := q.pop(c.quit)
		if !ok {
			return
		}
		if e.gen != e.l.currentGen() || c.procCtx.Err() != nil {
			// Its connection is gone and the broker redelivers it on the
			// new one (processing this copy would only duplicate work), or
			// the shutdown deadline passed and it stays unacknowledged.
			e.l.m.released.Inc()
			c.unref(e)
			q.busy.Add(-1)
			continue
		}
		q.proc.Lock() // waits for a fast-path call of these topics under way
		c.process(e)
		q.proc.Unlock()
		// Only now may a later message of these topics take the fast
		// path: whatever this call handed on went first.
		q.busy.Add(-1)
	}
}

// process runs the Processor on e in this worker, retrying in place (so
// order holds) when it fails e before returning.
func (c *Consumer) process(e *entry) {
	backoff := 100 * time.Millisecond
	for {
		e.call.Store(callRunning)
		c.proc.Process(c.procCtx, e.message(), e.finish)
		if e.call.CompareAndSwap(callRunning, callReturned) {
			return // done was called, or will be
		}
		c.log.Error("processor failed before shutdown; retrying the message", zap.Error(e.callErr), zap.Duration("backoff", backoff))
		select {
		case <-time.After(backoff):
		case <-c.procCtx.Done():
			c.unref(e) // stays unacknowledged
			return
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// retryLater runs the Processor on e again after a back-off, on its own
// goroutine: e failed after its call returned, when later messages of its
// topic may already be on their way, so in-place order cannot be kept.
func (c *Consumer) retryLater(e *entry) {
	e.backoff = min(max(2*e.backoff, 100*time.Millisecond), 5*time.Second)
	c.log.Error("processor failed before shutdown; retrying the message", zap.Error(e.callErr), zap.Duration("backoff", e.backoff))
	time.AfterFunc(e.backoff, func() {
		if c.procCtx.Err() != nil {
			c.unref(e)
			return
		}
		e.call.Store(callReturned) // from now on every failure retries here
		c.proc.Process(c.procCtx, e.message(), e.finish)
	})
}

// acker sends l's acknowledgements in receive order: only the finished
// prefix of the current connection's receive queue is acknowledged, so one
// slow message holds back every later PUBACK of that connection
// (MQTT-4.6.0-2), and no other connection's. It is the only goroutine
// writing l's acknowledgements, which may block while the socket is busy,
// and it never holds l.mu while doing so.
func (l *link) acker() {
	defer l.c.wg.Done()
	for {
		select {
		case <-l.ackWake:
		case <-l.c.quit:
			return
		}
		for l.ackPrefix() {
		}
	}
}

func (l *link) ackPrefix() bool {
	c := l.c
	l.mu.Lock()
	n := 0
	for n < len(l.ackq) && l.ackq[n].done.Load() {
		n++
	}
	l.ackBuf = append(l.ackBuf[:0], l.ackq[:n]...)
	clear(l.ackq[:n])
	l.ackq = l.ackq[n:]
	l.unacked.Add(int64(-n))
	var head *entry
	if len(l.ackq) > 0 {
		head = l.ackq[0]
	}
	l.head.Store(head)
	// The new head may have finished after the scan above, before the
	// store: its finish saw the old head and woke no one, so look again.
	again := head != nil && head.done.Load()
	gen, conn := l.gen, l.conn
	l.mu.Unlock()
	if n == 0 {
		return again
	}
	// The PUBACKs of the whole prefix, in order, in one write on the
	// connection the messages came in on. paho writes each of its own
	// packets with a single Write too, and wireConn keeps whole Writes
	// apart, so the two never interleave. Going through paho's Ack would
	// cost, per message, a packet, a channel hand-off to its writer and a
	// Write call. Messages of an ended connection are not acknowledged:
	// the broker redelivers them on the new one.
	buf := l.ackBytes[:0]
	now := time.Now()
	for _, e := range l.ackBuf {
		if e.gen == gen && e.msg.Qos() > 0 {
			id := e.msg.MessageID()
			buf = append(buf, pubackType, 2, byte(id>>8), byte(id))
			c.m.ackLatency.Observe(now.Sub(e.receivedAt).Seconds())
		}
	}
	if len(buf) > 0 && conn != nil {
		// A failed write means the connection is ending; paho sees that
		// too, reconnects, and the broker redelivers.
		_, _ = conn.Write(buf)
	}
	l.ackBytes = buf[:0]
	// Only now, with the acknowledgements queued ahead of anything paho
	// writes later (a DISCONNECT at shutdown), may the slots free up.
	for i, e := range l.ackBuf {
		if c.ackHook != nil {
			c.ackHook(e.message())
		}
		c.unref(e)
		l.ackBuf[i] = nil
	}
	return true
}

// pubackType is the first byte of an MQTT 3.1.1 PUBACK (type 4, no flags).
const pubackType = 0x40

// workQueue is one worker's FIFO. It is unbounded as a structure, but the
// slots bound what all queues hold together, and pushing never blocks the
// router.
type workQueue struct {
	mu    sync.Mutex
	items []*entry
	wake  chan struct{}
	// busy counts the messages queued here or in their Processor call
	// (a fast-path call included); the intake takes its fast path only
	// while it is zero.
	busy atomic.Int64
	// proc is held for every Processor call of these topics, so that one
	// runs at a time: the worker's, or a fast path's on a lane or router.
	proc sync.Mutex
}

func (q *workQueue) push(e *entry) {
	q.mu.Lock()
	q.items = append(q.items, e)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *workQueue) pop(quit <-chan struct{}) (*entry, bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			e := q.items[0]
			q.items[0] = nil
			q.items = q.items[1:]
			q.mu.Unlock()
			return e, true
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-quit:
			return nil, false
		}
	}
}
