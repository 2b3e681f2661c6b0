package consumer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

func TestOptionsValidation(t *testing.T) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS10}
	base := func() Options {
		return Options{Brokers: []string{"ssl://127.0.0.1:8883"}, ClientID: "x", Topics: []string{"a/+/b"}, TLS: tlsCfg}
	}
	for _, tc := range []struct {
		name    string
		mod     func(*Options)
		wantErr string
	}{
		{"valid", func(*Options) {}, ""},
		{"no brokers", func(o *Options) { o.Brokers = nil }, "brokers"},
		{"no port", func(o *Options) { o.Brokers = []string{"ssl://broker"} }, "host and port"},
		{"bad scheme", func(o *Options) { o.Brokers = []string{"ws://broker:80"} }, "unsupported scheme"},
		{"ssl without tls", func(o *Options) { o.TLS = nil }, "needs a TLS configuration"},
		{"plain tcp not allowed", func(o *Options) { o.Brokers = []string{"tcp://127.0.0.1:1883"} }, "not allowed"},
		{"plain tcp allowed", func(o *Options) { o.Brokers = []string{"tcp://127.0.0.1:1883"}; o.AllowPlainTCP = true }, ""},
		{"no topics", func(o *Options) { o.Topics = nil }, "topics"},
		{"empty filter", func(o *Options) { o.Topics = []string{""} }, "topics[0]"},
		{"hash not last", func(o *Options) { o.Topics = []string{"a/#/b"} }, "'#'"},
		{"partial plus", func(o *Options) { o.Topics = []string{"a/b+/c"} }, "'+'"},
		{"share prefix given", func(o *Options) { o.Topics = []string{"$share/g/a"} }, "SharedGroup"},
		{"bad group", func(o *Options) { o.SharedGroup = "a/b" }, "shared group"},
		{"keepalive too short", func(o *Options) { o.KeepAlive = time.Second }, "keep alive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base()
			tc.mod(&o)
			got, err := o.withDefaults()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.MaxInFlight != DefaultMaxInFlight || got.Workers != DefaultWorkers || got.MaxReconnectInterval != DefaultMaxReconnectInterval || got.KeepAlive != DefaultKeepAlive {
				t.Errorf("defaults not applied: %+v", got)
			}
			if got.TLS != nil && got.TLS.MinVersion != tls.VersionTLS12 {
				t.Errorf("TLS MinVersion %x, want TLS 1.2", got.TLS.MinVersion)
			}
		})
	}
	t.Run("shared group", func(t *testing.T) {
		o := base()
		o.SharedGroup = "decryptd"
		if got := o.subscription("a/+/b"); got != "$share/decryptd/a/+/b" {
			t.Fatal(got)
		}
		o.SharedGroup = ""
		if got := o.subscription("a/+/b"); got != "a/+/b" {
			t.Fatal(got)
		}
	})
	t.Run("client id from environment", func(t *testing.T) {
		t.Setenv(ClientIDEnv, "ingest-7")
		o := base()
		o.ClientID = ""
		got, err := o.withDefaults()
		if err != nil || got.ClientID != "ingest-7" {
			t.Fatalf("client id %q, %v", got.ClientID, err)
		}
	})
}

