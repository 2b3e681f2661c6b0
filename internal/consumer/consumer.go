package consumer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/mqttstore"
)

// Source is what the consumer sets as intake.Message.Source.
const Source = "mqtt"

// Processor is what the consumer hands messages to (intake.Processor; see
// its promises).
type Processor = intake.Processor

var _ intake.Input = (*Consumer)(nil)

// Errors returned by the Consumer.
var (
	ErrAlreadyRunning = errors.New("consumer: Run called twice")
	ErrClosed         = errors.New("consumer: shut down")
	ErrSubscribe      = errors.New("consumer: subscription refused by broker")
)

// Consumer is the MQTT intake. Create it with New, run it with Run.
type Consumer struct {
	o       Options
	proc    Processor
	log     *zap.Logger
	m       *metrics
	client  mqtt.Client
	filters []string // as subscribed ($share/... applied)
	pattern intake.TopicPattern

	// slots is the MaxInFlight semaphore: a message takes a slot when
	// admitted and frees it when it is both finished by its worker and
	// acknowledged (or discarded because its connection is gone).
	slots    chan struct{}
	inUse    atomic.Int64
	idleWake chan struct{} // signalled when inUse drops to zero

	lanes    []*lane
	queues   []*workQueue
	ackWake  chan struct{}
	ackBuf   []*entry // owned by the acker goroutine
	ackBytes []byte   // owned by the acker goroutine
	unacked  atomic.Int64

	mu            sync.Mutex
	gen           uint64        // connection generation, bumped on every successful dial
	genNow        atomic.Uint64 // gen, readable without mu (lanes, per message)
	conn          *trackedConn  // connection of gen
	ackq          []*entry      // receive order of gen's admitted, unacknowledged messages
	stopping      bool
	subscribedGen uint64 // gen whose subscriptions succeeded

	stopIntake chan struct{} // closed when intake stops
	quit       chan struct{} // closed to end workers and the acker
	procCtx    context.Context
	procCancel context.CancelFunc
	wg         sync.WaitGroup // workers and acker

	running      bool        // guarded by mu
	connMu       sync.Mutex  // serialises the first Connect with Disconnect
	connected    atomic.Bool // a connection was established at least once
	lastRecv     atomic.Int64
	shutdownOnce sync.Once
	shutdownDone chan struct{}
	shutdownErr  error

	overflowWait time.Duration
	overflowConn atomic.Pointer[trackedConn] // connection releasing messages after an overflow
	// ackHook, if set (tests), is called after each acknowledgement is handed
	// to the client, in acknowledgement order.
	ackHook func(intake.Message)
}

// entry is one admitted message.
type entry struct {
	c          *Consumer
	msg        mqtt.Message
	gen        uint64
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
		select {
		case c.ackWake <- struct{}{}:
		default:
		}
	}
	c.unref(e)
}

