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

	"github.com/decryptd/decryptd/internal/mqttstore"
	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"
)

// Connection: the links (one MQTT connection each), the first connect
// with back-off, dialing (TLS, wireConn, generations that void the
// previous connection's unacknowledged messages), subscribing on every
// connection, and connection state logs.

// link is one of the Consumer's MQTT connections: its own paho client (so
// its own reader and router goroutines), its own persistent session under
// its own client id, its own receive order and acker. Everything else
// (admission, lanes, workers, the Processor) is the Consumer's.
type link struct {
	c      *Consumer
	n      int    // 0 .. Connections-1; the metrics' connection label
	id     string // client id (Options.linkClientID)
	log    *zap.Logger
	m      linkMetrics
	client mqtt.Client

	ackWake  chan struct{}
	ackBuf   []*entry // owned by the acker goroutine
	ackBytes []byte   // owned by the acker goroutine
	unacked  atomic.Int64

	mu     sync.Mutex
	gen    uint64        // connection generation, bumped on every successful dial
	genNow atomic.Uint64 // gen, readable without mu (lanes and workers, per message)
	conn   *trackedConn  // connection of gen
	ackq   []*entry      // receive order of gen's admitted, unacknowledged messages
	// head is ackq[0] (nil when empty), stored under mu, read by finish
	// without it: only the head's finishing can let the acker advance, so
	// only it wakes the acker.
	head          atomic.Pointer[entry]
	subscribedGen uint64 // gen whose subscriptions succeeded

	connMu       sync.Mutex                  // serialises the first Connect with Disconnect
	connected    atomic.Bool                 // a connection was established at least once
	overflowConn atomic.Pointer[trackedConn] // connection releasing messages after an overflow
}

func newLink(c *Consumer, n int) *link {
	l := &link{c: c, n: n, id: c.o.linkClientID(n), ackWake: make(chan struct{}, 1)}
	l.log = c.log.With(zap.String("client_id", l.id))
	l.client = mqtt.NewClient(l.pahoOptions())
	return l
}

