package consumer

import (
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/intake"
)

// Admission: what paho's router goroutine does with each message (a slot
// under MaxInFlight and its bytes under the byte budget, or release), and
// the lanes that hand admitted messages to the Processor without a
// goroutine hand-off per message when their key is cached (dispatch), or
// to their topic's worker otherwise.

// entry is one admitted message.
type entry struct {
	c          *Consumer
	l          *link // the connection it came in on
	msg        mqtt.Message
	gen        uint64
	size       int64  // what it holds of the byte budget (messageBytes)
	route      uint32 // hash of the topic: picks its lane and its worker
	receivedAt time.Time
	done       atomic.Bool  // the Processor finished it: it may be acknowledged
	refs       atomic.Int32 // processing side + acknowledgement side

	// call is the state of the Processor call under way: callRunning,
	// then callReturned or callFailedInCall, whichever comes first.
	call    atomic.Int32
	callErr error
	backoff time.Duration
}

const (
	callRunning = iota
	callReturned
	callFailedInCall
)

// message is e as the Processor sees it. The device id is read from the
// topic here, on the lane or worker, not on paho's router goroutine.
func (e *entry) message() intake.Message {
	topic := e.msg.Topic()
	id, _ := e.c.pattern.DeviceID(topic)
	return intake.Message{Source: Source, Topic: topic, DeviceID: id, Payload: e.msg.Payload(), Redelivered: e.msg.Duplicate(), ReceivedAt: e.receivedAt}
}

// onMessage is paho's handler for every message of link l (the default
// handler; no per-route handlers exist). It runs on l's paho router
// goroutine, in the order the PUBLISH packets arrived on l's connection,
// and hands the message to the lane that owns its topic, which every
// link shares.
//
// It does not block, except when MaxInFlight messages are already held, or
// the message's bytes do not fit in the byte budget (both shared by every
// link). The broker's window (max_inflight_messages, per link) should have
// stopped it from sending more messages, but Mosquitto 2.0.11 leaks that
// window, and with several links the broker's windows together may exceed
// MaxInFlight; and no broker window counts bytes, so with large messages
// the budget, not the window, is what stops intake. Then it waits for room
// for at most overflowWait (half the keep-alive). While it waits, paho's
// reader stops reading (its hand-offs to the router are unbuffered), so TCP
// pushes back on the broker and at most four more packets sit in paho;
// pings stall too (a PINGRESP queues behind them), which is why the wait
// is bounded well inside the keep-alive. If no room frees up it releases
// the message and the rest of the connection's, rather than holding
// unbounded messages, and freeSlot reconnects that link once there is room
// again (half the slots and half the bytes free), for the broker to
// redeliver them.
func (l *link) onMessage(_ mqtt.Client, pm mqtt.Message) {
	c := l.c
	now := time.Now()
	l.m.received.Inc()
	if pm.Duplicate() {
		l.m.redelivered.Inc()
	}
	// drain needs lastRecv to the millisecond (its quiet period is 300ms):
	// a store per message from every link's router would move its cache
	// line between cores for nothing.
	if ns := now.UnixNano(); ns-c.lastRecv.Load() >= int64(time.Millisecond) {
		c.lastRecv.Store(ns)
	}

	l.mu.Lock()
	gen, conn := l.gen, l.conn
	l.mu.Unlock()
	stopping := c.stopping.Load()
	// Once one message of a connection is released, every later one must
	// be too: admitting a later one would ack it ahead of the released one
	// and process it ahead of that one's redelivery.
	size := messageBytes(pm)
	if conn == nil || conn.releasing.Load() || stopping || !c.acquire(l, conn, size, now) {
		if conn != nil {
			conn.releasing.Store(true)
		}
		l.m.released.Inc()
		return
	}
	e := &entry{c: c, l: l, msg: pm, gen: gen, size: size, route: hashTopic(pm.Topic()), receivedAt: now}
	e.refs.Store(2)
	e.call.Store(callReturned) // a failure reported by TryProcess's done is retried on its own
	l.mu.Lock()
	// stopping is set before shutdown reads the slots held, and acquire
	// took e's slot before this reads stopping: either shutdown waits for e or
	// e is released here.
	if c.stopping.Load() || l.gen != gen {
		l.mu.Unlock()
		conn.releasing.Store(true)
		l.m.released.Inc()
		c.freeSlot(size)
		return
	}
	l.ackq = append(l.ackq, e)
	if len(l.ackq) == 1 {
		l.head.Store(e)
	}
	l.unacked.Add(1)
	l.mu.Unlock()
	if len(c.lanes) == 0 {
		c.dispatch(e) // several connections: each router hands its messages on itself
		return
	}
	c.lanes[e.route%uint32(len(c.lanes))].push(e)
}