// New validates the options and prepares a Consumer; it does not connect.
func New(o Options, p Processor) (*Consumer, error) {
	if p == nil {
		return nil, errors.New("consumer: nil Processor")
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Consumer{
		o:            o,
		proc:         p,
		log:          o.Logger.With(zap.String("component", "mqtt"), zap.String("client_id", o.ClientID)),
		slots:        make(chan struct{}, o.MaxInFlight),
		idleWake:     make(chan struct{}, 1),
		ackWake:      make(chan struct{}, 1),
		stopIntake:   make(chan struct{}),
		quit:         make(chan struct{}),
		shutdownDone: make(chan struct{}),
		// Long enough to ride out a slot freeing up, well short of the
		// keep-alive, since a blocked router also stops PINGRESP reading.
		overflowWait: max(o.KeepAlive/2, time.Second),
	}
	c.procCtx, c.procCancel = context.WithCancel(context.Background())
	if o.TopicPattern != "" {
		if c.pattern, err = intake.ParseTopicPattern(o.TopicPattern); err != nil {
			return nil, fmt.Errorf("consumer: %w", err)
		}
	}
	for _, f := range o.Topics {
		c.filters = append(c.filters, o.subscription(f))
	}
	c.queues = make([]*workQueue, o.Workers)
	for i := range c.queues {
		c.queues[i] = &workQueue{wake: make(chan struct{}, 1)}
	}
	c.lanes = make([]*lane, o.Lanes)
	for i := range c.lanes {
		c.lanes[i] = &lane{wake: make(chan struct{}, 1)}
	}
	po := mqtt.NewClientOptions()
	for _, b := range o.Brokers {
		po.AddBroker(b)
	}
	po.SetClientID(o.ClientID).
		SetCleanSession(false). // the broker keeps unacknowledged messages for a restarted replica
		SetAutoAckDisabled(true).
		// paho's default MemoryStore records every received QoS 1 message
		// and deletes it at its PUBACK (a locked map, twice per message),
		// for a resend on reconnect that only QoS 2 and publishing use; the
		// consumer does neither, and the broker's session is what keeps
		// unacknowledged messages.
		SetStore(mqttstore.Discard{}).
		// OrderMatters(true): the handler runs on paho's router goroutine in
		// wire order, which is what per-topic order and in-order PUBACKs
		// need; with false each message gets its own goroutine and the
		// scheduler reorders them. The handler therefore must not block; see
		// onMessage for the one bounded exception.
		SetOrderMatters(true).
		// Before Connect: a persistent session delivers queued messages
		// before any SUBSCRIBE registers a route, and paho never acks a
		// message no handler took.
		SetDefaultPublishHandler(c.onMessage).
		SetOnConnectHandler(c.onConnect).
		SetConnectionNotificationHandler(c.onNotify).
		SetCustomOpenConnectionFn(c.dial).
		SetProtocolVersion(4). // no silent fall back to 3.1 after a refused connect
		SetKeepAlive(o.KeepAlive).
		SetPingTimeout(pingTimeout).
		SetConnectTimeout(o.ConnectTimeout).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(o.MaxReconnectInterval).
		SetConnectRetry(false). // Run retries the first connect itself, so it can be cancelled
		SetResumeSubs(false)    // subscriptions are renewed in onConnect instead
	if o.TLS != nil {
		po.SetTLSConfig(o.TLS)
	}
	if o.Username != "" {
		po.SetUsername(o.Username)
		po.SetPassword(o.Password)
	}
	c.client = mqtt.NewClient(po)
	c.m, err = newMetrics(o.Registerer,
		func() float64 { return b2f(c.client.IsConnectionOpen()) },
		func() float64 { return float64(c.inUse.Load()) },
		func() float64 { return float64(c.unacked.Load()) },
	)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Run connects, subscribes and processes messages until ctx ends or
// Shutdown is called. When ctx ends, Run shuts down gracefully within
// Options.ShutdownTimeout and returns that shutdown's error (nil when every
// in-flight message was delivered and acknowledged). Broker outages are
// retried forever and are not errors.
func (c *Consumer) Run(ctx context.Context) error {
	c.mu.Lock()
	switch {
	case c.stopping:
		c.mu.Unlock()
		return ErrClosed
	case c.running:
		c.mu.Unlock()
		return ErrAlreadyRunning
	}
	c.running = true
	c.wg.Add(len(c.queues) + len(c.lanes) + 1)
	c.mu.Unlock()
	for _, q := range c.queues {
		go c.work(q)
	}
	for _, l := range c.lanes {
		go c.runLane(l)
	}
	go c.acker()

	c.connect(ctx)

	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.o.ShutdownTimeout)
		defer cancel()
		return c.Shutdown(sctx)
	case <-c.shutdownDone:
		return c.shutdownErr
	}
}

// connect makes the first connection, retrying with capped back-off; from
// then on paho reconnects by itself.
func (c *Consumer) connect(ctx context.Context) {
	backoff := 500 * time.Millisecond
	for {
		// connMu orders this against shutdown's Disconnect, so a connect
		// can never start after it.
		c.connMu.Lock()
		select {
		case <-c.stopIntake:
			c.connMu.Unlock()
			return
		default:
		}
		tok := c.client.Connect()
		c.connMu.Unlock()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			return
		case <-c.stopIntake:
			return
		}
		if tok.Error() == nil {
			return
		}
		// The failure itself was logged by onNotify.
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		case <-c.stopIntake:
			return
		}
		backoff = min(2*backoff, c.o.MaxReconnectInterval)
	}
}

