package consumer

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// fakeProc records the messages it accepted, in the order it accepted them.
// fn, if set, runs first; a non-nil error from it is returned as is.
type fakeProc struct {
	fn func(ctx context.Context, m intake.Message) error
	// decline, if set, decides which messages TryProcess leaves to a
	// worker (which then runs fn); the others are taken on the intake.
	decline func(m intake.Message) bool

	mu     sync.Mutex
	calls  []intake.Message
	inline int // calls taken by TryProcess while decline is set
}

// Process runs the call on the worker and reports it before returning.
func (p *fakeProc) Process(ctx context.Context, m intake.Message, done func(error)) {
	done(p.process(ctx, m))
}

// TryProcess declines while fn is set (fn may block), so that the worker
// runs it; otherwise it takes the message on the intake goroutine.
func (p *fakeProc) TryProcess(ctx context.Context, m intake.Message, done func(error)) bool {
	switch {
	case p.decline != nil:
		if p.decline(m) {
			return false
		}
		p.mu.Lock()
		p.calls = append(p.calls, m)
		p.inline++
		p.mu.Unlock()
		done(nil)
		return true
	case p.fn != nil:
		return false
	}
	done(p.process(ctx, m))
	return true
}

func (p *fakeProc) process(ctx context.Context, m intake.Message) error {
	if p.fn != nil {
		if err := p.fn(ctx, m); err != nil {
			return err
		}
	}
	p.mu.Lock()
	p.calls = append(p.calls, m)
	p.mu.Unlock()
	return nil
}

func (p *fakeProc) snapshot() []intake.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]intake.Message(nil), p.calls...)
}

// count returns how often each payload was accepted.
func (p *fakeProc) count() map[string]int {
	n := map[string]int{}
	for _, m := range p.snapshot() {
		n[string(m.Payload)]++
	}
	return n
}

func (p *fakeProc) has(payload string) bool { return p.count()[payload] > 0 }

type harness struct {
	t    *testing.T
	b    *mosquittotest.Broker
	pub  mqtt.Client
	logs *observer.ObservedLogs
	log  *zap.Logger
}

func newHarness(t *testing.T, o mosquittotest.Options) *harness {
	t.Helper()
	b := mosquittotest.Start(t, o)
	core, logs := observer.New(zapcore.DebugLevel)
	h := &harness{t: t, b: b, logs: logs, log: zap.New(core)}
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range logs.All() {
				t.Logf("consumer log: %s %s %v", e.Level, e.Message, e.ContextMap())
			}
		}
	})
	po := mqtt.NewClientOptions().AddBroker(b.SSLURL).SetClientID("publisher").
		SetTLSConfig(b.ClientTLS("publisher")).SetCleanSession(true).SetAutoReconnect(true)
	h.pub = mqtt.NewClient(po)
	if tok := h.pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher connect: %v", tok.Error())
	}
	t.Cleanup(func() { h.pub.Disconnect(100) })
	return h
}

// options returns consumer options for this broker with a client
// certificate for id.
func (h *harness) options(id string) Options {
	return Options{
		Brokers:     []string{h.b.SSLURL},
		ClientID:    id,
		Topics:      []string{"dev/+/evt"},
		SharedGroup: "g",
		TLS:         h.b.ClientTLS(id),
		KeepAlive:   10 * time.Second,
		Workers:     16,
		// One connection unless a test asks for more: the default follows
		// GOMAXPROCS, and these tests reason about one receive order.
		Connections: 1,
		Logger:      h.log.With(zap.String("test_consumer", id)),
	}
}

// start runs c until the test ends and waits until it is ready.
func (h *harness) start(c *Consumer) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			h.t.Error("Run did not return")
		}
	})
	wait.For(h.t, "consumer ready", c.Ready)
}

// publish sends payloads in order at QoS 1 and waits for the broker to
// have them all.
func (h *harness) publish(topic string, payloads ...string) {
	h.t.Helper()
	toks := make([]mqtt.Token, 0, len(payloads))
	for _, p := range payloads {
		toks = append(toks, h.pub.Publish(topic, 1, false, p))
	}
	for _, tok := range toks {
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			h.t.Fatalf("publish %s: %v", topic, tok.Error())
		}
	}
}

func topic(i int) string { return fmt.Sprintf("dev/d%03d/evt", i) }

func seqPayloads(topic string, n int) []string {
	p := make([]string, n)
	for i := range p {
		p[i] = fmt.Sprintf("%s#%04d", topic, i)
	}
	return p
}

// dropConnection closes the network connection of the consumer's first
// link as a network failure would; paho reconnects by itself.
func dropConnection(c *Consumer) uint64 { return dropLink(c.links[0]) }

// dropLink closes l's current network connection and returns its
// generation.
func dropLink(l *link) uint64 {
	l.mu.Lock()
	conn, gen := l.conn, l.gen
	l.mu.Unlock()
	conn.abort()
	return gen
}

// waitReconnected waits for a connection of the first link newer than gen
// to be subscribed.
func waitReconnected(t *testing.T, c *Consumer, gen uint64) {
	t.Helper()
	wait.For(t, "reconnect and resubscribe", func() bool { return c.links[0].currentGen() > gen && c.Ready() })
}

// barrier returns once the broker has processed everything the consumer's
// client sent before it: a SUBSCRIBE (idempotent here) travels through the
// same paho queue as PUBACKs, and the broker handles a client's packets in
// order, so its SUBACK means earlier PUBACKs were taken.
func barrier(t *testing.T, c *Consumer) {
	t.Helper()
	for _, l := range c.links {
		tok := l.client.Subscribe(c.filters[0], 1, nil)
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("barrier subscribe (%s): %v", l.id, tok.Error())
		}
	}
}

// idle reports whether the consumer holds nothing: every message done and
// acknowledged on every link.
func idle(c *Consumer) bool {
	if c.slots.Held() != 0 {
		return false
	}
	for _, l := range c.links {
		if l.unacked.Load() != 0 {
			return false
		}
	}
	return true
}

// distinctTopics returns n topics that route to n different workers.
func distinctTopics(n, workers int) []string {
	seen := map[int]bool{}
	var out []string
	for i := 0; len(out) < n; i++ {
		tp := topic(i)
		if w := int(hashTopic(tp) % uint32(workers)); !seen[w] {
			seen[w] = true
			out = append(out, tp)
		}
	}
	return out
}

func hasLog(logs *observer.ObservedLogs, msg string, errPart func(string) bool) bool {
	for _, e := range logs.FilterMessage(msg).All() {
		if err, ok := e.ContextMap()["error"].(string); ok && errPart(err) {
			return true
		}
	}
	return false
}
