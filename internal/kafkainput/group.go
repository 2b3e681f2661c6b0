package kafkainput

import (
	"context"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/zap"
)

// The group callbacks. franz-go runs them on its group goroutine, one at
// a time and (BlockRebalanceOnPoll) never while a polled batch is being
// handed out. For a newly assigned partition: onAssigned, then
// onOffsetsFetched (the previous holder's commit metadata), then
// adjustOffsets (the replay window rebuilt from the log before any of the
// partition's records is fetched). For a partition taken away:
// onRevoked (its in-flight messages finish, its done prefix is committed,
// then it is released) or onLost (dropped without a commit).

func kerrFor(code int16) error { return kerr.ErrorForCode(code) }

func (in *Input) onAssigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	in.joined.Store(true)
	n := 0
	for _, ps := range assigned {
		n += len(ps)
	}
	if n > 0 {
		in.m.rebalances.WithLabelValues("assigned").Inc()
		in.log.Info("partitions assigned", zap.Any("partitions", assigned))
	}
}

// onOffsetsFetched keeps, for each partition being assigned, how far its
// previous holder had received it (the metadata of its last commit).
func (in *Input) onOffsetsFetched(_ context.Context, _ *kgo.Client, resp *kmsg.OffsetFetchResponse) error {
	keep := func(topic string, p int32, meta *string) {
		if meta == nil {
			return
		}
		if n, ok := parseMeta(*meta); ok {
			in.mu.Lock()
			in.prevReceived[tp{topic, p}] = n
			in.mu.Unlock()
		}
	}
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			keep(t.Topic, p.Partition, p.Metadata)
		}
	}
	for _, g := range resp.Groups {
		for _, t := range g.Topics {
			for _, p := range t.Partitions {
				keep(t.Topic, p.Partition, p.Metadata)
			}
		}
	}
	return nil
}

// adjustOffsets runs once the committed offsets of the newly assigned
// partitions are known and before they are fetched: it sets up each
// partition's state and rebuilds its replay window. The offsets are
// returned unchanged.
func (in *Input) adjustOffsets(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	var rebuild []rebuildPart
	in.mu.Lock()
	for topic, ps := range offsets {
		for p, o := range ps {
			k := tp{topic, p}
			committed := o.EpochOffset().Offset // negative: none (a reset offset)
			if committed < 0 {
				committed = -1
			}
			prev := in.prevReceived[k]
			delete(in.prevReceived, k)
			in.parts[k] = newPartition(k, committed, prev)
			if committed > 0 && in.o.Window != nil {
				rebuild = append(rebuild, rebuildPart{tp: k, end: committed})
			}
		}
	}
	in.mu.Unlock()
	if len(rebuild) > 0 {
		in.rebuild(ctx, rebuild)
	}
	return offsets, nil
}

// onRevoked lets the revoked partitions' in-flight messages finish (at
// most RevokeTimeout), commits their done prefix and releases them. A
// message still unfinished then is not committed: the next holder gets it
// again.
func (in *Input) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	ps := in.take(revoked)
	if len(ps) == 0 {
		return
	}
	in.m.rebalances.WithLabelValues("revoked").Inc()
	wctx, cancel := context.WithTimeout(ctx, in.o.RevokeTimeout)
	defer cancel()
	start := time.Now()
	err := in.waitFlight(wctx, func() bool {
		for _, p := range ps {
			p.mu.Lock()
			n := p.pending
			p.mu.Unlock()
			if n > 0 {
				return false
			}
		}
		return true
	})
	if err != nil {
		in.log.Warn("revoked partitions still had messages in flight; committing what is done (the rest is redelivered to the next holder)",
			zap.Duration("waited", time.Since(start)))
	}
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	if err := in.commit(cctx, ps); err != nil {
		in.log.Warn("commit on revocation failed; the next holder starts at the previous commit (duplicates, no loss)", zap.Error(err))
	}
	for _, p := range ps {
		p.gone.Store(true)
	}
	in.log.Info("partitions revoked", zap.Any("partitions", revoked))
}

// onLost drops the lost partitions: no commit (the group has moved on);
// their queued messages are not processed.
func (in *Input) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	ps := in.take(lost)
	for _, p := range ps {
		p.lost.Store(true)
		p.gone.Store(true)
	}
	if len(ps) > 0 {
		in.m.rebalances.WithLabelValues("lost").Inc()
		in.log.Warn("partitions lost (session expired or fenced); their uncommitted messages go to the next holder", zap.Any("partitions", lost))
	}
}

// take removes the named partitions from those held and returns them.
func (in *Input) take(m map[string][]int32) []*partition {
	in.mu.Lock()
	defer in.mu.Unlock()
	var out []*partition
	for topic, ps := range m {
		for _, p := range ps {
			k := tp{topic, p}
			if pt := in.parts[k]; pt != nil {
				out = append(out, pt)
				delete(in.parts, k)
			}
		}
	}
	return out
}