// Ready reports whether the connection is open and this connection's
// subscriptions were granted.
func (c *Consumer) Ready() bool {
	if !c.client.IsConnectionOpen() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.stopping && c.gen != 0 && c.subscribedGen == c.gen
}

// Shutdown stops the consumer within ctx: it stops intake (messages
// arriving from then on are neither processed nor acknowledged; the broker
// redelivers them), unsubscribes first if Options.UnsubscribeOnShutdown,
// waits for in-flight messages to be processed and acknowledged, then
// disconnects. At ctx's deadline the Processor's context is cancelled and
// whatever is unfinished stays unacknowledged. It returns an error naming
// how many messages were left. Safe to call more than once and
// concurrently with Run, which then returns the same error.
func (c *Consumer) Shutdown(ctx context.Context) error {
	// A second caller waits in Do until the first shutdown, which its own
	// deadline bounds, has finished.
	c.shutdownOnce.Do(func() {
		c.shutdownErr = c.shutdown(ctx)
		close(c.shutdownDone)
	})
	return c.shutdownErr
}

func (c *Consumer) shutdown(ctx context.Context) error {
	var errs []error
	if c.o.UnsubscribeOnShutdown && c.client.IsConnectionOpen() {
		if err := c.unsubscribe(ctx); err != nil {
			errs = append(errs, err)
		} else {
			c.drain(ctx)
		}
	}

	c.mu.Lock()
	c.stopping = true
	close(c.stopIntake)
	running := c.running
	c.mu.Unlock()
	c.log.Info("intake stopped; finishing in-flight messages", zap.Int64("in_flight", c.inUse.Load()))

	if err := c.waitIdle(ctx); err != nil {
		errs = append(errs, fmt.Errorf("consumer: %d messages unfinished or unacknowledged at the shutdown deadline (the broker redelivers them): %w", c.inUse.Load(), err))
	}
	c.procCancel()

	// Acknowledgements handed to paho precede the DISCONNECT on the wire:
	// both go through its single priority queue.
	quiesce := time.Second
	if dl, ok := ctx.Deadline(); ok {
		quiesce = min(quiesce, max(time.Until(dl), 0))
	}
	c.connMu.Lock()
	if running {
		c.client.Disconnect(uint(quiesce.Milliseconds()))
	}
	c.connMu.Unlock()
	close(c.quit)
	if running {
		done := make(chan struct{})
		go func() { c.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("consumer: processor still running after its context was cancelled: %w", ctx.Err()))
		}
	}
	c.log.Info("disconnected")
	return errors.Join(errs...)
}

func (c *Consumer) waitIdle(ctx context.Context) error {
	for c.inUse.Load() > 0 {
		select {
		case <-c.idleWake:
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond): // belt and braces against a missed wake
		}
	}
	return nil
}

func (c *Consumer) unsubscribe(ctx context.Context) error {
	tok := c.client.Unsubscribe(c.filters...)
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return fmt.Errorf("consumer: unsubscribe: %w", ctx.Err())
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("consumer: unsubscribe: %w", err)
	}
	c.log.Info("unsubscribed", zap.Strings("filters", c.filters))
	return nil
}

