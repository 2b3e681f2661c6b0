package kafkainput

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/decryptd/decryptd/internal/intake"
)

const testTopic = "device-events"

// fakeCluster starts an in-process Kafka (kfake) with testTopic of the
// given partitions, closed when t ends.
func fakeCluster(t testing.TB, partitions int32) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, testTopic))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// produce writes n records per partition: value "p:seq", header
// mqtt_topic "dev/<p>-<seq%devices>", key the device.
func produce(t testing.TB, c *kfake.Cluster, partitions int32, n, devices int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.DefaultProduceTopic(testTopic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var recs []*kgo.Record
	for p := range partitions {
		for s := range n {
			dev := fmt.Sprintf("%d-%d", p, s%devices)
			recs = append(recs, &kgo.Record{Partition: p, Key: []byte(dev), Value: []byte(fmt.Sprintf("%d:%d", p, s)),
				Headers: []kgo.RecordHeader{{Key: "mqtt_topic", Value: []byte("dev/" + dev)}}})
		}
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// fakeProc is a Processor finishing messages after random delays (so out
// of order), recording what finished and checking per-topic order.
type fakeProc struct {
	t       testing.TB
	mu      sync.Mutex
	done    map[[2]int]int // (partition, seq) -> times finished
	lastSeq map[string]int // per MQTT topic, the last seq handed in
	calls   int
	maxWait time.Duration
	rng     *rand.Rand
	tryNo   bool // TryProcess always declines
	// anyOrder: a takeover after a crash restarts topics at the last
	// commit, so a topic's sequence may go back.
	anyOrder bool
	// onCall, when set, runs on every call (tests stop a replica with it).
	onCall func(n int)
}

func newFakeProc(t testing.TB, maxWait time.Duration) *fakeProc {
	return &fakeProc{t: t, done: map[[2]int]int{}, lastSeq: map[string]int{}, maxWait: maxWait, rng: rand.New(rand.NewPCG(1, 2))}
}

func parseValue(t testing.TB, v []byte) (int, int) {
	a, b, ok := strings.Cut(string(v), ":")
	p, err1 := strconv.Atoi(a)
	s, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil {
		t.Errorf("value %q", v)
	}
	return p, s
}

func (f *fakeProc) accept(m intake.Message, done func(error)) {
	p, s := parseValue(f.t, m.Payload)
	f.mu.Lock()
	if last, ok := f.lastSeq[m.Topic]; ok && s <= last && !f.anyOrder {
		f.t.Errorf("topic %s: seq %d after %d", m.Topic, s, last)
	}
	f.lastSeq[m.Topic] = s
	if m.Source != Source || m.Topic == "" {
		f.t.Errorf("message %+v", m)
	}
	f.calls++
	n := f.calls
	wait := time.Duration(f.rng.Int64N(int64(f.maxWait) + 1))
	f.mu.Unlock()
	if f.onCall != nil {
		f.onCall(n)
	}
	time.AfterFunc(wait, func() {
		f.mu.Lock()
		f.done[[2]int{p, s}]++
		f.mu.Unlock()
		done(nil)
	})
}

func (f *fakeProc) Process(_ context.Context, m intake.Message, done func(error)) { f.accept(m, done) }

func (f *fakeProc) TryProcess(_ context.Context, m intake.Message, done func(error)) bool {
	f.mu.Lock()
	no := f.tryNo || f.rng.IntN(3) == 0
	f.mu.Unlock()
	if no {
		return false
	}
	f.accept(m, done)
	return true
}

func (f *fakeProc) isDone(p, s int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.done[[2]int{p, s}] > 0
}

func (f *fakeProc) counts() (unique, total int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.done {
		unique++
		total += n
	}
	return unique, total
}

func newInput(t testing.TB, c *kfake.Cluster, proc intake.Processor, mod func(*Options)) *Input {
	t.Helper()
	o := Options{
		ClientOptions:  []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...), kgo.ClientID("test")},
		Topics:         []string{testTopic},
		TopicPattern:   "dev/{device_id}",
		MaxInFlight:    64,
		Workers:        8,
		CommitInterval: 20 * time.Millisecond,
	}
	if mod != nil {
		mod(&o)
	}
	in, err := New(o, proc)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// waitFor polls cond until it holds, failing after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// holdProc holds every message until release is closed.
type holdProc struct {
	n       atomic.Int64
	release chan struct{}
}

func (h *holdProc) Process(_ context.Context, _ intake.Message, done func(error)) {
	h.n.Add(1)
	go func() { <-h.release; done(nil) }()
}

func (h *holdProc) TryProcess(ctx context.Context, m intake.Message, done func(error)) bool {
	h.Process(ctx, m, done)
	return true
}

// produceFrom appends n records to partition 0, seqs from start on.
func produceFrom(t testing.TB, c *kfake.Cluster, start, n int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.DefaultProduceTopic(testTopic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for s := start; s < start+n; s++ {
		r := &kgo.Record{Partition: 0, Value: []byte(fmt.Sprintf("0:%d", s)), Headers: []kgo.RecordHeader{{Key: "mqtt_topic", Value: []byte("dev/0-x")}}}
		if err := cl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}