// ready reports whether l's connection is open and its subscriptions were
// granted on that connection.
func (l *link) ready() bool {
	if !l.client.IsConnectionOpen() {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.gen != 0 && l.subscribedGen == l.gen
}

func (l *link) currentGen() uint64 { return l.genNow.Load() }

// connect makes the first connection, retrying with capped back-off; from
// then on paho reconnects by itself.
func (l *link) connect(ctx context.Context) {
	c := l.c
	backoff := 500 * time.Millisecond
	for {
		// connMu orders this against shutdown's Disconnect, so a connect
		// can never start after it.
		l.connMu.Lock()
		select {
		case <-c.stopIntake:
			l.connMu.Unlock()
			return
		default:
		}
		tok := l.client.Connect()
		l.connMu.Unlock()
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

// disconnect ends l's connection (paho waits up to quiesce for its own
// work), after intake stopped and the acknowledgements were written.
func (l *link) disconnect(quiesce time.Duration) {
	l.connMu.Lock()
	defer l.connMu.Unlock()
	l.client.Disconnect(uint(quiesce.Milliseconds()))
}

// dial opens the network connection for paho (CustomOpenConnectionFn). It
// runs for every connection attempt, after paho's previous connection has
// fully stopped (its router goroutine included), so bumping the generation
// here separates the messages of one connection from the next exactly.
func (l *link) dial(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
	c := l.c
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

	if l.overflowConn.Swap(nil) != nil {
		c.overflowing.Add(-1)
	}
	l.mu.Lock()
	l.gen++
	l.genNow.Store(l.gen)
	l.conn = tracked
	stale := l.ackq
	l.ackq = nil
	l.head.Store(nil)
	l.unacked.Store(0)
	l.mu.Unlock()
	// The previous connection's unacknowledged messages are void here: the
	// acker skips them and the broker redelivers them on this connection.
	for _, e := range stale {
		c.unref(e)
	}
	return tracked, nil
}

func (l *link) onConnect(cl mqtt.Client) {
	c := l.c
	gen := l.currentGen()
	backoff := time.Second
	for {
		err := l.subscribe(cl)
		if err == nil {
			l.mu.Lock()
			current := l.gen == gen
			if current {
				l.subscribedGen = gen
			}
			l.mu.Unlock()
			if current {
				l.log.Info("subscribed", zap.Strings("filters", c.filters))
			}
			return
		}
		l.log.Error("subscribe failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
		select {
		case <-time.After(backoff):
		case <-c.stopIntake:
			return
		}
		if l.currentGen() != gen || !cl.IsConnectionOpen() {
			return // the next connection's onConnect takes over
		}
		backoff = min(2*backoff, c.o.MaxReconnectInterval)
	}
}

// subscribe (re)subscribes every filter at QoS 1. Renewing on every
// connection matters: paho never re-subscribes, and a broker that lost its
// state (persistence off) would otherwise leave a "connected" consumer
// receiving nothing.
func (l *link) subscribe(cl mqtt.Client) error {
	for _, f := range l.c.filters {
		tok := cl.Subscribe(f, 1, nil) // nil: every message goes to the default handler
		if !tok.WaitTimeout(l.c.o.ConnectTimeout) {
			return fmt.Errorf("subscribe %s: no SUBACK within %s", f, l.c.o.ConnectTimeout)
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
				l.log.Warn("broker granted QoS 0 instead of 1; messages on this filter may be lost", zap.String("filter", f))
			}
		}
	}
	return nil
}

// unsubscribe removes l's session from the subscriptions (nothing to do
// while it is not connected).
func (l *link) unsubscribe(ctx context.Context) error {
	if !l.client.IsConnectionOpen() {
		return nil
	}
	tok := l.client.Unsubscribe(l.c.filters...)
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return fmt.Errorf("consumer: %s: unsubscribe: %w", l.id, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("consumer: %s: unsubscribe: %w", l.id, err)
	}
	l.log.Info("unsubscribed", zap.Strings("filters", l.c.filters))
	return nil
}

// handle is paho's handler for l's messages: onMessage, after the tests'
// recvHook if one is set.
func (l *link) handle(cl mqtt.Client, pm mqtt.Message) {
	if h := l.c.recvHook; h != nil {
		h(l.n, pm)
	}
	l.onMessage(cl, pm)
}

// onNotify logs connection state changes (never payloads) and counts
// reconnects.
func (l *link) onNotify(_ mqtt.Client, n mqtt.ConnectionNotification) {
	switch n := n.(type) {
	case mqtt.ConnectionNotificationConnected:
		if l.connected.Swap(true) {
			l.m.reconnects.Inc()
			l.log.Info("reconnected")
		} else {
			l.log.Info("connected")
		}
	case mqtt.ConnectionNotificationConnecting:
		l.log.Debug("connecting", zap.Bool("reconnect", n.IsReconnect), zap.Int("attempt", n.Attempt))
	case mqtt.ConnectionNotificationBrokerFailed:
		l.log.Warn("connection to broker failed", zap.String("broker", redact(n.Broker)), zap.Error(n.Reason))
	case mqtt.ConnectionNotificationFailed:
		l.log.Warn("connect failed", zap.Error(n.Reason))
	case mqtt.ConnectionNotificationLost:
		// Ready needs no reset here: this notification may run after the
		// next connection subscribed, and the new generation already
		// makes the old subscription not count.
		l.log.Warn("connection lost", zap.Error(n.Reason))
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

// pahoOptions configures l's paho client for the consumer's promises: a persistent
// session, manual acknowledgement, no store, wire-order handling, and the
// consumer's own dialing, subscribing and reconnect policy.
func (l *link) pahoOptions() *mqtt.ClientOptions {
	o := l.c.o
	po := mqtt.NewClientOptions()
	for _, b := range o.Brokers {
		po.AddBroker(b)
	}
	po.SetClientID(l.id).
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
		SetDefaultPublishHandler(l.handle).
		SetOnConnectHandler(l.onConnect).
		SetConnectionNotificationHandler(l.onNotify).
		SetCustomOpenConnectionFn(l.dial).
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
	return po
}
