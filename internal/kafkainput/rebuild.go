package kafkainput

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/semaphore"

	"github.com/decryptd/decryptd/internal/intake"
)

// Rebuilding the replay window of newly assigned partitions: each is read
// back from max(end - ReplayLookback, the first offset not older than
// ReplayMaxAge) up to end, its committed offset, by a reader of its own
// (no group), and every record is handed to Window.Remember (checked,
// authenticated and recorded as accepted, never delivered) by a bounded
// pool of workers, a device's records by one worker in order. Records at or
// past end are not: they are not known to be delivered, and remembering
// one would make its own first delivery look like a duplicate.

type rebuildPart struct {
	tp
	end   int64 // the committed offset: read below it
	start int64
}

// rebuildQueue is how many read-back records wait for each rebuild
// worker: enough that the reader keeps the workers busy while some wait
// for keys. What they hold is bounded in bytes too: the values queued
// (copied out of the fetch responses, so a queued record does not keep its
// batch alive), each counted with rebuildRecOverhead, stay within
// FetchMaxBytes(MaxInFlightBytes), one more fetch response's worth,
// however large the records.
const (
	rebuildQueue       = 64
	rebuildRecOverhead = 256
)

// rebuildRec is a read-back record on its way to a rebuild worker.
type rebuildRec struct {
	k tp
	m intake.Message
}

// rebuild reads the parts back; it returns when all are read and
// remembered, at ReplayRebuildTimeout, or when ctx ends (the session is
// revoking). It never returns while a worker may still call Remember.
//
// Why concurrent: a Remember of a device whose key is cold waits for a
// KMS round trip (tens of ms); one at a time, a lookback spanning
// thousands of devices does not fit the timeout. The reader (this
// goroutine) routes every record to one of ReplayRebuildWorkers workers
// by its device (hashTopic of the device id, else the MQTT topic, else
// the partition), so a device's records are remembered in offset order by
// one worker (its key is loaded once, its window sees them in order) and
// up to ReplayRebuildWorkers devices wait for keys at once.
func (in *Input) rebuild(ctx context.Context, parts []rebuildPart) {
	ctx, cancel := context.WithTimeout(ctx, in.o.ReplayRebuildTimeout)
	defer cancel()
	start := time.Now()
	since := start.Add(-in.o.ReplayMaxAge)
	opts := append([]kgo.Opt{}, in.clOpts...)
	// The reader reads and bounds its fetches as the group client does.
	opts = append(opts, fetchOpts(in.o.MaxInFlightBytes)...)
	opts = append(opts, kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	rd, err := kgo.NewClient(opts...)
	if err != nil {
		in.log.Error("replay window rebuild: reader", zap.Error(err))
		in.m.rebuildTruncated.Add(float64(len(parts)))
		return
	}
	defer rd.Close()
	parts = in.rebuildStarts(ctx, rd, parts, since)
	if len(parts) == 0 {
		return
	}
	offs := map[string]map[int32]kgo.Offset{}
	want := map[tp]int64{}
	for _, p := range parts {
		if offs[p.topic] == nil {
			offs[p.topic] = map[int32]kgo.Offset{}
		}
		offs[p.topic][p.p] = kgo.NewOffset().At(p.start)
		want[p.tp] = p.end
	}
	rd.AddConsumePartitions(offs)

	// short: partitions with a record read back but not remembered (the
	// context ended first); guarded by shortMu.
	var (
		shortMu sync.Mutex
		short   = map[tp]bool{}
		n       atomic.Int64
		wg      sync.WaitGroup
	)
	markShort := func(k tp) {
		shortMu.Lock()
		short[k] = true
		shortMu.Unlock()
	}
	queuedMax := int64(FetchMaxBytes(in.o.MaxInFlightBytes))
	queued := semaphore.NewWeighted(queuedMax)
	weight := func(m intake.Message) int64 { return min(int64(len(m.Payload))+rebuildRecOverhead, queuedMax) }
	qs := make([]chan rebuildRec, in.o.ReplayRebuildWorkers)
	for i := range qs {
		qs[i] = make(chan rebuildRec, rebuildQueue)
		wg.Add(1)
		go func(q <-chan rebuildRec) {
			defer wg.Done()
			for r := range q {
				// Once ctx ends the rest of the queue is only
				// accounted for: the partition is truncated.
				if ctx.Err() == nil && in.remember(ctx, r.m) {
					n.Add(1)
				} else {
					markShort(r.k)
				}
				queued.Release(weight(r.m))
			}
		}(qs[i])
	}
	send := func(k tp, r *kgo.Record) {
		m := in.message(r, r.Timestamp)
		m.Payload = bytes.Clone(r.Value)
		key := m.DeviceID
		if key == "" {
			key = m.Topic
		}
		h := hashTopic(key)
		if key == "" {
			h = hashTopic(k.topic) + uint32(k.p)
		}
		if queued.Acquire(ctx, weight(m)) != nil {
			markShort(k)
			return
		}
		select {
		case qs[h%uint32(len(qs))] <- rebuildRec{k: k, m: m}:
		case <-ctx.Done():
			queued.Release(weight(m))
			markShort(k)
		}
	}
	for len(want) > 0 && ctx.Err() == nil {
		fs := rd.PollFetches(ctx)
		fs.EachPartition(func(ftp kgo.FetchTopicPartition) {
			k := tp{ftp.Topic, ftp.Partition}
			end, ok := want[k]
			if !ok {
				return
			}
			for _, r := range ftp.Records {
				if r.Offset >= end {
					delete(want, k)
					return
				}
				if !r.Timestamp.Before(since) {
					send(k, r)
				}
				if r.Offset >= end-1 || r.Offset >= ftp.HighWatermark-1 {
					delete(want, k)
					return
				}
			}
		})
	}
	for _, q := range qs {
		close(q)
	}
	wg.Wait()
	for k := range want {
		short[k] = true
	}
	in.m.rebuilt.Add(float64(n.Load()))
	if len(short) > 0 {
		in.m.rebuildTruncated.Add(float64(len(short)))
		in.log.Warn("replay window rebuild stopped before the committed offset (timeout or revocation); repeats of the records not read back are not caught",
			zap.Int("truncated", len(short)), zap.Any("partitions", byTopic(short)),
			zap.Int64("records", n.Load()), zap.Duration("took", time.Since(start)))
		return
	}
	in.log.Info("replay window rebuilt", zap.Int("partitions", len(parts)), zap.Int64("records", n.Load()), zap.Duration("took", time.Since(start)))
}

// remember records m in the window, retrying while the answer is
// "later" (a key fault), until ctx ends; it reports whether m was
// recorded (or needed no recording).
func (in *Input) remember(ctx context.Context, m intake.Message) bool {
	backoff := 50 * time.Millisecond
	for {
		err := in.o.Window.Remember(ctx, m)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return false
		}
		backoff = min(2*backoff, time.Second)
	}
}