// drain keeps intake open after unsubscribing until the messages the broker
// had already queued for this session have come in and been acknowledged
// (nothing in flight and nothing received for a moment), so a replica
// removed for good leaves nothing behind in its session.
func (c *Consumer) drain(ctx context.Context) {
	const quiet = 300 * time.Millisecond
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		idle := c.inUse.Load() == 0 && time.Since(time.Unix(0, c.lastRecv.Load())) >= quiet
		if idle {
			return
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// onMessage is paho's handler for every message (the default handler; no
// per-route handlers exist). It runs on paho's router goroutine, in the
// order the PUBLISH packets arrived on this connection, and hands the
// message to the worker that owns its topic.
//
// It does not block, except when MaxInFlight messages are already held: the
// broker's window (max_inflight_messages) should have stopped it from
// sending more, but Mosquitto 2.0.11 leaks that window. Then it waits for a
// slot for at most overflowWait (half the keep-alive, so paho's pings
// survive the stall); if none frees up it releases the message and the rest
// of the connection's, rather than holding unbounded messages, and
// freeSlot reconnects once there is room, for the broker to redeliver them.
func (c *Consumer) onMessage(_ mqtt.Client, pm mqtt.Message) {
	now := time.Now()
	c.m.received.Inc()
	if pm.Duplicate() {
		c.m.redelivered.Inc()
	}
	c.lastRecv.Store(now.UnixNano())

	c.mu.Lock()
	stopping, gen, conn := c.stopping, c.gen, c.conn
	c.mu.Unlock()
	// Once one message of a connection is released, every later one must
	// be too: admitting a later one would ack it ahead of the released one
	// and process it ahead of that one's redelivery.
	if conn == nil || conn.releasing.Load() || stopping || !c.acquire(conn) {
		if conn != nil {
			conn.releasing.Store(true)
		}
		c.m.released.Inc()
		return
	}
	e := &entry{c: c, msg: pm, gen: gen, route: hashTopic(pm.Topic()), receivedAt: now}
	e.refs.Store(2)
	e.call.Store(callReturned) // a failure reported by TryProcess's done is retried on its own
	c.mu.Lock()
	if c.stopping || c.gen != gen {
		c.mu.Unlock()
		conn.releasing.Store(true)
		c.m.released.Inc()
		c.freeSlot()
		return
	}
	c.ackq = append(c.ackq, e)
	c.unacked.Add(1)
	c.mu.Unlock()
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
func (c *Consumer) dispatch(e *entry) {
	if e.gen != c.genNow.Load() {
		// Its connection is gone and the broker redelivers it on the new
		// one: processing this copy would only duplicate work.
		c.m.released.Inc()
		c.unref(e) // the processing side; the acknowledgement side was voided by dial
		return
	}
	q := c.queues[e.route%uint32(len(c.queues))]
	if q.busy.Load() == 0 && c.procCtx.Err() == nil && c.proc.TryProcess(c.procCtx, e.message(), e.finish) {
		c.m.inline.Inc()
		return
	}
	q.busy.Add(1)
	q.push(e)
}

func (c *Consumer) acquire(conn *trackedConn) bool {
	select {
	case c.slots <- struct{}{}:
		c.inUse.Add(1)
		return true
	default:
	}
	t := time.NewTimer(c.overflowWait)
	defer t.Stop()
	select {
	case c.slots <- struct{}{}:
		c.inUse.Add(1)
		return true
	case <-c.stopIntake:
		return false
	case <-conn.closed:
		return false
	case <-t.C:
		// Release this and every later message of the connection (the
		// caller marks it); once half the slots are free again, freeSlot
		// closes the connection so the broker redelivers them. Closing
		// right away would only reconnect into a still-full consumer.
		c.log.Warn("broker sent more unacknowledged messages than MaxInFlight; releasing them until the consumer has room, then reconnecting for redelivery (set max_inflight_messages at or below MaxInFlight)",
			zap.Int("max_in_flight", c.o.MaxInFlight), zap.Duration("waited", c.overflowWait))
		c.overflowConn.Store(conn)
		return false
	}
}

func (c *Consumer) freeSlot() {
	<-c.slots
	n := c.inUse.Add(-1)
	if n == 0 {
		select {
		case c.idleWake <- struct{}{}:
		default:
		}
	}
	if n <= int64(c.o.MaxInFlight/2) {
		if conn := c.overflowConn.Load(); conn != nil && c.overflowConn.CompareAndSwap(conn, nil) {
			c.log.Info("room again after overflow; reconnecting so the broker redelivers the released messages")
			go conn.abort() // a TLS close may wait on a write; never in the caller's path
		}
	}
}

// unref drops one side's hold on e; the slot is freed when both the worker
// and the acknowledgement side are through with it.
func (c *Consumer) unref(e *entry) {
	if e.refs.Add(-1) == 0 {
		e.msg = nil
		c.freeSlot()
	}
}

func (c *Consumer) currentGen() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *Consumer) work(q *workQueue) {
	defer c.wg.Done()
	for {
		e, ok := q.pop(c.quit)
		if !ok {
			return
		}
		if e.gen != c.currentGen() || c.procCtx.Err() != nil {
			// Its connection is gone and the broker redelivers it on the
			// new one (processing this copy would only duplicate work), or
			// the shutdown deadline passed and it stays unacknowledged.
			c.m.released.Inc()
			c.unref(e)
			q.busy.Add(-1)
			continue
		}
		c.process(e)
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

// acker sends acknowledgements in receive order: only the finished prefix
// of the current connection's receive queue is acknowledged, so one slow
// message holds back every later PUBACK (MQTT-4.6.0-2). It is the only
// goroutine calling Ack, which may block while the socket is busy, and it
// never holds c.mu while doing so.
func (c *Consumer) acker() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ackWake:
		case <-c.quit:
			return
		}
		for c.ackPrefix() {
		}
	}
}

func (c *Consumer) ackPrefix() bool {
	c.mu.Lock()
	n := 0
	for n < len(c.ackq) && c.ackq[n].done.Load() {
		n++
	}
	c.ackBuf = append(c.ackBuf[:0], c.ackq[:n]...)
	clear(c.ackq[:n])
	c.ackq = c.ackq[n:]
	c.unacked.Add(int64(-n))
	gen, conn := c.gen, c.conn
	c.mu.Unlock()
	if n == 0 {
		return false
	}
	// The PUBACKs of the whole prefix, in order, in one write on the
	// connection the messages came in on. paho writes each of its own
	// packets with a single Write too, and wireConn keeps whole Writes
	// apart, so the two never interleave. Going through paho's Ack would
	// cost, per message, a packet, a channel hand-off to its writer and a
	// Write call. Messages of an ended connection are not acknowledged:
	// the broker redelivers them on the new one.
	buf := c.ackBytes[:0]
	now := time.Now()
	for _, e := range c.ackBuf {
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
	c.ackBytes = buf[:0]
	// Only now, with the acknowledgements queued ahead of anything paho
	// writes later (a DISCONNECT at shutdown), may the slots free up.
	for i, e := range c.ackBuf {
		if c.ackHook != nil {
			c.ackHook(e.message())
		}
		c.unref(e)
		c.ackBuf[i] = nil
	}
	return true
}

// pubackType is the first byte of an MQTT 3.1.1 PUBACK (type 4, no flags).
const pubackType = 0x40

// dial opens the network connection for paho (CustomOpenConnectionFn). It
// runs for every connection attempt, after paho's previous connection has
// fully stopped (its router goroutine included), so bumping the generation
// here separates the messages of one connection from the next exactly.
func (c *Consumer) dial(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.o.ConnectTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 30 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", u.Host, err)
	}
	var conn net.Conn = raw
	if isTLSScheme(u.Scheme) {
		cfg := c.o.TLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("tls handshake with %s: %w", u.Host, err)
		}
		conn = tc
	}
	// wireConn: one write for many PUBACKs, buffered reads (see there).
	tracked := &trackedConn{Conn: newWireConn(conn), closed: make(chan struct{})}

	c.overflowConn.Store(nil)
	c.mu.Lock()
	c.gen++
	c.genNow.Store(c.gen)
	c.conn = tracked
	stale := c.ackq
	c.ackq = nil
	c.unacked.Store(0)
	c.mu.Unlock()
	// The previous connection's unacknowledged messages are void here: the
	// acker skips them and the broker redelivers them on this connection.
	for _, e := range stale {
		c.unref(e)
	}
	return tracked, nil
}

