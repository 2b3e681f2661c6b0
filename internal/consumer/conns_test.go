package consumer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// Tests of a consumer with several connections (Options.Connections).

func TestConnectionsOptions(t *testing.T) {
	base := Options{Brokers: []string{"tcp://127.0.0.1:1"}, AllowPlainTCP: true, ClientID: "r0", Topics: []string{"a"}}
	for _, n := range []int{-1, MaxConnections + 1} {
		o := base
		o.Connections = n
		if _, err := o.withDefaults(); err == nil || !strings.Contains(err.Error(), "connections") {
			t.Errorf("connections %d: err %v", n, err)
		}
	}
	got, err := base.withDefaults()
	if err != nil || got.Connections != DefaultConnections() {
		t.Fatalf("default connections %d (%v), want %d", got.Connections, err, DefaultConnections())
	}
	if d := DefaultConnections(); d < 1 || d > 4 {
		t.Fatalf("DefaultConnections %d", d)
	}
	// Lanes: with one connection GOMAXPROCS-1 (at least 1); with several
	// none unless set; negative: none.
	for _, tc := range []struct{ conns, lanes, want int }{
		{1, 0, max(runtime.GOMAXPROCS(0)-1, 1)}, {2, 0, 0}, {1, -1, 0}, {4, 3, 3},
	} {
		o := base
		o.Connections, o.Lanes = tc.conns, tc.lanes
		if got, err := o.withDefaults(); err != nil || got.Lanes != tc.want {
			t.Errorf("connections %d, lanes %d: lanes %d (%v), want %d", tc.conns, tc.lanes, got.Lanes, err, tc.want)
		}
	}
	// Connection 0 keeps the plain client id: going from one connection
	// to several keeps the replica's session.
	for n, want := range []string{"r0", "r0-1", "r0-2"} {
		if id := got.linkClientID(n); id != want {
			t.Errorf("client id of connection %d: %q, want %q", n, id, want)
		}
	}
}

func TestConnectionsMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	_, err := New(Options{Brokers: []string{"tcp://127.0.0.1:1"}, AllowPlainTCP: true, ClientID: "m", Topics: []string{"a"}, Connections: 3, Registerer: reg}, &fakeProc{})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int{
		"decryptd_mqtt_connection_up": 3, "decryptd_mqtt_unacked_messages": 3, "decryptd_mqtt_messages_received_total": 3,
		"decryptd_mqtt_reconnects_total": 3, "decryptd_mqtt_messages_released_total": 3, "decryptd_mqtt_messages_redelivered_total": 3,
		"decryptd_inflight_messages": 1, "decryptd_mqtt_messages_fast_path_total": 1,
	} {
		if n, err := testutil.GatherAndCount(reg, name); n != want || err != nil {
			t.Errorf("%s: %d series (%v), want %d", name, n, err, want)
		}
	}
}

// recorder keeps what the tests watch from outside: each link's receive
// order (recvHook) and the acknowledgements (ackHook).
type recorder struct {
	mu    sync.Mutex
	recv  map[int][]string // link -> payloads in its receive order
	acks  map[string]int
	links map[string]int // payload -> link of its last receipt
}

func record(c *Consumer) *recorder {
	r := &recorder{recv: map[int][]string{}, acks: map[string]int{}, links: map[string]int{}}
	c.recvHook = func(n int, m mqtt.Message) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.recv[n] = append(r.recv[n], string(m.Payload()))
		r.links[string(m.Payload())] = n
	}
	c.ackHook = func(m intake.Message) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.acks[string(m.Payload)]++
	}
	return r
}

func (r *recorder) ackCount() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.acks))
	for k, v := range r.acks {
		out[k] = v
	}
	return out
}

// TestConnectionsOrderNoLoss: with four connections in one shared group,
// every message is processed and acknowledged exactly once, every
// connection gets a share, one topic is never in two Processor calls at
// once, and on each connection a topic's messages are processed in the
// order that connection received them (which is the order they were
// published). Across connections the broker keeps no order (Mosquitto
// round-robins a topic's messages over the group's sessions); the test
// logs how often two consecutive messages of a topic arrived over
// different connections.
func TestConnectionsOrderNoLoss(t *testing.T) {
	// Lanes 0: the default with several connections, each router hands
	// its messages on itself; 2: two lanes shared by the four routers.
	for _, lanes := range []int{0, 2} {
		t.Run(fmt.Sprintf("lanes=%d", lanes), func(t *testing.T) { testConnectionsOrderNoLoss(t, lanes) })
	}
}