// rebuildStarts sets each part's start: the first offset whose timestamp
// is not before since (ListOffsets by time), raised to end -
// ReplayLookback. A part with nothing to read is dropped.
func (in *Input) rebuildStarts(ctx context.Context, rd *kgo.Client, parts []rebuildPart, since time.Time) []rebuildPart {
	keys := make([]tp, len(parts))
	for i, p := range parts {
		keys[i] = p.tp
	}
	byTime := in.listOffsets(ctx, rd, keys, since.UnixMilli(), zapcore.WarnLevel)
	out := parts[:0]
	for _, p := range parts {
		s, ok := byTime[p.tp]
		if !ok {
			// Unknown: read the whole lookback (the timestamps are
			// still checked record by record).
			s = 0
		}
		if s < 0 {
			continue // no record that recent: nothing to remember
		}
		p.start = max(s, p.end-int64(in.o.ReplayLookback), 0)
		if p.start < p.end {
			out = append(out, p)
		}
	}
	return out
}

// byTopic lists a set of partitions as topic -> sorted partition numbers,
// as the assignment logs do (no device ids: a log line may name
// partitions, nothing of their records).
func byTopic(set map[tp]bool) map[string][]int32 {
	out := map[string][]int32{}
	for k := range set {
		out[k.topic] = append(out[k.topic], k.p)
	}
	for _, ps := range out {
		slices.Sort(ps)
	}
	return out
}
