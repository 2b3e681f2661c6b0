package consumer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

func TestBudgetTakeRelease(t *testing.T) {
	b, err := NewBudget(100, nil)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		take    int64
		release int64
		ok      bool
		held    int64
	}{
		{take: 60, ok: true, held: 60},
		{take: 40, ok: true, held: 100}, // exactly the limit fits
		{take: 1, ok: false, held: 100},
		{release: 60, held: 40},
		{take: 70, ok: false, held: 40},
		{take: 60, ok: true, held: 100},
		{release: 100, held: 0},
		{take: 250, ok: true, held: 250}, // larger than the budget: alone
		{take: 1, ok: false, held: 250},
		{release: 250, held: 0},
	}
	for i, s := range steps {
		if s.release > 0 {
			b.release(s.release)
		} else {
			ok, room := b.take(s.take)
			if ok != s.ok {
				t.Fatalf("step %d: take(%d) = %v, want %v", i, s.take, ok, s.ok)
			}
			if !ok && room == nil {
				t.Fatalf("step %d: refused without a channel to wait on", i)
			}
		}
		if got := b.Held(); got != s.held {
			t.Fatalf("step %d: held %d, want %d", i, got, s.held)
		}
	}
	if b.Peak() != 250 {
		t.Fatalf("peak %d, want 250 (the lone large message)", b.Peak())
	}
	if _, err := NewBudget(0, nil); err == nil {
		t.Fatal("NewBudget(0) accepted")
	}
}

func TestBudgetWakesWaiter(t *testing.T) {
	b, _ := NewBudget(10, nil)
	if ok, _ := b.take(10); !ok {
		t.Fatal("first take refused")
	}
	ok, room := b.take(5)
	if ok {
		t.Fatal("take over the budget admitted")
	}
	go b.release(10)
	<-room // a release must wake the waiter
	if ok, _ := b.take(5); !ok {
		t.Fatal("take after release refused")
	}
}

func TestBudgetMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	b, err := NewBudget(1<<20, reg)
	if err != nil {
		t.Fatal(err)
	}
	b.take(4096)
	want := `
# HELP decryptd_inflight_bytes Bytes of the messages held between receipt and acknowledgement (payload, topic and a fixed per-message overhead; bounded by decryptd_inflight_bytes_limit).
# TYPE decryptd_inflight_bytes gauge
decryptd_inflight_bytes 4096
# HELP decryptd_inflight_bytes_limit The byte budget of messages in flight (mqtt.max_in_flight_bytes); one message larger than it is admitted alone.
# TYPE decryptd_inflight_bytes_limit gauge
decryptd_inflight_bytes_limit 1.048576e+06
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "decryptd_inflight_bytes", "decryptd_inflight_bytes_limit"); err != nil {
		t.Fatal(err)
	}
}

// bigPayload is a ~240 KiB message (the fault trial's size) marked with
// its topic and sequence number.
func bigPayload(topic string, i int) string {
	head := fmt.Sprintf("%s#%04d#", topic, i)
	return head + strings.Repeat("x", 240<<10-len(head))
}

// TestByteBudgetLargeMessagesFailingSink is the fault trial's memory case
// through the consumer and a real pipeline: 240 KiB messages while the
// only sink fails every write. The bytes the admission accounting holds
// never exceed the configured budget (MaxInFlight alone would have let
// 1024 x 240 KiB in), intake resumes when the sink recovers, and every
// message reaches the sink.
func TestByteBudgetLargeMessagesFailingSink(t *testing.T) {
	for _, tc := range []struct {
		name string
		// overflow: how long intake waits for room before releasing the
		// connection's messages (then reconnecting for redelivery).
		overflow time.Duration
		outage   time.Duration
	}{
		{"sink back before intake gives up", time.Minute, 0},
		{"intake releases and reconnects", 200 * time.Millisecond, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) { testLargeMessagesFailingSink(t, tc.overflow, tc.outage) })
	}
}

func testLargeMessagesFailingSink(t *testing.T, overflow, outage time.Duration) {
	h := newHarness(t, mosquittotest.Options{})
	const budget = 3 << 20 // about 12 messages
	const n = 60
	s := &flakySink{name: "records"}
	s.failing.Store(true)
	p, err := pipeline.New(pipeline.Options{
		Opener: copyOpener{}, Sinks: []sink.Sink{s}, DeadLetter: &flakySink{name: "dead"},
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Close(ctx)
	})
	o := h.options("budget")
	o.MaxInFlight = 1024
	o.MaxInFlightBytes = budget
	c, err := New(o, p)
	if err != nil {
		t.Fatal(err)
	}
	c.overflowWait = overflow
	h.start(c)
	go func() {
		for i := range n {
			tp := topic(i % 7)
			h.pub.Publish(tp, 1, false, bigPayload(tp, i))
		}
	}()
	wait.For(t, "the budget filled", func() bool { return c.budget.Held() > budget-(240<<10+MessageOverhead+64) })
	wait.For(t, "the sink retried", func() bool { return s.attempts.Load() >= 5 })
	if held := c.slots.Held(); held >= n {
		t.Fatalf("%d messages held while the sink fails; the byte budget should have stopped intake", held)
	}
	time.Sleep(outage)
	s.failing.Store(false)
	wait.For(t, "every message written", func() bool { return s.distinct() == n })
	if overflow < time.Second && metricValue(t, c.links[0].m.released) == 0 {
		t.Fatal("intake never released a message: the overflow path was not taken")
	}
	wait.For(t, "all acknowledged", func() bool { return idle(c) })
	if peak := c.budget.Peak(); peak > budget {
		t.Fatalf("peak in-flight bytes %d, budget %d", peak, budget)
	} else {
		t.Logf("peak in-flight bytes %d of %d (%d messages of 240 KiB); sink attempts %d", peak, budget, n, s.attempts.Load())
	}
	if c.budget.Held() != 0 {
		t.Fatalf("%d bytes still held with nothing in flight", c.budget.Held())
	}
}

// TestByteBudgetLoneLargeMessage: a budget below one message's size
// admits each message alone instead of waiting forever.
func TestByteBudgetLoneLargeMessage(t *testing.T) {
	h := newHarness(t, mosquittotest.Options{})
	var cur, peak atomic.Int64
	p := &fakeProc{fn: func(context.Context, intake.Message) error {
		v := cur.Add(1)
		defer cur.Add(-1)
		for {
			old := peak.Load()
			if v <= old || peak.CompareAndSwap(old, v) {
				break
			}
		}
		time.Sleep(2 * time.Millisecond)
		return nil
	}}
	o := h.options("lone")
	o.MaxInFlightBytes = 100 << 10
	c, err := New(o, p)
	if err != nil {
		t.Fatal(err)
	}
	h.start(c)
	const n = 12
	var want []string
	for i := range n {
		pl := bigPayload(topic(i), i)
		want = append(want, pl)
		h.publish(topic(i), pl)
	}
	wait.For(t, "all processed", func() bool { return len(p.count()) == n })
	wait.For(t, "all acknowledged", func() bool { return idle(c) })
	if got := peak.Load(); got != 1 {
		t.Fatalf("%d messages processed at once; each is larger than the budget and must be alone", got)
	}
	if pk, one := c.budget.Peak(), messageBytesOf(want[0], topic(0)); pk != one {
		t.Fatalf("peak %d bytes, want one message's %d", pk, one)
	}
}

func metricValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	return testutil.ToFloat64(c)
}

func messageBytesOf(payload, topic string) int64 {
	return int64(len(payload)+len(topic)) + MessageOverhead
}

// copyOpener "decrypts" a message into a record holding a copy of its
// payload as data, as the real decryptor holds its plaintext.
type copyOpener struct{}

func (copyOpener) Open(_ context.Context, m decrypt.Message) (decrypt.Record, error) {
	return copyOpener{}.TryOpen(m)
}

func (copyOpener) TryOpen(m decrypt.Message) (decrypt.Record, error) {
	id, _, _ := strings.Cut(string(m.Payload[len(m.Topic)+1:]), "#")
	data := make([]byte, 0, len(m.Payload)+2)
	data = append(append(append(data, '"'), m.Payload...), '"')
	return decrypt.Record{ID: m.Topic + "#" + id, Topic: m.Topic, DeviceID: "d", Timestamp: 1, ReceivedAt: m.ReceivedAt, Data: data}, nil
}

func (copyOpener) Forget(decrypt.Record) {}

// flakySink fails every write while failing is set (a full disk), and
// otherwise holds the records' ids.
type flakySink struct {
	name     string
	failing  atomic.Bool
	attempts atomic.Int64
	mu       sync.Mutex
	ids      map[string]int
}

func (s *flakySink) Name() string { return s.name }

func (s *flakySink) Write(_ context.Context, batch []sink.Record) error {
	s.attempts.Add(1)
	if s.failing.Load() {
		return errors.New("write: no space left on device")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = map[string]int{}
	}
	for _, r := range batch {
		if !bytes.Contains(r.JSON, []byte(r.ID)) {
			return fmt.Errorf("record %s: JSON without its payload", r.ID)
		}
		s.ids[r.ID]++
	}
	return nil
}

func (s *flakySink) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

func (s *flakySink) Flush(context.Context) error { return nil }
func (s *flakySink) Close(context.Context) error { return nil }

// TestBudgetConcurrent: many takers and releasers at once, waiters on
// room, never more than the limit held (every size fits), and every
// waiter gets its bytes in the end (no lost wake-up).
func TestBudgetConcurrent(t *testing.T) {
	b, err := NewBudget(1000, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := int64(100 + 37*g)
			for range 2000 {
				for {
					ok, room := b.take(n)
					if ok {
						break
					}
					<-room
				}
				if h := b.Held(); h > b.Limit() {
					t.Errorf("held %d over the limit %d", h, b.Limit())
				}
				b.release(n)
			}
		}()
	}
	wg.Wait()
	if h := b.Held(); h != 0 {
		t.Fatalf("held %d after every release, want 0", h)
	}
	if p := b.Peak(); p > b.Limit() {
		t.Fatalf("peak %d over the limit %d", p, b.Limit())
	}
}