// runLane takes the messages of one lane, in receive order, a whole
// backlog at a time.
func (c *Consumer) runLane(l *lane) {
	defer c.wg.Done()
	var batch []*entry
	for {
		var ok bool
		batch, ok = l.take(batch, c.quit)
		if !ok {
			return
		}
		for i, e := range batch {
			c.dispatch(e)
			batch[i] = nil
		}
	}
}

// dispatch hands e to the Processor without waiting when it can: nothing
// of its worker's topics is waiting or being processed (so e cannot
// overtake one of its topic) and the Processor takes it without blocking
// (its key is cached). Otherwise e goes to its topic's worker, and later
// messages of the topic queue behind it.
//
// It runs on a lane, or, without lanes, on the router of e's link, so
// several goroutines may dispatch messages of one worker at once: the
// fast path claims the worker (busy 0 to 1) and holds its proc lock for
// the call, so that neither another fast path nor the worker runs a
// message of these topics beside it.
func (c *Consumer) dispatch(e *entry) {
	if e.gen != e.l.genNow.Load() {
		// Its connection is gone and the broker redelivers it on the new
		// one: processing this copy would only duplicate work.
		e.l.m.released.Inc()
		c.unref(e) // the processing side; the acknowledgement side was voided by dial
		return
	}
	q := c.queues[e.route%uint32(len(c.queues))]
	if q.busy.Load() == 0 && c.procCtx.Err() == nil && q.busy.CompareAndSwap(0, 1) {
		// busy was 0: the worker is not in a call and holds no proc lock,
		// so this Lock does not wait.
		q.proc.Lock()
		ok := c.proc.TryProcess(c.procCtx, e.message(), e.finish)
		q.proc.Unlock()
		if ok {
			c.m.inline.Inc()
			q.busy.Add(-1)
			return
		}
		q.push(e) // declined: the worker takes it, with the busy count claimed above
		return
	}
	q.busy.Add(1)
	q.push(e)
}

// acquire takes a slot and size bytes of the budget for one message
// received at now on l's conn, waiting for both together at most
// overflowWait; false: the message must be released (see onMessage).
func (c *Consumer) acquire(l *link, conn *trackedConn, size int64, now time.Time) bool {
	if !c.acquireSlot(l, conn) {
		return false
	}
	if c.takeBytes(l, conn, size, c.overflowWait-time.Since(now)) {
		return true
	}
	c.freeSlot(0)
	return false
}

// markOverflow records that l's conn releases messages until there is room
// again; freeSlot then closes it so the broker redelivers them.
//
// It checks for room itself as well: the messages in flight may all have
// finished (their freeSlot calls seeing no overflow yet) between the wait
// giving up and this mark, and then no later freeSlot would come to
// reconnect the link, leaving the released messages at the broker, never
// redelivered on a connection that stays up. Each side writes its own
// counter before reading the other's, so at least one of them sees both.
func (c *Consumer) markOverflow(l *link, conn *trackedConn) {
	if l.overflowConn.Swap(conn) == nil {
		c.overflowing.Add(1)
	}
	c.reconnectIfRoom(c.slots.Held())
}