func (c *Consumer) onConnect(cl mqtt.Client) {
	c.mu.Lock()
	gen := c.gen
	c.mu.Unlock()
	backoff := time.Second
	for {
		err := c.subscribe(cl)
		if err == nil {
			c.mu.Lock()
			current := c.gen == gen
			if current {
				c.subscribedGen = gen
			}
			c.mu.Unlock()
			if current {
				c.log.Info("subscribed", zap.Strings("filters", c.filters))
			}
			return
		}
		c.log.Error("subscribe failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
		select {
		case <-time.After(backoff):
		case <-c.stopIntake:
			return
		}
		if c.currentGen() != gen || !cl.IsConnectionOpen() {
			return // the next connection's onConnect takes over
		}
		backoff = min(2*backoff, c.o.MaxReconnectInterval)
	}
}

// subscribe (re)subscribes every filter at QoS 1. Renewing on every
// connection matters: paho never re-subscribes, and a broker that lost its
// state (persistence off) would otherwise leave a "connected" consumer
// receiving nothing.
func (c *Consumer) subscribe(cl mqtt.Client) error {
	for _, f := range c.filters {
		tok := cl.Subscribe(f, 1, nil) // nil: every message goes to the default handler
		if !tok.WaitTimeout(c.o.ConnectTimeout) {
			return fmt.Errorf("subscribe %s: no SUBACK within %s", f, c.o.ConnectTimeout)
		}
		if err := tok.Error(); err != nil {
			return fmt.Errorf("subscribe %s: %w", f, err)
		}
		st, ok := tok.(*mqtt.SubscribeToken)
		if !ok {
			continue
		}
		for _, code := range st.Result() {
			switch {
			case code == 0x80:
				return fmt.Errorf("%w: %s", ErrSubscribe, f)
			case code == 0:
				// Delivery at QoS 0 cannot be redelivered; the promise of this
				// package does not hold for this filter.
				c.log.Warn("broker granted QoS 0 instead of 1; messages on this filter may be lost", zap.String("filter", f))
			}
		}
	}
	return nil
}

// onNotify logs connection state changes (never payloads) and counts
// reconnects.
func (c *Consumer) onNotify(_ mqtt.Client, n mqtt.ConnectionNotification) {
	switch n := n.(type) {
	case mqtt.ConnectionNotificationConnected:
		if c.connected.Swap(true) {
			c.m.reconnects.Inc()
			c.log.Info("reconnected")
		} else {
			c.log.Info("connected")
		}
	case mqtt.ConnectionNotificationConnecting:
		c.log.Debug("connecting", zap.Bool("reconnect", n.IsReconnect), zap.Int("attempt", n.Attempt))
	case mqtt.ConnectionNotificationBrokerFailed:
		c.log.Warn("connection to broker failed", zap.String("broker", redact(n.Broker)), zap.Error(n.Reason))
	case mqtt.ConnectionNotificationFailed:
		c.log.Warn("connect failed", zap.Error(n.Reason))
	case mqtt.ConnectionNotificationLost:
		// Ready needs no reset here: this notification may run after the
		// next connection subscribed, and the new generation already
		// makes the old subscription not count.
		c.log.Warn("connection lost", zap.Error(n.Reason))
	}
}

func redact(u *url.URL) string {
	if u == nil {
		return ""
	}
	return u.Redacted()
}

// errAborted is what paho reads from a connection the consumer aborted.
var errAborted = errors.New("connection closed by the consumer to get unacknowledged messages redelivered")

// trackedConn lets the consumer see, and cause, the end of a connection.
type trackedConn struct {
	net.Conn
	once      sync.Once
	closed    chan struct{}
	aborted   atomic.Bool
	releasing atomic.Bool // a message of this connection was released; release all later ones
}

func (t *trackedConn) Close() error {
	t.once.Do(func() { close(t.closed) })
	return t.Conn.Close()
}

// abort closes the connection so that paho treats it as lost and
// reconnects. A plain Close is not enough: paho takes "use of closed network
// connection" on read for its own doing and stays "connected" until the
// next ping times out, so reads and writes report errAborted instead.
func (t *trackedConn) abort() {
	t.aborted.Store(true)
	_ = t.Close()
}

func (t *trackedConn) Read(p []byte) (int, error) {
	n, err := t.Conn.Read(p)
	if err != nil && t.aborted.Load() {
		err = errAborted
	}
	return n, err
}

func (t *trackedConn) Write(p []byte) (int, error) {
	n, err := t.Conn.Write(p)
	if err != nil && t.aborted.Load() {
		err = errAborted
	}
	return n, err
}

// workQueue is one worker's FIFO. It is unbounded as a structure, but the
// slots bound what all queues hold together, and pushing never blocks the
// router.
type workQueue struct {
	mu    sync.Mutex
	items []*entry
	wake  chan struct{}
	// busy counts the messages queued here or in their Processor call;
	// the intake takes its fast path only while it is zero.
	busy atomic.Int64
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

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
