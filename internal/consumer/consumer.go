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
//
// It holds Options.Connections MQTT connections (links), each with its own
// paho client, session and receive order; admission (the MaxInFlight
// slots), the lanes, the per-topic workers and the Processor are shared by
// all of them.
type Consumer struct {
	o       Options
	proc    Processor
	log     *zap.Logger
	m       *metrics
	links   []*link
	filters []string // as subscribed ($share/... applied)
	pattern intake.TopicPattern

	// slots is the MaxInFlight semaphore, one for every link: a message
	// takes a slot when admitted and frees it when it is both finished by
	// its worker and acknowledged (or discarded because its connection is
	// gone). A Budget of MaxInFlight units, one per message: taking and
	// giving back is one compare-and-swap on a counter every router and
	// worker shares, where a channel semaphore took its lock (and a second
	// counter beside it) for each.
	slots       *Budget
	idleWake    chan struct{} // signalled when no slot is held
	budget      *Budget       // the bytes of messages in flight, one for every link (admit.go)
	overflowing atomic.Int32  // links whose overflowConn is set

	lanes  []*lane
	queues []*workQueue

	mu       sync.Mutex
	running  bool        // guarded by mu
	stopping atomic.Bool // set (under mu) when intake stops; read per message without it

	stopIntake chan struct{} // closed when intake stops
	quit       chan struct{} // closed to end workers and the ackers
	procCtx    context.Context
	procCancel context.CancelFunc
	wg         sync.WaitGroup // workers, lanes and ackers
	connectWG  sync.WaitGroup // the links' first-connect loops

	lastRecv     atomic.Int64 // when a message last came in (Unix ns, kept to the millisecond)
	shutdownOnce sync.Once
	shutdownDone chan struct{}
	shutdownErr  error

	overflowWait time.Duration
	// ackHook, if set (tests), is called after each acknowledgement is handed
	// to the client, in each link's acknowledgement order (links call it
	// concurrently).
	ackHook func(intake.Message)
	// recvHook, if set (tests, before Run), is called on each link's router
	// with every message it receives, before admission, in that link's
	// receive order.
	recvHook func(link int, m mqtt.Message)
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
		log:          o.Logger.With(zap.String("component", "mqtt")),
		slots:        &Budget{limit: int64(o.MaxInFlight)},
		idleWake:     make(chan struct{}, 1),
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
	c.links = make([]*link, o.Connections)
	for n := range c.links {
		c.links[n] = newLink(c, n)
	}
	c.m, err = newMetrics(o.Registerer, c.links, func() float64 { return float64(c.slots.Held()) })
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Run connects, subscribes and processes messages until ctx ends or
// Shutdown is called. When ctx ends, Run shuts down gracefully within
// Options.ShutdownTimeout and returns that shutdown's error (nil when every
// in-flight message was delivered and acknowledged). Broker outages are
// retried forever and are not errors; each connection retries on its own.
func (c *Consumer) Run(ctx context.Context) error {
	c.mu.Lock()
	switch {
	case c.stopping.Load():
		c.mu.Unlock()
		return ErrClosed
	case c.running:
		c.mu.Unlock()
		return ErrAlreadyRunning
	}
	c.running = true
	c.wg.Add(len(c.queues) + len(c.lanes) + len(c.links))
	c.connectWG.Add(len(c.links))
	c.mu.Unlock()
	for _, q := range c.queues {
		go c.work(q)
	}
	for _, l := range c.lanes {
		go c.runLane(l)
	}
	for _, l := range c.links {
		go l.acker()
	}
	for _, l := range c.links {
		go func() {
			defer c.connectWG.Done()
			l.connect(ctx)
		}()
	}

	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.o.ShutdownTimeout)
		defer cancel()
		return c.Shutdown(sctx)
	case <-c.shutdownDone:
		return c.shutdownErr
	}
}

// Ready reports whether every connection is open and its subscriptions
// were granted on it. One connection down is not ready: the broker keeps
// that session in the shared group and queues its share of the messages
// for it (Mosquitto round-robins over a group's sessions, connected or
// not), so the replica is not consuming all it should.
func (c *Consumer) Ready() bool {
	if c.stopping.Load() {
		return false
	}
	for _, l := range c.links {
		if !l.ready() {
			return false
		}
	}
	return true
}

// Shutdown stops the consumer within ctx: it stops intake on every
// connection (messages arriving from then on are neither processed nor
// acknowledged; the broker redelivers them), unsubscribes first if
// Options.UnsubscribeOnShutdown, waits for in-flight messages to be
// processed and acknowledged, each on its own connection, then
// disconnects every connection. At ctx's deadline the Processor's context
// is cancelled and whatever is unfinished stays unacknowledged. It returns
// an error naming how many messages were left. Safe to call more than once
// and concurrently with Run, which then returns the same error.
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
	if c.o.UnsubscribeOnShutdown {
		if err := c.eachLink(func(l *link) error { return l.unsubscribe(ctx) }); err != nil {
			errs = append(errs, err)
		} else {
			c.drain(ctx)
		}
	}

	c.mu.Lock()
	c.stopping.Store(true)
	close(c.stopIntake)
	running := c.running
	c.mu.Unlock()
	c.log.Info("intake stopped; finishing in-flight messages", zap.Int64("in_flight", c.slots.Held()))

	if err := c.waitIdle(ctx); err != nil {
		errs = append(errs, fmt.Errorf("consumer: %d messages unfinished or unacknowledged at the shutdown deadline (the broker redelivers them): %w", c.slots.Held(), err))
	}
	c.procCancel()

	// The PUBACKs precede the DISCONNECT on the wire: each link's acker
	// wrote them to its connection's wireConn before freeing their slots
	// (so before waitIdle returned), and paho writes the DISCONNECT to the
	// same wireConn later; wireConn keeps whole Writes in call order.
	quiesce := time.Second
	if dl, ok := ctx.Deadline(); ok {
		quiesce = min(quiesce, max(time.Until(dl), 0))
	}
	if running {
		c.connectWG.Wait() // the first-connect loops end on stopIntake
		_ = c.eachLink(func(l *link) error { l.disconnect(quiesce); return nil })
	}
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

// eachLink runs f for every link at once and joins the errors.
func (c *Consumer) eachLink(f func(*link) error) error {
	errs := make([]error, len(c.links))
	var wg sync.WaitGroup
	for i, l := range c.links {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(l)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *Consumer) waitIdle(ctx context.Context) error {
	for c.slots.Held() > 0 {
		select {
		case <-c.idleWake:
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond): // belt and braces against a missed wake
		}
	}
	return nil
}

// drain keeps intake open after unsubscribing until the messages the broker
// had already queued for these sessions have come in and been acknowledged
// (nothing in flight and nothing received for a moment), so a replica
// removed for good leaves nothing behind in its sessions.
func (c *Consumer) drain(ctx context.Context) {
	const quiet = 300 * time.Millisecond
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		idle := c.slots.Held() == 0 && time.Since(time.Unix(0, c.lastRecv.Load())) >= quiet
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
