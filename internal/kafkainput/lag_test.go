package kafkainput

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// lagOf0 is the lag gauge of testTopic's partition 0 (-1: not exported).
func lagOf0(t *testing.T, in *Input) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 64)
	partitionCollector{in}.Collect(ch)
	close(ch)
	for m := range ch {
		if m.Desc() != lagDesc {
			continue
		}
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		for _, l := range d.GetLabel() {
			if l.GetName() == "partition" && l.GetValue() == "0" {
				return d.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// startStuck runs an input over c whose Processor never finishes a
// message and whose in-flight bound is 4 records: once 4 are handed out
// the replica polls no more, as one stuck on a sink would.
func startStuck(t *testing.T, c *kfake.Cluster, refresh time.Duration, noCommit bool) (*Input, *holdProc) {
	t.Helper()
	h := &holdProc{release: make(chan struct{})}
	in := newInput(t, c, h, func(o *Options) { o.MaxInFlight = 4; o.Workers = 1 })
	in.refreshEvery = refresh
	in.noCommit.Store(noCommit)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = in.Run(ctx) }()
	t.Cleanup(func() { close(h.release); cancel(); <-done })
	waitFor(t, 10*time.Second, "4 records handed out", func() bool { return h.n.Load() == 4 })
	return in, h
}

// TestLagStuckReplicaRises: a replica that fetches nothing more (its
// in-flight bound full, its messages never finishing) still sees the
// records produced since: the refreshed high watermark keeps its lag
// rising. Without the refresh the gauge stays at the last fetch's 10.
func TestLagStuckReplicaRises(t *testing.T) {
	c := fakeCluster(t, 1)
	produceFrom(t, c, 0, 10)
	in, h := startStuck(t, c, 50*time.Millisecond, false)
	waitFor(t, 5*time.Second, "lag 10", func() bool { return lagOf0(t, in) == 10 })
	produceFrom(t, c, 10, 15)
	waitFor(t, 5*time.Second, "lag 25 while stuck", func() bool { return lagOf0(t, in) == 25 })
	if n := h.n.Load(); n != 4 {
		t.Fatalf("%d records handed out: the replica was not stuck", n)
	}
}

// TestLagNoCommitFromLogStart: a partition never committed whose first 6
// records were deleted (log start 6, as after retention) lags by the 4
// records still readable, not by its whole high watermark of 10. Commits
// are off: otherwise the first record received commits its offset, 6,
// within CommitInterval (nothing before it is left to process), and the
// commit hides what the log start floor is for.
func TestLagNoCommitFromLogStart(t *testing.T) {
	c := fakeCluster(t, 1)
	produceFrom(t, c, 0, 10)
	deleteRecords(t, c, 6)
	in, _ := startStuck(t, c, 50*time.Millisecond, true)
	waitFor(t, 5*time.Second, "lag 4 from the log start", func() bool { return lagOf0(t, in) == 4 })
	in.mu.Lock()
	p := in.parts[tp{testTopic, 0}]
	in.mu.Unlock()
	if got := p.committed.Load(); got != -1 {
		t.Fatalf("committed %d, want none", got)
	}
}

// deleteRecords moves testTopic partition 0's log start to before.
func deleteRecords(t *testing.T, c *kfake.Cluster, before int64) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrDeleteRecordsRequest()
	req.TimeoutMillis = 5000
	rt := kmsg.NewDeleteRecordsRequestTopic()
	rt.Topic = testTopic
	rp := kmsg.NewDeleteRecordsRequestTopicPartition()
	rp.Partition = 0
	rp.Offset = before
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	for _, sh := range cl.RequestSharded(context.Background(), req) {
		if sh.Err != nil {
			t.Fatalf("delete records: %v", sh.Err)
		}
		for _, t2 := range sh.Resp.(*kmsg.DeleteRecordsResponse).Topics {
			for _, p := range t2.Partitions {
				if err := kerrFor(p.ErrorCode); err != nil {
					t.Fatalf("delete records: %v", err)
				}
				if p.LowWatermark != before {
					t.Fatalf("log start %d, want %d", p.LowWatermark, before)
				}
			}
		}
	}
}

func TestLagOf(t *testing.T) {
	for _, c := range []struct {
		hwm, committed, logStart, want int64
		ok                             bool
	}{
		{-1, 5, 0, 0, false},   // no high watermark yet
		{10, -1, -1, 10, true}, // no commit, log start unknown: from 0
		{10, -1, 6, 4, true},   // no commit: from the log start
		{10, 3, 0, 7, true},    // from the commit
		{10, 3, 6, 4, true},    // committed records expired: from the log start
		{10, 12, 0, 0, true},   // a stale high watermark never gives a negative lag
		{100, 40, 6, 60, true}, // the commit above the log start
	} {
		got, ok := lagOf(c.hwm, c.committed, c.logStart)
		if got != c.want || ok != c.ok {
			t.Errorf("lagOf(%d, %d, %d) = %d, %v; want %d, %v", c.hwm, c.committed, c.logStart, got, ok, c.want, c.ok)
		}
	}
}

// TestCommitRequestErrorNamesPartitions: a commit whose whole request
// fails (the coordinator's connection dropped, every retry too) returns an
// error naming the partitions it carried, topic and numbers.
func TestCommitRequestErrorNamesPartitions(t *testing.T) {
	c := fakeCluster(t, 1)
	produceFrom(t, c, 0, 3)
	proc := newFakeProc(t, 0)
	proc.anyOrder = true
	in := newInput(t, c, proc, func(o *Options) { o.CommitInterval = time.Hour })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = in.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 10*time.Second, "3 records done", func() bool { u, _ := proc.counts(); return u == 3 })
	c.ControlKey(int16(kmsg.OffsetCommit), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		return nil, errors.New("commit refused"), true
	})
	cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer ccancel()
	err := in.commit(cctx, nil)
	if err == nil || !strings.Contains(err.Error(), testTopic+":[0]") {
		t.Fatalf("commit error %v does not name %s partition 0", err, testTopic)
	}
	if n := testutil.ToFloat64(in.m.commits.WithLabelValues("error")); n != 1 {
		t.Errorf("commits_total{result=error} %v, want 1", n)
	}
}
