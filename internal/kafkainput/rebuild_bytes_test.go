package kafkainput

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/decryptd/decryptd/internal/intake"
)

// slowWindow holds every Remember for a while and reports the peak of the
// payload bytes it held at once: records handed to Remember and not yet
// returned.
type slowWindow struct {
	hold       time.Duration
	mu         sync.Mutex
	held, peak int
	n          int
}

func (w *slowWindow) Remember(ctx context.Context, m intake.Message) error {
	w.mu.Lock()
	w.held += len(m.Payload)
	w.peak = max(w.peak, w.held)
	w.n++
	w.mu.Unlock()
	select {
	case <-time.After(w.hold):
	case <-ctx.Done():
	}
	w.mu.Lock()
	w.held -= len(m.Payload)
	w.mu.Unlock()
	return nil
}

// TestRebuildQueuedBytesBounded: the rebuild's read-back values, queued
// for the workers or being remembered, stay within
// FetchMaxBytes(MaxInFlightBytes) however many workers wait. 256 records
// of 16 KiB over 64 devices, 64 workers, a window holding each Remember
// 5 ms, MaxInFlightBytes 1 MiB (bound 128 KiB, 7 records with their
// 256 B overhead): without the byte semaphore every worker holds one
// record at once (up to 1 MiB); with it the window never holds more than
// the bound.
func TestRebuildQueuedBytesBounded(t *testing.T) {
	const records, devices, size = 256, 64, 16 << 10
	c := fakeCluster(t, 1)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.DefaultProduceTopic(testTopic), kgo.ProducerBatchMaxBytes(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	var recs []*kgo.Record
	for s := range records {
		v := append([]byte(fmt.Sprintf("0:%d:", s)), bytes.Repeat([]byte{'x'}, size)...)
		recs = append(recs, &kgo.Record{Partition: 0, Value: v[:size],
			Headers: []kgo.RecordHeader{{Key: "mqtt_topic", Value: []byte(fmt.Sprintf("dev/0-%d", s%devices))}}})
	}
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	cl.Close()
	win := &slowWindow{hold: 5 * time.Millisecond}
	in := newInput(t, c, newFakeProc(t, 0), func(o *Options) {
		o.Window = win
		o.ReplayRebuildWorkers = 64
		o.ReplayRebuildTimeout = 20 * time.Second
		o.MaxInFlightBytes = 1 << 20
	})
	in.rebuild(context.Background(), []rebuildPart{{tp: tp{testTopic, 0}, end: records}})
	if tr := testutil.ToFloat64(in.m.rebuildTruncated); tr != 0 || win.n != records {
		t.Fatalf("remembered %d of %d records, %v partitions truncated", win.n, records, tr)
	}
	bound := int(FetchMaxBytes(in.o.MaxInFlightBytes))
	if win.peak > bound {
		t.Fatalf("the window held %d B of read-back values at once, over the %d B bound", win.peak, bound)
	}
	// The bound, not a lack of concurrency, kept it there.
	if win.peak < 2*size {
		t.Fatalf("peak %d B: fewer than 2 records remembered at once", win.peak)
	}
	t.Logf("peak %d B held by Remember (bound %d B, %d B records)", win.peak, bound, size)
}
