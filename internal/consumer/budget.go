package consumer

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// The byte budget of messages in flight (Options.MaxInFlightBytes,
// Options.Budget): what admission (admit.go) takes for each message beside
// its MaxInFlight slot, and gives back with the slot.

// takeBytes takes size bytes of the budget, waiting at most wait for
// earlier messages to release theirs; false: the message must be released
// (see onMessage), and once half the budget is free again freeSlot closes
// the connection so the broker redelivers it.
func (c *Consumer) takeBytes(l *link, conn *trackedConn, size int64, wait time.Duration) bool {
	ok, room := c.budget.take(size)
	if ok {
		return true
	}
	t := time.NewTimer(max(wait, 0))
	defer t.Stop()
	for {
		select {
		case <-room:
		case <-c.stopIntake:
			return false
		case <-conn.closed:
			return false
		case <-t.C:
			c.log.Warn("messages in flight hold the whole byte budget (a slow or failing sink); releasing this connection's messages until half of it is free, then reconnecting for redelivery",
				zap.Int64("max_in_flight_bytes", c.budget.Limit()), zap.Int64("held_bytes", c.budget.Held()),
				zap.Int64("message_bytes", size), zap.Duration("waited", max(wait, 0)))
			c.markOverflow(l, conn)
			return false
		}
		if ok, room = c.budget.take(size); ok {
			return true
		}
	}
}

// MessageOverhead is what the byte budget counts for one message beyond
// its payload and topic: the MQTT message and the consumer's entry, the
// intake.Message, the pipeline's delivery and record headers (ids, key
// names, times), and the per-message slices of the queues they sit in. The
// copies a message's payload makes on its way (plaintext, record JSON,
// encodings per sink) are not counted here; the memory formula
// (deploy/README.md, "Memory") multiplies the budget by them.
const MessageOverhead = 1024

// messageBytes is what m holds of the byte budget.
func messageBytes(m mqtt.Message) int64 {
	return int64(len(m.Payload())+len(m.Topic())) + MessageOverhead
}

// Budget bounds the bytes of the messages held between receipt and
// acknowledgement (payload, topic and MessageOverhead each). There is one
// per replica, shared by every connection and consumer of it: give the same
// Budget to each one's Options. A message is admitted while the bytes held
// stay at or under the limit; a message larger than the whole limit is
// admitted once nothing else is held (alone), so that no message can wait
// forever. Safe for concurrent use.
type Budget struct {
	limit int64

	// held and peak are atomics: every message takes and gives back its
	// bytes on the intake's hot path, so the common case is one
	// compare-and-swap, with no lock beside the slot semaphore. The lock
	// guards only room, for callers that must wait.
	held atomic.Int64
	peak atomic.Int64

	mu      sync.Mutex
	room    chan struct{} // closed when bytes are released; made only when someone waits
	waiting atomic.Bool   // room is set: release must close it
}

// NewBudget returns a Budget of limit bytes (at least 1) and registers its
// gauges, decryptd_inflight_bytes and decryptd_inflight_bytes_limit, with
// reg (nil: not registered).
func NewBudget(limit int64, reg prometheus.Registerer) (*Budget, error) {
	if limit < 1 {
		return nil, fmt.Errorf("consumer: byte budget %d: must be positive", limit)
	}
	b := &Budget{limit: limit}
	if reg == nil {
		return b, nil
	}
	for _, g := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "decryptd_inflight_bytes",
			Help: "Bytes of the messages held between receipt and acknowledgement (payload, topic and a fixed per-message overhead; bounded by decryptd_inflight_bytes_limit).",
		}, func() float64 { return float64(b.Held()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "decryptd_inflight_bytes_limit",
			Help: "The byte budget of messages in flight (mqtt.max_in_flight_bytes); one message larger than it is admitted alone.",
		}, func() float64 { return float64(b.limit) }),
	} {
		if err := reg.Register(g); err != nil {
			return nil, fmt.Errorf("consumer: register metrics: %w", err)
		}
	}
	return b, nil
}

// Limit returns the budget in bytes.
func (b *Budget) Limit() int64 { return b.limit }

// Held returns the bytes held now.
func (b *Budget) Held() int64 { return b.held.Load() }

// Peak returns the most bytes held at once so far: at most Limit, or one
// message's size when a message larger than Limit was admitted alone.
func (b *Budget) Peak() int64 { return b.peak.Load() }

// take takes n bytes when they fit, or when nothing is held. Otherwise it
// returns a channel closed once bytes are released, to try again.
func (b *Budget) take(n int64) (bool, <-chan struct{}) {
	if b.tryTake(n) {
		return true, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.room == nil {
		b.room = make(chan struct{})
		b.waiting.Store(true)
	}
	// Try again once waiting is set: a release that came between the first
	// try and the store above saw no waiter, but its bytes are back by now.
	// (take sets waiting, then reads held; release writes held, then reads
	// waiting: at least one of them sees the other.)
	if b.tryTake(n) {
		return true, nil
	}
	return false, b.room
}

// tryTake takes n bytes if they fit, or if nothing is held.
func (b *Budget) tryTake(n int64) bool {
	for {
		h := b.held.Load()
		if h != 0 && h+n > b.limit {
			return false
		}
		if b.held.CompareAndSwap(h, h+n) {
			for p := b.peak.Load(); h+n > p && !b.peak.CompareAndSwap(p, h+n); p = b.peak.Load() {
			}
			return true
		}
	}
}

// release gives back n bytes taken by take and returns what is held
// after it.
func (b *Budget) release(n int64) int64 {
	if n == 0 {
		return b.held.Load()
	}
	h := b.held.Add(-n)
	if !b.waiting.Load() {
		return h
	}
	b.mu.Lock()
	if b.room != nil {
		close(b.room)
		b.room = nil
		b.waiting.Store(false)
	}
	b.mu.Unlock()
	return h
}
