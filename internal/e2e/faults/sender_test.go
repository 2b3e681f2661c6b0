package faults_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/decryptd/decryptd/internal/fleet"
	"github.com/decryptd/decryptd/internal/seal"
)

// nonceRecorder is the generator's nonce source: crypto/rand, keeping the
// first nonce drawn since the last reset (a record's id is derived from
// its message's first sealed value's nonce).
type nonceRecorder struct {
	first []byte
}

func (r *nonceRecorder) Read(p []byte) (int, error) {
	n, err := rand.Read(p)
	if r.first == nil && n >= seal.NonceSize {
		r.first = append([]byte(nil), p[:seal.NonceSize]...)
	}
	return n, err
}

// outMsg is one message a gateway publishes.
type outMsg struct {
	dev     int // index in the fleet: picks the gateway
	topic   string
	payload []byte
	id      string // record id of a good message
	device  string
	reason  string // expected dead-letter reason of a bad one
}

// recordID is the spec's record id: hex SHA-256(key id, 0, version, 0,
// first nonce).
func recordID(keyID, version string, nonce []byte) string {
	h := sha256.New()
	h.Write([]byte(keyID))
	h.Write([]byte{0})
	h.Write([]byte(version))
	h.Write([]byte{0})
	h.Write(nonce)
	return hex.EncodeToString(h.Sum(nil))
}

// sender is a set of device gateways: mutual-TLS MQTT connections at QoS
// 1, each device always on the same one. A gateway resends what the broker
// did not acknowledge (the connection broke, the broker died) once it is
// connected again, as a QoS 1 device keeps what it got no PUBACK for: a
// message counts as sent once the broker acknowledged it.
type sender struct {
	e    *env
	gws  []*gateway
	gen  *fleet.Generator
	nr   *nonceRecorder
	stop atomic.Bool

	genMu sync.Mutex     // gen and nr: streams may run at once
	index map[string]int // device id -> index in the fleet

	mu       sync.Mutex
	good     map[string]string    // record id -> device, acknowledged
	bad      map[[32]byte]badSent // payload hash -> expected reason, acknowledged
	firstAck map[string]time.Time
	resent   int
}

// badSent is a bad message sent n times (the same bytes: a replay drawn
// twice from the same history).
type badSent struct {
	reason string
	n      int
}

type gateway struct {
	s    *sender
	name string
	c    mqtt.Client
	in   chan outMsg
	done chan error
}

func newSender(t *testing.T, e *env, gateways int, mix fleet.Mix) *sender {
	t.Helper()
	nr := &nonceRecorder{}
	gen, err := fleet.NewGenerator(e.fleet.Devices(), mix, 42, nr)
	if err != nil {
		t.Fatal(err)
	}
	s := &sender{e: e, gen: gen, nr: nr, good: map[string]string{}, bad: map[[32]byte]badSent{}, firstAck: map[string]time.Time{}, index: map[string]int{}}
	for i, d := range e.fleet.Devices() {
		s.index[d.ID] = i
	}
	for i := range gateways {
		g := &gateway{s: s, name: fmt.Sprintf("gw-%d-%s", i, randHex(3)), in: make(chan outMsg, 64), done: make(chan error, 1)}
		if err := g.connect(30 * time.Second); err != nil {
			t.Fatalf("gateway %s: %v", g.name, err)
		}
		s.gws = append(s.gws, g)
		go func(in <-chan outMsg) { g.done <- g.run(in) }(g.in)
	}
	t.Cleanup(func() { s.close() })
	return s
}

