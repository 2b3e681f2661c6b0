package fleet

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Defaults of PublisherOptions.
const (
	DefaultConnections    = 8
	DefaultMaxOutstanding = 256
	DefaultAckTimeout     = 30 * time.Second
	DefaultConnectTimeout = 10 * time.Second
)

// ErrPublishTimeout: the broker did not acknowledge a publish within
// PublisherOptions.AckTimeout.
var ErrPublishTimeout = errors.New("fleet: publish not acknowledged in time")

// PublisherOptions configure a Publisher.
type PublisherOptions struct {
	// Broker is the broker URL, e.g. ssl://127.0.0.1:8883 (tcp:// for a
	// plain listener).
	Broker string
	// TLS is the client's TLS configuration (mutual TLS: a client
	// certificate in Certificates); nil for tcp://.
	TLS *tls.Config
	// Connections is how many MQTT connections carry the fleet's messages
	// (default 8): devices are multiplexed onto them, each device always on
	// the same one so its messages stay in order.
	Connections int
	// MaxOutstanding bounds the publishes awaiting PUBACK per connection
	// (default 256); Publish blocks while the bound is reached.
	MaxOutstanding int
	// ClientID prefixes the connections' client ids (default "telemsim-"
	// and a random suffix, so two simulators never kick each other off).
	ClientID string
	// QoS is the publish QoS (default 1: Mosquitto delivers at
	// min(publish, subscription) QoS, so devices must publish at QoS 1).
	QoS byte
	// ConnectTimeout bounds connecting (default 10s); AckTimeout bounds the
	// wait for one PUBACK (default 30s).
	ConnectTimeout time.Duration
	AckTimeout     time.Duration
}

// Publisher publishes over a pool of MQTT connections. Safe for concurrent
// use; Publish on one connection keeps the order of its calls.
type Publisher struct {
	opts  PublisherOptions
	conns []*pubConn

	subMu sync.Mutex
	subs  []subscription // on connection 0 (SubscribeRekeys)
}

type pubConn struct {
	client  mqtt.Client
	pending chan pendingPub // capacity MaxOutstanding: the bound itself
	wg      sync.WaitGroup
	timeout time.Duration
	// inflight counts publishes handed to paho and not yet completed;
	// Flush waits for it to reach zero.
	inflight atomic.Int64
	mu       sync.Mutex
	idle     *sync.Cond
}

type pendingPub struct {
	tok  mqtt.Token
	done func(error)
}

// NewPublisher connects opts.Connections clients, failing if any cannot
// connect within opts.ConnectTimeout.
func NewPublisher(ctx context.Context, opts PublisherOptions) (*Publisher, error) {
	if opts.Broker == "" {
		return nil, errors.New("fleet: publisher needs a broker URL")
	}
	if opts.Connections <= 0 {
		opts.Connections = DefaultConnections
	}
	if opts.MaxOutstanding <= 0 {
		opts.MaxOutstanding = DefaultMaxOutstanding
	}
	if opts.QoS == 0 {
		opts.QoS = 1
	}
	if opts.QoS > 2 {
		return nil, fmt.Errorf("fleet: QoS %d: want 0, 1 or 2", opts.QoS)
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.AckTimeout <= 0 {
		opts.AckTimeout = DefaultAckTimeout
	}
	if opts.ClientID == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		opts.ClientID = "telemsim-" + hex.EncodeToString(b[:]) + "-"
	}
	p := &Publisher{opts: opts}
	for i := 0; i < opts.Connections; i++ {
		co := mqtt.NewClientOptions().
			AddBroker(opts.Broker).
			SetClientID(opts.ClientID + strconv.Itoa(i)).
			SetCleanSession(true).
			SetAutoReconnect(true).
			SetMaxReconnectInterval(5 * time.Second).
			SetConnectTimeout(opts.ConnectTimeout).
			SetKeepAlive(30 * time.Second).
			SetPingTimeout(10 * time.Second).
			SetOrderMatters(false).
			SetWriteTimeout(opts.AckTimeout)
		if opts.TLS != nil {
			co.SetTLSConfig(opts.TLS.Clone())
		}
		if i == 0 {
			co.SetOnConnectHandler(p.resubscribe)
		}
		c := mqtt.NewClient(co)
		tok := c.Connect()
		if !tok.WaitTimeout(opts.ConnectTimeout) {
			c.Disconnect(0)
			p.Close()
			return nil, fmt.Errorf("fleet: connect %s: no answer within %s", opts.Broker, opts.ConnectTimeout)
		}
		if err := tok.Error(); err != nil {
			p.Close()
			return nil, fmt.Errorf("fleet: connect %s: %w", opts.Broker, err)
		}
		if err := ctx.Err(); err != nil {
			c.Disconnect(0)
			p.Close()
			return nil, err
		}
		pc := &pubConn{client: c, pending: make(chan pendingPub, opts.MaxOutstanding), timeout: opts.AckTimeout}
		pc.idle = sync.NewCond(&pc.mu)
		pc.wg.Add(1)
		go pc.complete()
		p.conns = append(p.conns, pc)
	}
	return p, nil
}