func testConnectionsOrderNoLoss(t *testing.T, lanes int) {
	h := newHarness(t, mosquittotest.Options{})
	var mu sync.Mutex
	inCall := map[string]int{}
	var overlap atomic.Int64
	// call models a Processor call of m's topic that takes a while; two at
	// once for one topic are counted.
	call := func(m intake.Message) {
		mu.Lock()
		inCall[m.Topic]++
		if inCall[m.Topic] > 1 {
			overlap.Add(1)
		}
		mu.Unlock()
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
		mu.Lock()
		inCall[m.Topic]--
		mu.Unlock()
	}
	p := &fakeProc{
		fn: func(_ context.Context, m intake.Message) error { call(m); return nil },
		// A third of the messages go to a worker, the rest are taken on
		// the fast path (a lane or a router): the paths interleave within
		// a topic.
		decline: func(m intake.Message) bool {
			if m.Payload[len(m.Payload)-1]%3 == 0 {
				return true
			}
			call(m)
			return false
		},
	}
	o := h.options(fmt.Sprintf("multi%d", lanes))
	o.Connections = 4
	o.Lanes = lanes
	o.Workers = 4
	o.MaxInFlight = 128
	c, err := New(o, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.lanes) != lanes {
		t.Fatalf("%d lanes, want %d", len(c.lanes), lanes)
	}
	r := record(c)
	h.start(c)

	const topics, per = 12, 150
	publishSequences(h, topics, per)
	wait.For(t, "all processed", func() bool { return len(p.count()) == topics*per })
	wait.For(t, "all acknowledged", func() bool { return idle(c) })

	for payload, n := range p.count() {
		if n != 1 {
			t.Errorf("%s processed %d times", payload, n)
		}
	}
	acks := r.ackCount()
	if len(acks) != topics*per {
		t.Errorf("%d messages acknowledged, want %d", len(acks), topics*per)
	}
	for payload, n := range acks {
		if n != 1 {
			t.Errorf("%s acknowledged %d times", payload, n)
		}
	}
	if n := overlap.Load(); n > 0 {
		t.Errorf("a topic was in two Processor calls at once %d times", n)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	for n := range o.Connections {
		if len(r.recv[n]) == 0 {
			t.Errorf("connection %d received nothing; the shared group should spread messages over all", n)
		}
		t.Logf("connection %d received %d", n, len(r.recv[n]))
	}
	// Per connection and topic: received in publish order, processed in
	// receive order.
	calls := p.snapshot()
	for n := range o.Connections {
		var mine []intake.Message
		for _, m := range calls {
			if r.links[string(m.Payload)] == n {
				mine = append(mine, m)
			}
		}
		checkPerTopicOrder(t, mine)
		recvd := map[string][]string{}
		for _, pl := range r.recv[n] {
			tp := pl[:strings.IndexByte(pl, '#')]
			recvd[tp] = append(recvd[tp], pl)
		}
		for tp, seq := range recvd {
			if !sort.StringsAreSorted(seq) {
				t.Errorf("connection %d, topic %s: received out of publish order", n, tp)
			}
		}
	}
	// Across connections: informative only.
	inversions, changes := 0, 0
	last := map[string]string{}
	for _, m := range calls {
		pl := string(m.Payload)
		if prev, ok := last[m.Topic]; ok {
			if r.links[prev] != r.links[pl] {
				changes++
			}
			if pl < prev {
				inversions++
			}
		}
		last[m.Topic] = pl
	}
	t.Logf("consecutive messages of a topic on different connections: %d; processed out of publish order across connections: %d", changes, inversions)
}

// TestConnectionDroppedMidStream: one of four connections is dropped while
// messages are in flight on it; its unacknowledged messages come back
// (Dup) on its reconnected session and nothing is lost; afterwards the
// broker holds nothing unacknowledged for any of the sessions.
func TestConnectionDroppedMidStream(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	// Processing waits for the gate, so that the dropped connection
	// surely holds unacknowledged messages.
	gate := make(chan struct{})
	p := &fakeProc{fn: func(ctx context.Context, _ intake.Message) error {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		time.Sleep(100 * time.Microsecond)
		return nil
	}}
	o := h.options("drop")
	o.Connections = 4
	o.Workers = 8
	o.MaxInFlight = 64
	c, err := New(o, p)
	if err != nil {
		t.Fatal(err)
	}
	r := record(c)
	h.start(c)

	const topics, per = 8, 150
	published := make(chan struct{})
	go func() { defer close(published); publishSequences(h, topics, per) }()
	victim := c.links[2]
	wait.For(t, "messages in flight on connection 2", func() bool { return victim.unacked.Load() > 0 })
	gen := dropLink(victim)
	close(gate)
	<-published
	wait.For(t, "connection 2 back", func() bool { return victim.currentGen() > gen && c.Ready() })
	wait.For(t, "every message processed", func() bool { return len(p.count()) == topics*per })
	wait.For(t, "all acknowledged", func() bool { return idle(c) })
	if got := testutil.ToFloat64(victim.m.redelivered); got == 0 {
		t.Error("no redelivery on the dropped connection")
	}
	acks := r.ackCount()
	for payload := range p.count() {
		if acks[payload] == 0 {
			t.Errorf("%s never acknowledged", payload)
		}
	}

	// Nothing left unacknowledged at the broker: reconnecting every
	// session brings back nothing; a marker per topic comes after any
	// redelivery of that topic's session.
	barrier(t, c)
	before := len(p.snapshot())
	for _, l := range c.links {
		g := dropLink(l)
		wait.For(t, "reconnect", func() bool { return l.currentGen() > g && l.ready() })
	}
	for i := range topics {
		h.publish(topic(i), "marker-"+topic(i))
	}
	wait.For(t, "markers", func() bool {
		for i := range topics {
			if !p.has("marker-" + topic(i)) {
				return false
			}
		}
		return true
	})
	wait.For(t, "markers acknowledged", func() bool { return idle(c) })
	if extra := len(p.snapshot()) - before - topics; extra != 0 {
		t.Errorf("%d messages redelivered after everything was acknowledged", extra)
	}
}

// TestShutdownDrainsEveryConnection: at shutdown every connection holds
// messages being processed; Shutdown finishes them and acknowledges each
// on its own connection before disconnecting, so a restarted replica (same
// client ids) gets none of them again.
func TestShutdownDrainsEveryConnection(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	release := make(chan struct{})
	p1 := &fakeProc{fn: func(ctx context.Context, _ intake.Message) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	o := h.options("drainall")
	o.Connections = 4
	o.Workers = 64
	c1, err := New(o, p1)
	if err != nil {
		t.Fatal(err)
	}
	r := record(c1)
	h.start(c1)

	const n = 40
	for i := range n {
		h.publish(topic(i), fmt.Sprintf("s%02d", i))
	}
	wait.For(t, "all held, on every connection", func() bool {
		for _, l := range c1.links {
			if l.unacked.Load() == 0 {
				return false
			}
		}
		return c1.slots.Held() == n
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c1.Shutdown(ctx) }()
	wait.For(t, "intake stopped", c1.stopping.Load)
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if acks := r.ackCount(); len(acks) != n {
		t.Fatalf("%d acknowledged at shutdown, want %d", len(acks), n)
	}
	for _, l := range c1.links {
		if k := l.unacked.Load(); k != 0 {
			t.Errorf("%s: %d unacknowledged after shutdown", l.id, k)
		}
	}

	p2 := &fakeProc{}
	c2, err := New(o, p2)
	if err != nil {
		t.Fatal(err)
	}
	h.start(c2)
	for i := range n {
		h.publish(topic(i), "marker")
	}
	wait.For(t, "markers", func() bool { return p2.count()["marker"] == n })
	for k := range p2.count() {
		if k != "marker" {
			t.Errorf("%s delivered again after a graceful shutdown", k)
		}
	}
}