func (g *gateway) connect(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		o := mqtt.NewClientOptions().
			AddBroker(g.s.e.broker.SSLURL).
			SetClientID(g.name).
			SetTLSConfig(g.s.e.broker.ClientTLS(g.name)).
			SetCleanSession(true).
			SetAutoReconnect(false).
			SetConnectTimeout(5 * time.Second).
			SetWriteTimeout(10 * time.Second).
			SetKeepAlive(10 * time.Second)
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
			g.c = c
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("connect: %v", tok.Error())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

type pendingMsg struct {
	m   outMsg
	tok mqtt.Token
}

// run publishes what comes in, at most window unacknowledged, and resends
// the unacknowledged ones after a reconnect.
func (g *gateway) run(in <-chan outMsg) error {
	const window = 200
	var pending []pendingMsg
	ack := func(p pendingMsg) {
		g.s.mu.Lock()
		if p.m.id != "" {
			g.s.good[p.m.id] = p.m.device
			if _, ok := g.s.firstAck[p.m.id]; !ok {
				g.s.firstAck[p.m.id] = time.Now()
			}
		} else {
			h := sha256.Sum256(p.m.payload)
			b := g.s.bad[h]
			b.reason = p.m.reason
			b.n++
			g.s.bad[h] = b
		}
		g.s.mu.Unlock()
	}
	// settle waits for the oldest pending; on failure it reconnects and
	// resends every pending message not known to be acknowledged.
	settle := func() error {
		p := pending[0]
		if p.tok.WaitTimeout(15*time.Second) && p.tok.Error() == nil {
			ack(p)
			pending = pending[1:]
			return nil
		}
		var keep []pendingMsg
		for _, q := range pending {
			if q.tok.WaitTimeout(0) && q.tok.Error() == nil {
				ack(q)
				continue
			}
			keep = append(keep, q)
		}
		g.c.Disconnect(0)
		if err := g.connect(90 * time.Second); err != nil {
			return err
		}
		g.s.mu.Lock()
		g.s.resent += len(keep)
		g.s.mu.Unlock()
		for i := range keep {
			keep[i].tok = g.c.Publish(keep[i].m.topic, 1, false, keep[i].m.payload)
		}
		pending = keep
		return nil
	}
	// drain books the acknowledged messages at the front, so what was
	// sent is known while the stream runs.
	drain := func() {
		for len(pending) > 0 && pending[0].tok.WaitTimeout(0) && pending[0].tok.Error() == nil {
			ack(pending[0])
			pending = pending[1:]
		}
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case m, ok := <-in:
			if !ok {
				in = nil
				break
			}
			for len(pending) >= window {
				if err := settle(); err != nil {
					return err
				}
			}
			pending = append(pending, pendingMsg{m: m, tok: g.c.Publish(m.topic, 1, false, m.payload)})
			drain()
		case <-tick.C:
			drain()
		}
		if in == nil {
			break
		}
	}
	for len(pending) > 0 {
		if err := settle(); err != nil {
			return err
		}
	}
	return nil
}

// next makes device d's next message (good or bad as the mix draws).
func (s *sender) next(di int) (outMsg, error) {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	d := s.e.fleet.Device(di)
	s.nr.first = nil
	m, err := s.gen.Next(d, time.Now().Unix())
	if err != nil {
		return outMsg{}, err
	}
	// A replay is of an earlier message of any device: it goes on that
	// device's connection, after its original.
	om := outMsg{dev: s.index[m.Device.ID], topic: m.Topic, payload: m.Payload, device: m.Device.ID}
	if m.Kind == fleet.Good {
		ver, _ := d.Current()
		if s.nr.first == nil {
			return outMsg{}, errors.New("generator drew no nonce for a good message")
		}
		om.id = recordID(d.KeyID, ver, s.nr.first)
	} else {
		om.reason = m.Kind.Reason()
	}
	return om, nil
}

// send hands a message to its device's gateway.
func (s *sender) send(m outMsg) {
	s.gws[m.dev%len(s.gws)].in <- m
}

// stream sends count messages round-robin over devices at rate per second
// (0: as fast as the gateways take them), in the background. The returned
// channel yields the outcome once every message was handed over.
func (s *sender) stream(devices []int, count int, rate float64) <-chan error {
	out := make(chan error, 1)
	go func() {
		start := time.Now()
		for i := 0; i < count; i++ {
			if s.stop.Load() {
				out <- errors.New("stopped")
				return
			}
			if rate > 0 {
				due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				}
			}
			m, err := s.next(devices[i%len(devices)])
			if err != nil {
				out <- err
				return
			}
			s.send(m)
		}
		out <- nil
	}()
	return out
}

// close ends the gateways after what they hold is acknowledged and
// returns the first error.
func (s *sender) close() error {
	var first error
	for _, g := range s.gws {
		if g.in == nil {
			continue
		}
		close(g.in)
		g.in = nil
		if err := <-g.done; err != nil && first == nil {
			first = err
		}
		if g.c != nil {
			g.c.Disconnect(100)
		}
	}
	return first
}

// allDevices is 0..n-1.
func allDevices(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// wait waits for a stream's end, bounded.
func waitStream(t *testing.T, ch <-chan error, limit time.Duration) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
	case <-time.After(limit):
		t.Fatalf("stream not done within %s", limit)
	}
}

// flush closes the gateways (every message acknowledged) or fails.
func (s *sender) flush(t *testing.T) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("gateways: %v", err)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("gateways: not every message acknowledged within 3m")
	}
}

// ctxT is a context bounded by d.
func ctxT(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
