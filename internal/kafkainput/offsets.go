package kafkainput

import (
	"context"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ListOffsets timestamps with a special meaning.
const (
	offsetLatest   = -1 // the high watermark (isolation level read_uncommitted)
	offsetEarliest = -2 // the log start offset
)

// offsetsRefreshInterval is how often the high watermark and log start
// offset of every held partition are asked for (one ListOffsets of each
// kind per broker leading some): the lag gauge must keep rising while a
// replica is stuck and fetches nothing, and a fetch does not report the
// log start.
const offsetsRefreshInterval = 10 * time.Second

// listOffsets asks the leaders of parts for the offset at ts (a time in
// Unix ms, or offsetLatest / offsetEarliest). A partition whose answer
// failed is absent from the result; failures are logged at level lvl.
func (in *Input) listOffsets(ctx context.Context, cl *kgo.Client, parts []tp, ts int64, lvl zapcore.Level) map[tp]int64 {
	req := kmsg.NewPtrListOffsetsRequest()
	req.ReplicaID = -1
	byTopic := map[string]int{}
	for _, p := range parts {
		i, ok := byTopic[p.topic]
		if !ok {
			i = len(req.Topics)
			byTopic[p.topic] = i
			rt := kmsg.NewListOffsetsRequestTopic()
			rt.Topic = p.topic
			req.Topics = append(req.Topics, rt)
		}
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition = p.p
		rp.CurrentLeaderEpoch = -1
		rp.Timestamp = ts
		req.Topics[i].Partitions = append(req.Topics[i].Partitions, rp)
	}
	out := make(map[tp]int64, len(parts))
	logf := in.log.Check
	for _, sh := range cl.RequestSharded(ctx, req) {
		if sh.Err != nil {
			if ce := logf(lvl, "list offsets"); ce != nil {
				ce.Write(zap.Int64("timestamp", ts), zap.Error(sh.Err))
			}
			continue
		}
		resp := sh.Resp.(*kmsg.ListOffsetsResponse)
		for _, t := range resp.Topics {
			for _, rp := range t.Partitions {
				if err := kerr.ErrorForCode(rp.ErrorCode); err != nil {
					if ce := logf(lvl, "list offsets"); ce != nil {
						ce.Write(zap.Int64("timestamp", ts), zap.String("topic", t.Topic), zap.Int32("partition", rp.Partition), zap.Error(err))
					}
					continue
				}
				out[tp{t.Topic, rp.Partition}] = rp.Offset
			}
		}
	}
	return out
}

// offsetsRefresher refreshes the held partitions' high watermarks and log
// start offsets every in.refreshEvery until the input stops.
func (in *Input) offsetsRefresher() {
	defer in.wg.Done()
	t := time.NewTicker(in.refreshEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-in.quit:
			return
		}
		ctx, cancel := context.WithTimeout(in.procCtx, max(in.refreshEvery, time.Second))
		in.refreshOffsets(ctx)
		cancel()
	}
}

// refreshOffsets asks for the held partitions' high watermarks and log
// start offsets once. Failures are logged at debug level only: a cluster
// gone away is reported by the pinger, and the gauges keep their last
// values meanwhile.
func (in *Input) refreshOffsets(ctx context.Context) {
	in.mu.Lock()
	ps := make(map[tp]*partition, len(in.parts))
	keys := make([]tp, 0, len(in.parts))
	for k, p := range in.parts {
		ps[k] = p
		keys = append(keys, k)
	}
	in.mu.Unlock()
	cl := in.clp.Load()
	if len(keys) == 0 || cl == nil {
		return
	}
	for k, off := range in.listOffsets(ctx, cl, keys, offsetLatest, zapcore.DebugLevel) {
		if p := ps[k]; p != nil && off >= 0 {
			p.storeHWM(off)
		}
	}
	for k, off := range in.listOffsets(ctx, cl, keys, offsetEarliest, zapcore.DebugLevel) {
		if p := ps[k]; p != nil && off >= 0 {
			p.logStart.Store(off)
		}
	}
}

// storeHWM raises the partition's known high watermark to hwm: a fetch
// and a refresh may answer out of order, and the older answer must not
// lower the lag.
func (p *partition) storeHWM(hwm int64) {
	for {
		cur := p.hwm.Load()
		if hwm <= cur || p.hwm.CompareAndSwap(cur, hwm) {
			return
		}
	}
}

// lagOf is the lag gauge's value for a partition: its high watermark less
// the first offset still to be read, the committed offset or, when the
// partition has no commit (-1) or its committed records have expired, its
// log start offset (logStart -1: unknown, taken as 0). ok is false while
// the high watermark is unknown (-1).
func lagOf(hwm, committed, logStart int64) (lag int64, ok bool) {
	if hwm < 0 {
		return 0, false
	}
	return max(hwm-max(committed, logStart, 0), 0), true
}