func TestMetricsRegistered(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	_, err := New(Options{Brokers: []string{"tcp://127.0.0.1:1"}, AllowPlainTCP: true, ClientID: "m", Topics: []string{"a"}, Connections: 1, Registerer: reg}, &fakeProc{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := testutil.GatherAndCount(reg)
	if err != nil {
		t.Fatal(err)
	}
	if n != 11 {
		t.Fatalf("%d metrics, want 11", n)
	}
	for _, name := range []string{"decryptd_mqtt_messages_received_total", "decryptd_mqtt_connection_up", "decryptd_mqtt_reconnects_total",
		"decryptd_inflight_messages", "decryptd_mqtt_ack_latency_seconds", "decryptd_mqtt_unacked_messages", "decryptd_mqtt_messages_released_total",
		"decryptd_mqtt_messages_redelivered_total", "decryptd_mqtt_messages_fast_path_total",
		"decryptd_inflight_bytes", "decryptd_inflight_bytes_limit"} {
		if c, _ := testutil.GatherAndCount(reg, name); c != 1 {
			t.Errorf("metric %s missing", name)
		}
	}
	// A second consumer on the same registry is refused, not a panic.
	if _, err := New(Options{Brokers: []string{"tcp://127.0.0.1:1"}, AllowPlainTCP: true, ClientID: "m2", Topics: []string{"a"}, Registerer: reg}, &fakeProc{}); err == nil {
		t.Fatal("duplicate registration accepted")
	}
}

func TestMutualTLSRequired(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	o := h.options("nocert")
	o.TLS.Certificates = nil
	c, err := New(o, &fakeProc{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	wait.For(t, "connect failure logged", func() bool {
		return hasLog(h.logs, "connect failed", func(s string) bool { return mosquittotest.RefusedTLS(errors.New(s)) })
	})
	if c.Ready() {
		t.Fatal("ready without a client certificate")
	}
	wait.For(t, "broker to log the missing certificate", func() bool {
		return strings.Contains(h.b.Log(), "peer did not return a certificate")
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestDeliverAndAck(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	p := &fakeProc{}
	reg := prometheus.NewRegistry()
	o := h.options("c1")
	o.Registerer = reg
	o.TopicPattern = "dev/{device_id}/evt"
	c, err := New(o, p)
	if err != nil {
		t.Fatal(err)
	}
	h.start(c)

	const topics, per = 10, 20
	for i := range topics {
		h.publish(topic(i), seqPayloads(topic(i), per)...)
	}
	wait.For(t, "all messages processed", func() bool { return len(p.count()) == topics*per })
	wait.For(t, "all messages acknowledged", func() bool { return idle(c) })
	// The input says where each message came from and which device sent
	// it (from the topic, through Options.TopicPattern).
	for _, m := range p.snapshot() {
		if want := strings.Split(m.Topic, "/")[1]; m.DeviceID != want || m.Source != Source {
			t.Fatalf("message on %s: device id %q, source %q; want %q, %q", m.Topic, m.DeviceID, m.Source, want, Source)
		}
	}
	if got := testutil.ToFloat64(c.links[0].m.received); got != topics*per {
		t.Errorf("received_total %v, want %d", got, topics*per)
	}
	if got := testutil.CollectAndCount(c.m.ackLatency); got != 1 {
		t.Errorf("ack latency histogram missing")
	}
	if up, _ := testutil.GatherAndCount(reg, "decryptd_mqtt_connection_up"); up != 1 {
		t.Errorf("connection_up missing")
	}

	// After a reconnect the broker resends whatever was not acknowledged:
	// nothing. A marker per topic, published after the reconnect, arrives
	// after any redelivery on that topic.
	barrier(t, c)
	waitReconnected(t, c, dropConnection(c))
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
	for payload, n := range p.count() {
		if n != 1 {
			t.Errorf("%s processed %d times", payload, n)
		}
	}
	if got := testutil.ToFloat64(c.links[0].m.reconnects); got != 1 {
		t.Errorf("reconnects_total %v, want 1", got)
	}
}

func TestBoundedInFlight(t *testing.T) {
	for _, tc := range []struct {
		name         string
		brokerWindow int
	}{
		// The broker's window matches MaxInFlight: intake just stops.
		{"broker window at MaxInFlight", 10},
		// The broker sends far more than MaxInFlight: the handler waits,
		// then drops the connection; nothing beyond the bound is held.
		{"broker window above MaxInFlight", 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, mosquittotest.Options{MaxInflight: tc.brokerWindow})
			release := make(chan struct{})
			var cur, peak atomic.Int64
			p := &fakeProc{fn: func(ctx context.Context, m intake.Message) error {
				if n := cur.Add(1); n > peak.Load() {
					peak.Store(n) // only this goroutine raises it past n; races lose lower values only
				}
				defer cur.Add(-1)
				select {
				case <-release:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}}
			o := h.options("bounded")
			o.MaxInFlight = 10
			o.Workers = 64
			c, err := New(o, p)
			if err != nil {
				t.Fatal(err)
			}
			c.overflowWait = 200 * time.Millisecond
			h.start(c)

			const n = 50
			for i := range n {
				h.publish(topic(i), fmt.Sprintf("m%02d", i))
			}
			wait.For(t, "10 messages in the processor", func() bool { return cur.Load() == 10 })
			// Intake stays stopped while the processor is blocked.
			deadline := time.Now().Add(700 * time.Millisecond)
			for time.Now().Before(deadline) {
				if held := c.slots.Held(); held > 10 {
					t.Fatalf("%d messages held, MaxInFlight is 10", held)
				}
				time.Sleep(5 * time.Millisecond)
			}
			close(release)
			wait.For(t, "all messages processed", func() bool { return len(p.count()) == n })
			wait.For(t, "all acknowledged", func() bool { return idle(c) })
			if got := peak.Load(); got > 10 {
				t.Fatalf("%d concurrent Process calls, MaxInFlight is 10", got)
			}
		})
	}
}

func TestPerTopicOrder(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	p := &fakeProc{fn: func(context.Context, intake.Message) error {
		time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		return nil
	}}
	o := h.options("order")
	o.Workers = 4
	o.MaxInFlight = 64
	c, err := New(o, p)
	if err != nil {
		t.Fatal(err)
	}
	h.start(c)

	publishSequences(h, 8, 150)
	wait.For(t, "all processed", func() bool { return len(p.count()) == 8*150 })
	checkPerTopicOrder(t, p.snapshot())
}

// publishSequences publishes per numbered payloads on each of topics
// topics, the topics concurrently.
func publishSequences(h *harness, topics, per int) {
	var wg sync.WaitGroup
	for i := range topics {
		wg.Add(1)
		go func() { defer wg.Done(); h.publish(topic(i), seqPayloads(topic(i), per)...) }()
	}
	wg.Wait()
}

// checkPerTopicOrder fails unless every topic's first deliveries came in
// the order of their numbered payloads.
func checkPerTopicOrder(t *testing.T, calls []intake.Message) {
	t.Helper()
	last := map[string]string{}
	for _, m := range calls {
		if m.Redelivered {
			continue
		}
		if prev, ok := last[m.Topic]; ok && string(m.Payload) <= prev {
			t.Fatalf("topic %s: %s processed after %s", m.Topic, m.Payload, prev)
		}
		last[m.Topic] = string(m.Payload)
	}
}

// TestPerTopicOrderMixedPaths: some messages are taken on the intake
// goroutine (TryProcess), others declined and processed, slowly, by a
// worker; a message of a topic never overtakes an earlier one that went to
// a worker.
func TestPerTopicOrderMixedPaths(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	p := &fakeProc{
		fn: func(context.Context, intake.Message) error {
			time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
			return nil
		},
		// About one in four, fixed by the payload's last digit.
		decline: func(m intake.Message) bool { return m.Payload[len(m.Payload)-1]%4 == 0 },
	}
	o := h.options("mixed")
	o.Workers = 4
	o.MaxInFlight = 64
	c, err := New(o, p)
	if err != nil {
		t.Fatal(err)
	}
	h.start(c)

	publishSequences(h, 8, 150)
	wait.For(t, "all processed and acknowledged", func() bool { return len(p.count()) == 8*150 && idle(c) })
	checkPerTopicOrder(t, p.snapshot())
	p.mu.Lock()
	inline, all := p.inline, len(p.calls)
	p.mu.Unlock()
	if inline == 0 || inline == all {
		t.Fatalf("%d of %d messages on the intake goroutine: the test needs both paths", inline, all)
	}
	if v := testutil.ToFloat64(c.m.inline); int(v) != inline {
		t.Errorf("fast path metric %v, want %d", v, inline)
	}
}

// TestAckOrder: the processor finishes out of order; acknowledgements still
// leave in receive order, and a dropped connection shows which were sent.
func TestAckOrder(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	const workers = 16
	topics := distinctTopics(6, workers) // one worker each, so nothing queues behind the blocked one
	var blockTopic atomic.Value
	blockTopic.Store(topics[0])
	release := make(chan struct{})
	p := &fakeProc{fn: func(ctx context.Context, m intake.Message) error {
		if m.Topic == blockTopic.Load() && !m.Redelivered {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}}
	var ackMu sync.Mutex
	var acked []string
	o := h.options("acks")
	o.Workers = workers
	c, err := New(o, p)
	if err != nil {
		t.Fatal(err)
	}
	c.ackHook = func(m intake.Message) {
		ackMu.Lock()
		acked = append(acked, string(m.Payload))
		ackMu.Unlock()
	}
	ackedNow := func() []string { ackMu.Lock(); defer ackMu.Unlock(); return slices.Clone(acked) }
	h.start(c)

	t.Run("first message blocks every acknowledgement", func(t *testing.T) {
		var want []string
		for i, tp := range topics {
			want = append(want, fmt.Sprintf("a%d", i))
			h.publish(tp, want[i])
		}
		wait.For(t, "the other five processed", func() bool { return len(p.count()) == 5 })
		time.Sleep(100 * time.Millisecond) // give a wrongly eager acker the chance to ack
		if got := ackedNow(); len(got) != 0 {
			t.Fatalf("acknowledged %v while the first message was unfinished", got)
		}
		close(release)
		wait.For(t, "all acknowledged", func() bool { return idle(c) })
		if got := ackedNow(); !slices.Equal(got, want) {
			t.Fatalf("acknowledged %v, want receive order %v", got, want)
		}
	})

	t.Run("redelivery after a drop shows the acknowledged prefix", func(t *testing.T) {
		release = make(chan struct{})
		blockTopic.Store(topics[3])
		ackMu.Lock()
		acked = nil
		ackMu.Unlock()
		for i, tp := range topics {
			h.publish(tp, fmt.Sprintf("b%d", i))
		}
		wait.For(t, "b0..b2 acknowledged", func() bool { return len(ackedNow()) == 3 })
		wait.For(t, "b4, b5 processed", func() bool { return p.has("b4") && p.has("b5") })
		barrier(t, c) // the broker holds the three PUBACKs
		gen := dropConnection(c)
		waitReconnected(t, c, gen)
		close(release) // the stale b3 finishes; its ack is void, the redelivered b3 counts
		for _, tp := range topics {
			h.publish(tp, "marker-"+tp)
		}
		wait.For(t, "markers", func() bool {
			for _, tp := range topics {
				if !p.has("marker-" + tp) {
					return false
				}
			}
			return true
		})
		wait.For(t, "all acknowledged", func() bool { return idle(c) })
		var redelivered []string
		for _, m := range p.snapshot() {
			if m.Redelivered {
				redelivered = append(redelivered, string(m.Payload))
			}
		}
		slices.Sort(redelivered)
		if want := []string{"b3", "b4", "b5"}; !slices.Equal(redelivered, want) {
			t.Fatalf("redelivered %v, want %v (b0..b2 were acknowledged, b3 held back b4 and b5)", redelivered, want)
		}
	})
}

// TestRedeliveryAfterKill: a consumer that stops without acknowledging
// (its processor never finished) leaves the messages in its session; a
// consumer with the same client id gets them again, marked Dup.
func TestRedeliveryAfterKill(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	var entered atomic.Int64
	stuck := &fakeProc{fn: func(ctx context.Context, m intake.Message) error {
		entered.Add(1)
		<-ctx.Done()
		return ctx.Err()
	}}
	c1, err := New(h.options("replica-0"), stuck)
	if err != nil {
		t.Fatal(err)
	}
	h.start(c1)
	const n = 20
	for i := range n {
		h.publish(topic(i), fmt.Sprintf("k%02d", i))
	}
	wait.For(t, "all held", func() bool { return c1.slots.Held() == n })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = c1.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), fmt.Sprint(n)) {
		t.Fatalf("Shutdown with a stuck processor: %v, want a deadline error naming %d messages", err, n)
	}

	p2 := &fakeProc{}
	c2, err := New(h.options("replica-0"), p2)
	if err != nil {
		t.Fatal(err)
	}
	h.start(c2)
	wait.For(t, "redelivery", func() bool { return len(p2.count()) == n })
	for _, m := range p2.snapshot() {
		if !m.Redelivered {
			t.Errorf("%s redelivered without Dup", m.Payload)
		}
	}
	if got := testutil.ToFloat64(c2.links[0].m.redelivered); got != n {
		t.Errorf("redelivered counter = %v, want %d", got, n)
	}
}

func TestSharedSubscriptionSplit(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	pa, pb := &fakeProc{}, &fakeProc{}
	ca, err := New(h.options("replica-a"), pa)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := New(h.options("replica-b"), pb)
	if err != nil {
		t.Fatal(err)
	}
	h.start(ca)
	h.start(cb)

	const topics, per = 20, 100
	var wg sync.WaitGroup
	for i := range topics {
		wg.Add(1)
		go func() { defer wg.Done(); h.publish(topic(i), seqPayloads(topic(i), per)...) }()
	}
	wg.Wait()
	union := func() map[string]bool {
		u := map[string]bool{}
		for k := range pa.count() {
			u[k] = true
		}
		for k := range pb.count() {
			u[k] = true
		}
		return u
	}
	wait.For(t, "all 2000 messages", func() bool { return len(union()) == topics*per })
	a, b := len(pa.count()), len(pb.count())
	if a == 0 || b == 0 {
		t.Fatalf("split %d/%d: both replicas should get a share", a, b)
	}
	t.Logf("split: %d / %d", a, b)
}

// TestGracefulShutdown: in-flight messages are finished and acknowledged
// before the disconnect, so a restarted replica gets only what the first
// one never took.
func TestGracefulShutdown(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	var started atomic.Int64
	p1 := &fakeProc{fn: func(ctx context.Context, m intake.Message) error {
		started.Add(1)
		time.Sleep(50 * time.Millisecond)
		return nil
	}}
	o := h.options("replica-0")
	o.MaxInFlight = 20
	o.Workers = 64
	c1, err := New(o, p1)
	if err != nil {
		t.Fatal(err)
	}
	h.start(c1)

	const n = 60
	for i := range n {
		h.publish(topic(i), fmt.Sprintf("g%02d", i))
	}
	wait.For(t, "processing under way", func() bool { return started.Load() >= 10 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c1.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if c1.Ready() {
		t.Fatal("ready after shutdown")
	}
	first := p1.count()
	if len(first) == 0 {
		t.Fatal("nothing finished before shutdown")
	}

	p2 := &fakeProc{}
	c2, err := New(o, p2)
	if err != nil {
		t.Fatal(err)
	}
	h.start(c2)
	wait.For(t, "the rest", func() bool { return len(first)+len(p2.count()) >= n })
	for i := range n {
		h.publish(topic(i), "marker")
	}
	wait.For(t, "markers", func() bool { return p2.count()["marker"] == n })
	for k := range p2.count() {
		if first[k] > 0 {
			t.Errorf("%s was finished before shutdown and delivered again", k)
		}
	}
	if got := len(first) + len(p2.count()) - 1; got != n {
		t.Errorf("%d distinct messages, want %d", got, n)
	}
}

// TestUnsubscribeOnShutdown: a replica removed for good unsubscribes, so
// the group's other member gets everything published afterwards instead of
// half of it queueing in the removed replica's session.
func TestUnsubscribeOnShutdown(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	pa, pb := &fakeProc{}, &fakeProc{}
	oa := h.options("replica-a")
	oa.UnsubscribeOnShutdown = true
	ca, err := New(oa, pa)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := New(h.options("replica-b"), pb)
	if err != nil {
		t.Fatal(err)
	}
	h.start(ca)
	h.start(cb)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ca.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 100
	h.publish(topic(0), seqPayloads(topic(0), n)...)
	wait.For(t, "replica-b gets all", func() bool { return len(pb.count()) == n })
}

func TestBrokerRestart(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	p := &fakeProc{}
	c, err := New(h.options("c1"), p)
	if err != nil {
		t.Fatal(err)
	}
	h.start(c)
	gen := c.links[0].currentGen()
	h.b.Restart()
	waitReconnected(t, c, gen)
	h.publish(topic(1), "after-restart")
	wait.For(t, "message after broker restart", func() bool { return p.has("after-restart") })
}

// TestBrokerDownAtStart: Run keeps retrying the first connection (with
// capped back-off) instead of failing, and becomes ready once the broker is
// up.
func TestBrokerDownAtStart(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	h.b.Stop()
	p := &fakeProc{}
	o := h.options("early")
	o.MaxReconnectInterval = time.Second
	c, err := New(o, p)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	wait.For(t, "a failed connect", func() bool { return h.logs.FilterMessage("connection to broker failed").Len() > 0 })
	if c.Ready() {
		t.Fatal("ready with the broker down")
	}
	h.b.Restart()
	wait.For(t, "ready after the broker came up", c.Ready)
	h.publish(topic(0), "hello")
	wait.For(t, "message", func() bool { return p.has("hello") })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestProcessorErrorRetried: a Processor breaking its contract (an error
// while its context is alive) gets the message again, in order, instead of
// the message silently blocking every later acknowledgement.
func TestProcessorErrorRetried(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	var failures atomic.Int64
	p := &fakeProc{fn: func(_ context.Context, m intake.Message) error {
		if string(m.Payload) == "x0" && failures.Add(1) <= 2 {
			return errors.New("transient")
		}
		return nil
	}}
	c, err := New(h.options("retry"), p)
	if err != nil {
		t.Fatal(err)
	}
	h.start(c)
	h.publish(topic(0), "x0", "x1")
	wait.For(t, "both processed and acknowledged", func() bool { return len(p.count()) == 2 && idle(c) })
	if got := p.snapshot(); string(got[0].Payload) != "x0" || string(got[1].Payload) != "x1" {
		t.Fatalf("order %s, %s", got[0].Payload, got[1].Payload)
	}
	if n := h.logs.FilterMessage("processor failed before shutdown; retrying the message").Len(); n != 2 {
		t.Fatalf("%d retries logged, want 2", n)
	}
}
