package consumer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/intake"
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
	budget   *Budget       // the bytes of messages in flight (admit.go)

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
	if c.budget, err = o.byteBudget(); err != nil {
		return nil, err
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
	c.client = mqtt.NewClient(c.pahoOptions())
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

	// The PUBACKs precede the DISCONNECT on the wire: the acker wrote them
	// to the connection's wireConn before freeing their slots (so before
	// waitIdle returned), and paho writes the DISCONNECT to the same
	// wireConn later; wireConn keeps whole Writes in call order.
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
