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

// Connection: the first connect with back-off, dialing (TLS, wireConn,
// generations that void the previous connection's unacknowledged
// messages), subscribing on every connection, and connection state logs.

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

// pahoOptions configures paho for the consumer's promises: a persistent
// session, manual acknowledgement, no store, wire-order handling, and the
// consumer's own dialing, subscribing and reconnect policy.
func (c *Consumer) pahoOptions() *mqtt.ClientOptions {
	o := c.o
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
	return po
}