func (c *Consumer) acquireSlot(l *link, conn *trackedConn) bool {
	ok, room := c.slots.take(1)
	if ok {
		return true
	}
	t := time.NewTimer(c.overflowWait)
	defer t.Stop()
	for timedOut := false; !timedOut; {
		select {
		case <-room:
			if ok, room = c.slots.take(1); ok {
				return true
			}
		case <-c.stopIntake:
			return false
		case <-conn.closed:
			return false
		case <-t.C:
			timedOut = true
		}
	}
	// Release this and every later message of the connection (the
	// caller marks it); once half the slots are free again, freeSlot
	// closes the connection so the broker redelivers them. Closing
	// right away would only reconnect into a still-full consumer.
	// Blame the broker's window only when this connection alone
	// holds MaxInFlight unacknowledged messages: otherwise the slots
	// are held by messages of an earlier connection still being
	// processed (after a reconnect) or of the other connections, and
	// max_inflight_messages is not at fault.
	if n := l.unacked.Load(); n >= int64(c.o.MaxInFlight) {
		c.log.Warn("broker sent more unacknowledged messages than MaxInFlight; releasing them until the consumer has room, then reconnecting for redelivery (set max_inflight_messages at or below MaxInFlight)",
			zap.Int("max_in_flight", c.o.MaxInFlight), zap.Int64("unacknowledged", n), zap.Duration("waited", c.overflowWait))
	} else {
		c.log.Warn("every in-flight slot is held, by messages of an earlier connection still being processed or of the other connections; releasing this connection's messages until the consumer has room, then reconnecting for redelivery",
			zap.Int("max_in_flight", c.o.MaxInFlight), zap.Int64("unacknowledged", n), zap.Duration("waited", c.overflowWait))
	}
	c.markOverflow(l, conn)
	return false
}

// freeSlot gives back a message's slot and its size bytes of the budget.
func (c *Consumer) freeSlot(size int64) {
	c.budget.release(size)
	n := c.slots.release(1)
	if n == 0 {
		select {
		case c.idleWake <- struct{}{}:
		default:
		}
	}
	c.reconnectIfRoom(n)
}

// reconnectIfRoom closes every link marked by markOverflow once there is
// room again (n, the messages in flight, at most half the slots, and at
// most half the byte budget held), so that the broker redelivers what it
// released.
func (c *Consumer) reconnectIfRoom(n int64) {
	if n <= int64(c.o.MaxInFlight/2) && c.overflowing.Load() > 0 && c.budget.Held() <= c.budget.Limit()/2 {
		for _, l := range c.links {
			if conn := l.overflowConn.Load(); conn != nil && l.overflowConn.CompareAndSwap(conn, nil) {
				c.overflowing.Add(-1)
				l.log.Info("room again after overflow; reconnecting so the broker redelivers the released messages")
				go conn.abort() // a TLS close may wait on a write; never in the caller's path
			}
		}
	}
}

// unref drops one side's hold on e; the slot and the bytes are freed when
// both the worker and the acknowledgement side are through with it.
func (c *Consumer) unref(e *entry) {
	if e.refs.Add(-1) == 0 {
		e.msg = nil
		c.freeSlot(e.size)
	}
}

// hashTopic picks a topic's lane and worker: FNV-1a, inline so that it
// costs no allocation per message.
func hashTopic(topic string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(topic); i++ {
		h ^= uint32(topic[i])
		h *= 16777619
	}
	return h
}

// lane is the FIFO between the intake (paho's router goroutine) and one
// lane goroutine. The lane takes everything queued at once, and the intake
// wakes it only when it waits, so a busy lane costs no goroutine hand-off
// per message.
type lane struct {
	mu    sync.Mutex
	items []*entry
	idle  bool
	wake  chan struct{}
}

func (l *lane) push(e *entry) {
	l.mu.Lock()
	l.items = append(l.items, e)
	wake := l.idle
	l.idle = false
	l.mu.Unlock()
	if wake {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

// take returns everything queued, in order, reusing buf; it waits while
// nothing is, and returns false once quit is closed.
func (l *lane) take(buf []*entry, quit <-chan struct{}) ([]*entry, bool) {
	for {
		l.mu.Lock()
		if len(l.items) > 0 {
			items := l.items
			l.items = buf[:0]
			l.mu.Unlock()
			return items, true
		}
		l.idle = true
		l.mu.Unlock()
		select {
		case <-l.wake:
		case <-quit:
			return nil, false
		}
	}
}