// complete waits for each token in publish order (PUBACKs come back
// roughly in that order) and reports it.
func (pc *pubConn) complete() {
	defer pc.wg.Done()
	for pp := range pc.pending {
		var err error
		if !pp.tok.WaitTimeout(pc.timeout) {
			err = ErrPublishTimeout
		} else {
			err = pp.tok.Error()
		}
		if pp.done != nil {
			pp.done(err)
		}
		if pc.inflight.Add(-1) == 0 {
			pc.mu.Lock()
			pc.idle.Broadcast()
			pc.mu.Unlock()
		}
	}
}

// Connections is the number of connections.
func (p *Publisher) Connections() int { return len(p.conns) }

// Publish sends payload to topic on connection conn (modulo the pool
// size), blocking while that connection has MaxOutstanding publishes
// awaiting their PUBACK or until ctx ends. done (optional) is called once
// with the outcome, from the connection's completion goroutine: keep it
// short. The payload must not be changed afterwards.
func (p *Publisher) Publish(ctx context.Context, conn int, topic string, payload []byte, done func(error)) error {
	pc := p.conns[conn%len(p.conns)]
	if err := ctx.Err(); err != nil {
		return err
	}
	pc.inflight.Add(1)
	tok := pc.client.Publish(topic, p.opts.QoS, false, payload)
	select {
	case pc.pending <- pendingPub{tok: tok, done: done}:
		return nil
	case <-ctx.Done():
		// Not queued: the completion goroutine will never see it, so
		// report it here, after its outcome is known.
		go func() {
			var err error
			if !tok.WaitTimeout(pc.timeout) {
				err = ErrPublishTimeout
			} else {
				err = tok.Error()
			}
			if done != nil {
				done(err)
			}
			if pc.inflight.Add(-1) == 0 {
				pc.mu.Lock()
				pc.idle.Broadcast()
				pc.mu.Unlock()
			}
		}()
		return nil
	}
}

// Flush waits until every publish so far is acknowledged or failed, or ctx
// ends.
func (p *Publisher) Flush(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, pc := range p.conns {
			pc.mu.Lock()
			for pc.inflight.Load() > 0 && ctx.Err() == nil {
				pc.idle.Wait()
			}
			pc.mu.Unlock()
		}
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		// Wake the waiter so its goroutine ends.
		for _, pc := range p.conns {
			pc.mu.Lock()
			pc.idle.Broadcast()
			pc.mu.Unlock()
		}
		<-done
		return ctx.Err()
	}
}

// Outstanding is the number of publishes awaiting their outcome.
func (p *Publisher) Outstanding() int {
	n := int64(0)
	for _, pc := range p.conns {
		n += pc.inflight.Load()
	}
	return int(n)
}

// Close stops the completion goroutines (after the outcomes of publishes
// already made, bounded by AckTimeout each) and disconnects. Call it once,
// after the last Publish.
func (p *Publisher) Close() {
	for _, pc := range p.conns {
		close(pc.pending)
	}
	for _, pc := range p.conns {
		pc.wg.Wait()
		pc.client.Disconnect(250)
	}
	p.conns = nil
}
