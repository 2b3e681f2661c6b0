package kafkainput

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/decryptd/decryptd/internal/intake"
)

// fakeWindow records what the input asks it to remember.
type fakeWindow struct {
	mu   sync.Mutex
	msgs []intake.Message
}

func (w *fakeWindow) Remember(_ context.Context, m intake.Message) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	m.Payload = append([]byte(nil), m.Payload...)
	w.msgs = append(w.msgs, m)
	return nil
}

func (w *fakeWindow) seqs(t *testing.T) []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []int
	for _, m := range w.msgs {
		_, s := parseValue(t, m.Payload)
		out = append(out, s)
	}
	return out
}

// drainAndCommit runs one input over the backlog and shuts it down, so
// the group's committed offset is the end of every partition.
func drainAndCommit(t *testing.T, in *Input, proc *fakeProc, want int) {
	t.Helper()
	go in.Run(context.Background())
	waitFor(t, 20*time.Second, "backlog drained", func() bool { u, _ := proc.counts(); return u == want })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := in.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRebuildReadsBackLookback: a replica taking over a partition
// committed at 100 remembers exactly the last replay_lookback records
// before the committed offset, in order, with their MQTT topic and
// device, and delivers none of them; what is produced afterwards it
// processes.
func TestRebuildReadsBackLookback(t *testing.T) {
	c := fakeCluster(t, 1)
	produce(t, c, 1, 100, 3)
	first := newFakeProc(t, 0)
	drainAndCommit(t, newInput(t, c, first, nil), first, 100)

	win := &fakeWindow{}
	second := newFakeProc(t, 0)
	in := newInput(t, c, second, func(o *Options) { o.Window = win; o.ReplayLookback = 30 })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go in.Run(ctx)
	waitFor(t, 20*time.Second, "30 records read back", func() bool { return len(win.seqs(t)) >= 30 })
	time.Sleep(50 * time.Millisecond) // nothing more comes
	// Devices are remembered concurrently: the set is 70..99, each
	// device's records in offset order.
	got := win.seqs(t)
	if len(got) != 30 || !slices.Equal(slices.Sorted(slices.Values(got)), seqRange(70, 100)) {
		t.Fatalf("remembered seqs %v, want 70..99", got)
	}
	last := map[string]int{}
	win.mu.Lock()
	for i, m := range win.msgs {
		want := fmt.Sprintf("0-%d", got[i]%3)
		if m.Topic != "dev/"+want || m.DeviceID != want || m.Source != Source {
			t.Errorf("remembered message %+v (seq %d)", m, got[i])
		}
		if l, ok := last[m.DeviceID]; ok && got[i] <= l {
			t.Errorf("device %s: seq %d remembered after %d", m.DeviceID, got[i], l)
		}
		last[m.DeviceID] = got[i]
	}
	win.mu.Unlock()
	produceFrom(t, c, 100, 5)
	waitFor(t, 20*time.Second, "the 5 new records processed", func() bool { u, _ := second.counts(); return u == 5 })
	for s := range 100 {
		if second.isDone(0, s) {
			t.Fatalf("record %d, committed before the takeover, delivered again", s)
		}
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := in.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
}

// TestRebuildSkipsOld: records older than the replay max age are not read
// back (their repeats would be new to the window anyway).
func TestRebuildSkipsOld(t *testing.T) {
	c := fakeCluster(t, 1)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.DefaultProduceTopic(testTopic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	old := time.Now().Add(-3 * time.Hour)
	var recs []*kgo.Record
	for s := range 20 {
		ts := old
		if s >= 15 {
			ts = time.Now()
		}
		recs = append(recs, &kgo.Record{Value: []byte(fmt.Sprintf("0:%d", s)), Timestamp: ts,
			Headers: []kgo.RecordHeader{{Key: "mqtt_topic", Value: []byte("dev/0-0")}}})
	}
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	first := newFakeProc(t, 0)
	drainAndCommit(t, newInput(t, c, first, nil), first, 20)

	win := &fakeWindow{}
	in := newInput(t, c, newFakeProc(t, 0), func(o *Options) { o.Window = win; o.ReplayMaxAge = time.Hour })
	go in.Run(context.Background())
	waitFor(t, 20*time.Second, "5 records read back", func() bool { return len(win.seqs(t)) >= 5 })
	time.Sleep(50 * time.Millisecond) // nothing more comes
	if got := win.seqs(t); len(got) != 5 || got[0] != 15 {
		t.Fatalf("remembered %v, want 15..19 (the others are older than the max age)", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := in.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// seqRange is lo..hi-1.
func seqRange(lo, hi int) []int {
	var out []int
	for s := lo; s < hi; s++ {
		out = append(out, s)
	}
	return out
}
