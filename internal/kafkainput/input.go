package kafkainput

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/intake"
)

// Source is what the input sets as intake.Message.Source.
const Source = "kafka"

var _ intake.Input = (*Input)(nil)

// Errors returned by the Input.
var (
	ErrAlreadyRunning = errors.New("kafkainput: Run called twice")
)

// Input is the Kafka consumer-group input. Create it with New, run it
// with Run.
type Input struct {
	o       Options
	proc    intake.Processor
	log     *zap.Logger
	m       *metrics
	clp     atomic.Pointer[kgo.Client] // made by Run: nothing joins the group before
	opts    []kgo.Opt                  // the group client's options
	mapper  mapper
	pattern intake.TopicPattern
	clOpts  []kgo.Opt // connection options, for the rebuild readers

	// Partitions held, by topic and number. A partition leaves the map
	// when it is revoked (after its final commit) or lost.
	mu    sync.Mutex
	parts map[tp]*partition
	// prevReceived: for partitions being assigned, how far their previous
	// holder had received them (its last commit's metadata).
	prevReceived map[tp]int64

	// In-flight bound: records and value bytes handed to the Processor and
	// not yet settled.
	flightMu    sync.Mutex
	flightCond  *sync.Cond
	flightN     int
	flightBytes int
	pollWaiting bool // waitRoom waits: release wakes it once there is room
	minRoom     int  // the room waitRoom waits for (hysteresis: no poll for a record or two)

	queues []*workQueue
	// Owned by the poll goroutine: a poll's entries, and its entries by
	// worker (pend) with the workers that got any (touched).
	polled []*entry
	// polledTopics: the topic and device id found for a header value (or
	// key), at most maxPolledTopics of them (see polledMessage).
	polledTopics map[string]mappedTopic
	pend         [][]*entry
	touched      []uint32

	commitMu sync.Mutex // one commit at a time (periodic, revoke, final)

	runMu        sync.Mutex  // Run's start against Shutdown's stop
	joined       atomic.Bool // the group was joined (an assignment came)
	fetchFailing atomic.Bool
	unreachable  atomic.Bool // the last ping reached no broker
	stopping     atomic.Bool
	running      atomic.Bool

	pollCtx    context.Context
	pollCancel context.CancelFunc
	pollDone   chan struct{}
	procCtx    context.Context // handed to the Processor; ends at the shutdown deadline
	procCancel context.CancelFunc
	quit       chan struct{} // ends workers and the committer
	wg         sync.WaitGroup

	shutdownOnce sync.Once
	shutdownDone chan struct{}
	shutdownErr  error

	// commitHook, in tests, sees every offset committed; noCommit, in
	// tests, turns commits off (a replica that dies without committing).
	commitHook func(topic string, partition int32, offset int64)
	noCommit   atomic.Bool
	// refreshEvery: how often held partitions' offsets are refreshed
	// (offsetsRefreshInterval; tests shorten it before Run).
	refreshEvery time.Duration
}

// tp names a partition.
type tp struct {
	topic string
	p     int32
}

// partition is one assigned partition.
type partition struct {
	tp
	// gone and lost are read for every record (a worker's skip) while
	// settle writes mu, tr and pending for every record on the sinks'
	// goroutines: the padding keeps them off that cache line, so the
	// reads do not miss each time a record was settled.
	gone atomic.Bool // revoked or lost: no more commits
	lost atomic.Bool // lost: queued messages are dropped
	_    [64]byte

	mu       sync.Mutex
	tr       tracker
	pending  int   // handed out, not settled
	received int64 // one past the last offset handed out (-1: none)
	// redeliverBelow: records below it may have been handed out by the
	// previous holder (its commit metadata said it had received them).
	redeliverBelow int64
	committed      atomic.Int64
	// hwm: the high watermark, from the last fetch or the periodic
	// refresh, whichever is higher (-1: unknown). logStart: the log start
	// offset from the refresh (-1: unknown).
	hwm      atomic.Int64
	logStart atomic.Int64
}

// New makes an Input that hands its messages to proc. It connects only
// when Run is called.
func New(o Options, proc intake.Processor) (*Input, error) {
	if proc == nil {
		return nil, errors.New("kafkainput: nil Processor")
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("kafkainput: %w", err)
	}
	var tpat intake.TopicPattern
	if o.TopicPattern != "" {
		if tpat, err = intake.ParseTopicPattern(o.TopicPattern); err != nil {
			return nil, fmt.Errorf("kafkainput: %w", err)
		}
	}
	in := &Input{
		o: o, proc: proc, log: o.Logger.With(zap.String("component", "kafka-input")),
		mapper: newMapper(o.TopicFrom, o.TopicHeader, o.TopicTemplate), pattern: tpat,
		clOpts: o.ClientOptions, parts: map[tp]*partition{}, prevReceived: map[tp]int64{},
		pollDone: make(chan struct{}), quit: make(chan struct{}), shutdownDone: make(chan struct{}),
		refreshEvery: offsetsRefreshInterval,
	}
	in.flightCond = sync.NewCond(&in.flightMu)
	in.pollCtx, in.pollCancel = context.WithCancel(context.Background())
	in.procCtx, in.procCancel = context.WithCancel(context.Background())
	in.m, err = newMetrics(o.Registerer, in)
	if err != nil {
		return nil, err
	}
	opts := append([]kgo.Opt{}, o.ClientOptions...)
	opts = append(opts,
		kgo.ConsumerGroup(o.Group),
		kgo.ConsumeTopics(o.Topics...),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.SessionTimeout(o.SessionTimeout),
		kgo.HeartbeatInterval(min(3*time.Second, o.SessionTimeout/3)),
		kgo.RebalanceTimeout(o.RebalanceTimeout),
		kgo.DisableAutoCommit(),
		// Callbacks run between polls, never while a polled batch is
		// being handed out: a revocation then sees every record of the
		// partition already in flight.
		kgo.BlockRebalanceOnPoll(),
	)
	opts = append(opts, fetchOpts(o.MaxInFlightBytes)...)
	opts = append(opts,
		// A partition without a commit starts at its beginning: a new
		// group reads the backlog rather than skipping it.
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.OnPartitionsAssigned(in.onAssigned),
		kgo.OnOffsetsFetched(in.onOffsetsFetched),
		kgo.AdjustFetchOffsetsFn(in.adjustOffsets),
		kgo.OnPartitionsRevoked(in.onRevoked),
		kgo.OnPartitionsLost(in.onLost),
	)
	in.opts = opts
	in.queues = make([]*workQueue, o.Workers)
	for i := range in.queues {
		in.queues[i] = &workQueue{wake: make(chan struct{}, 1)}
	}
	in.pend = make([][]*entry, o.Workers)
	in.minRoom = max(1, min(o.MaxInFlight/16, 256))
	return in, nil
}

// Run consumes until ctx ends or Shutdown is called; when ctx ends it
// shuts down within Options.ShutdownTimeout and returns that shutdown's
// error.
func (in *Input) Run(ctx context.Context) error {
	if !in.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	in.runMu.Lock()
	if in.stopping.Load() {
		in.runMu.Unlock()
		<-in.shutdownDone
		return in.shutdownErr
	}
	// The client is made here, not in New: it joins the group at once,
	// and a daemon that fails to start after New must not hold partitions.
	cl, err := kgo.NewClient(in.opts...)
	if err != nil {
		in.runMu.Unlock()
		return fmt.Errorf("kafkainput: %w", err)
	}
	in.clp.Store(cl)
	for _, q := range in.queues {
		in.wg.Add(1)
		go in.work(q)
	}
	in.wg.Add(3)
	go in.committer()
	go in.pinger()
	go in.offsetsRefresher()
	go in.poll()
	in.runMu.Unlock()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), in.o.ShutdownTimeout)
		defer cancel()
		return in.Shutdown(sctx)
	case <-in.shutdownDone:
		return in.shutdownErr
	}
}

// Ready reports whether the input has joined its group and its fetches
// are not failing.
func (in *Input) Ready() bool {
	return in.joined.Load() && !in.fetchFailing.Load() && !in.unreachable.Load() && !in.stopping.Load()
}

// pinger checks every pingInterval that a broker answers: an idle
// partition fetches nothing and reports no error, so a cluster gone away
// would otherwise look ready.
func (in *Input) pinger() {
	defer in.wg.Done()
	t := time.NewTicker(pingInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-in.quit:
			return
		}
		ctx, cancel := context.WithTimeout(in.procCtx, pingInterval)
		err := in.clp.Load().Ping(ctx)
		cancel()
		if was := in.unreachable.Swap(err != nil); was != (err != nil) {
			if err != nil {
				in.log.Warn("no Kafka broker answers", zap.Error(err))
			} else {
				in.log.Info("Kafka brokers answer again")
			}
		}
	}
}

const pingInterval = 5 * time.Second

// Shutdown stops fetching, lets in-flight messages finish, commits every
// partition's done prefix and leaves the group, all within ctx; what is
// unfinished at ctx's end is not committed (it is redelivered).
func (in *Input) Shutdown(ctx context.Context) error {
	in.shutdownOnce.Do(func() {
		in.shutdownErr = in.shutdown(ctx)
		close(in.shutdownDone)
	})
	select {
	case <-in.shutdownDone:
		return in.shutdownErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (in *Input) shutdown(ctx context.Context) error {
	in.runMu.Lock()
	in.stopping.Store(true)
	started := in.clp.Load() != nil
	in.runMu.Unlock()
	in.flightMu.Lock() // no waitRoom between its check and its Wait
	in.flightMu.Unlock()
	in.flightCond.Broadcast()
	stopProc := context.AfterFunc(ctx, in.procCancel)
	defer stopProc()
	in.pollCancel()
	var errs []error
	if started {
		select {
		case <-in.pollDone:
		case <-ctx.Done():
		}
	}
	// Finish what is in flight, then commit it.
	if err := in.waitFlight(ctx, func() bool { return in.inFlight() == 0 }); err != nil {
		errs = append(errs, fmt.Errorf("kafkainput: in-flight messages unfinished at the shutdown deadline (redelivered): %w", err))
	}
	if err := in.commit(ctx, nil); err != nil {
		errs = append(errs, err)
	}
	// Leaving runs onRevoked for every partition (nothing left to wait
	// for or commit), then the group rebalances without this member.
	cl := in.clp.Load()
	if cl != nil {
		if err := cl.LeaveGroupContext(ctx); err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("kafkainput: leave group: %w", err))
		}
	}
	in.procCancel()
	close(in.quit)
	in.flightCond.Broadcast()
	in.wg.Wait()
	if cl != nil {
		cl.Close()
	}
	in.log.Info("kafka input stopped")
	return errors.Join(errs...)
}

// poll fetches and hands records out until the input stops. Between a
// poll and AllowRebalance it never blocks.
func (in *Input) poll() {
	defer close(in.pollDone)
	cl := in.clp.Load()
	for {
		n, ok := in.waitRoom()
		if !ok {
			return
		}
		fs := cl.PollRecords(in.pollCtx, n)
		if in.pollCtx.Err() != nil || fs.IsClientClosed() {
			// Records polled now are not handed out: not committed, they
			// come back to whoever holds the partition next.
			cl.AllowRebalance()
			return
		}
		failed := false
		fs.EachError(func(topic string, p int32, err error) {
			if errors.Is(err, context.Canceled) {
				return
			}
			failed = true
			in.m.fetchErrors.Inc()
			in.log.Warn("fetch failed; retrying", zap.String("topic", topic), zap.Int32("partition", p), zap.Error(err))
		})
		now := time.Now()
		got := 0
		in.polled = in.polled[:0]
		fs.EachPartition(func(ftp kgo.FetchTopicPartition) {
			if len(ftp.Records) == 0 {
				in.mu.Lock()
				if p := in.parts[tp{ftp.Topic, ftp.Partition}]; p != nil && ftp.HighWatermark >= 0 {
					p.storeHWM(ftp.HighWatermark)
				}
				in.mu.Unlock()
				return
			}
			p := in.partition(ftp.Topic, ftp.Partition)
			p.storeHWM(ftp.HighWatermark)
			got += len(ftp.Records)
			in.admit(p, ftp.Records, now)
		})
		if len(in.polled) > 0 {
			in.dispatchAll(in.polled)
			clear(in.polled)
		}
		if got > 0 || !failed {
			in.fetchFailing.Store(false)
		} else {
			in.fetchFailing.Store(true)
		}
		cl.AllowRebalance()
		if failed && got == 0 {
			select {
			case <-time.After(100 * time.Millisecond):
			case <-in.pollCtx.Done():
			}
		}
	}
}

// byTPSet is the key set of m.
func byTPSet(m map[tp]*partition) map[tp]bool {
	out := make(map[tp]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

// partition returns the state of a held partition, creating it when a
// record comes for one the assignment did not announce (not expected).
func (in *Input) partition(topic string, p int32) *partition {
	k := tp{topic, p}
	in.mu.Lock()
	defer in.mu.Unlock()
	if pt := in.parts[k]; pt != nil {
		return pt
	}
	pt := newPartition(k, -1, in.prevReceived[k])
	in.parts[k] = pt
	return pt
}

func newPartition(k tp, committed, prevReceived int64) *partition {
	p := &partition{tp: k, tr: newTracker(committed), received: -1, redeliverBelow: prevReceived}
	p.committed.Store(committed)
	p.hwm.Store(-1)
	p.logStart.Store(-1)
	return p
}

// admit takes the records of one partition from one poll (in offset
// order): tracked for the commit, counted against the in-flight bound,
// and appended to in.polled for dispatchAll. Nothing is taken from a
// partition already revoked or lost.
func (in *Input) admit(p *partition, rs []*kgo.Record, now time.Time) {
	es := make([]entry, len(rs)) // one allocation for the poll's entries of p
	size := 0
	for i, r := range rs {
		es[i] = entry{in: in, p: p, size: len(r.Value), msg: in.polledMessage(r, now)}
		size += len(r.Value)
	}
	redelivered := 0
	p.mu.Lock()
	if p.gone.Load() {
		p.mu.Unlock()
		return
	}
	for i, r := range rs {
		e := &es[i]
		if e.msg.Redelivered = r.Offset < p.redeliverBelow; e.msg.Redelivered {
			redelivered++
		}
		e.seq = p.tr.add(r.Offset, r.LeaderEpoch)
	}
	p.pending += len(rs)
	p.received = rs[len(rs)-1].Offset + 1
	p.mu.Unlock()
	in.flightMu.Lock()
	in.flightN += len(rs)
	in.flightBytes += size
	in.flightMu.Unlock()
	in.m.received.Add(float64(len(rs)))
	if redelivered > 0 {
		in.m.redelivered.Add(float64(redelivered))
	}
	for i := range es {
		in.polled = append(in.polled, &es[i])
	}
}

// message is r as the Processor sees it.
func (in *Input) message(r *kgo.Record, now time.Time) intake.Message {
	topic, ok := in.mapper.topic(r)
	id, _ := in.pattern.DeviceID(topic)
	return in.messageOf(r, now, topic, id, ok)
}

// maxPolledTopics bounds polledTopics: past it the map starts again empty
// (a fleet larger than that pays one string and one check per record, as
// without the map).
const maxPolledTopics = 1 << 16

// mappedTopic is what message finds for a header value (or key).
type mappedTopic struct {
	topic, device string
	ok            bool
}

// polledMessage is message for the poll goroutine, with the value copied
// out of the fetch response: a record's value aliases its decompressed
// batch, so one record still in flight (a device waiting for its key)
// would keep the whole batch alive, and the in-flight byte bound would
// count a few hundred bytes of what holds up to a mebibyte. Copied, the
// bound counts what is held, and a response is garbage once polled.
func (in *Input) polledMessage(r *kgo.Record, now time.Time) intake.Message {
	m := in.mappedMessage(r, now)
	m.Payload = bytes.Clone(r.Value)
	return m
}

// mappedMessage is message with the topic and device id found for a
// header value (or key) kept in polledTopics, so a device's records after
// its first cost a map lookup instead of a string allocation, the topic
// check and the pattern match.
func (in *Input) mappedMessage(r *kgo.Record, now time.Time) intake.Message {
	raw, has := in.mapper.raw(r)
	if !has {
		return in.message(r, now)
	}
	if t, hit := in.polledTopics[string(raw)]; hit {
		return in.messageOf(r, now, t.topic, t.device, t.ok)
	}
	topic, ok := in.mapper.topic(r)
	id, _ := in.pattern.DeviceID(topic)
	if in.polledTopics == nil || len(in.polledTopics) >= maxPolledTopics {
		in.polledTopics = make(map[string]mappedTopic)
	}
	in.polledTopics[string(raw)] = mappedTopic{topic, id, ok}
	return in.messageOf(r, now, topic, id, ok)
}

func (in *Input) messageOf(r *kgo.Record, now time.Time, topic, id string, ok bool) intake.Message {
	if !ok {
		// Handed on without a topic: the decryptor then has no device
		// to check the payload's against, as for an MQTT topic the
		// pattern does not match. Counted, so a bridge writing another
		// layout is seen.
		in.m.unmapped.Inc()
	}
	// Position shares r.Topic (the client's string for the topic, one per
	// fetch partition): no allocation per record.
	return intake.Message{Source: Source, Topic: topic, DeviceID: id, Payload: r.Value, ReceivedAt: now,
		Position: intake.LogPosition{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset}}
}

// waitRoom waits until the in-flight bound has room (at least minRoom
// records, and value bytes below the byte bound) and returns how many
// records the next poll may take; ok=false once the input stops.
func (in *Input) waitRoom() (int, bool) {
	in.flightMu.Lock()
	defer in.flightMu.Unlock()
	for !in.roomLocked() && !in.stopping.Load() {
		in.pollWaiting = true
		in.flightCond.Wait()
	}
	in.pollWaiting = false
	if in.stopping.Load() {
		return 0, false
	}
	return in.o.MaxInFlight - in.flightN, true
}

// roomLocked reports whether the poll goroutine may poll (flightMu held).
func (in *Input) roomLocked() bool {
	return in.o.MaxInFlight-in.flightN >= in.minRoom && in.flightBytes < in.o.MaxInFlightBytes
}

func (in *Input) release(size int) {
	in.flightMu.Lock()
	in.flightN--
	in.flightBytes -= size
	wake := in.pollWaiting && in.roomLocked()
	if wake {
		in.pollWaiting = false
	}
	in.flightMu.Unlock()
	if wake {
		in.flightCond.Broadcast()
	}
}

func (in *Input) inFlight() int {
	in.flightMu.Lock()
	defer in.flightMu.Unlock()
	return in.flightN
}

// waitFlight polls cond until it holds or ctx ends (revocations and
// shutdown only: not on the message path).
func (in *Input) waitFlight(ctx context.Context, cond func() bool) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// committer commits every partition's done prefix each CommitInterval.
func (in *Input) committer() {
	defer in.wg.Done()
	t := time.NewTicker(in.o.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-in.quit:
			return
		}
		ctx, cancel := context.WithTimeout(in.procCtx, 10*time.Second)
		if err := in.commit(ctx, nil); err != nil && in.procCtx.Err() == nil {
			in.log.Warn("periodic commit failed; the next one retries", zap.Error(err))
		}
		cancel()
	}
}

// commit commits the done prefix of the given partitions (nil: every one
// held) that advanced since their last commit, with the received mark as
// metadata.
func (in *Input) commit(ctx context.Context, only []*partition) error {
	in.commitMu.Lock()
	defer in.commitMu.Unlock()
	if in.noCommit.Load() {
		return nil
	}
	if only == nil {
		in.mu.Lock()
		for _, p := range in.parts {
			only = append(only, p)
		}
		in.mu.Unlock()
	}
	offsets := map[string]map[int32]kgo.EpochOffset{}
	meta := map[tp]string{}
	byTP := map[tp]*partition{}
	for _, p := range only {
		if p.lost.Load() {
			continue
		}
		p.mu.Lock()
		off, epoch := p.tr.commitOffset()
		received := p.received
		p.mu.Unlock()
		if off < 0 || off <= p.committed.Load() {
			continue
		}
		if offsets[p.topic] == nil {
			offsets[p.topic] = map[int32]kgo.EpochOffset{}
		}
		offsets[p.topic][p.p] = kgo.EpochOffset{Epoch: epoch, Offset: off}
		meta[p.tp] = formatMeta(max(received, off))
		byTP[p.tp] = p
	}
	if len(offsets) == 0 {
		return nil
	}
	cctx := kgo.PreCommitFnContext(ctx, func(req *kmsg.OffsetCommitRequest) error {
		for i := range req.Topics {
			t := &req.Topics[i]
			for j := range t.Partitions {
				if m, ok := meta[tp{t.Topic, t.Partitions[j].Partition}]; ok {
					t.Partitions[j].Metadata = &m
				}
			}
		}
		return nil
	})
	var errs []error
	cl := in.clp.Load()
	if cl == nil {
		return nil
	}
	cl.CommitOffsetsSync(cctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			// The whole request failed: name what it carried, so a
			// commit error in the log says which partitions stayed
			// uncommitted.
			errs = append(errs, fmt.Errorf("%v: %w", byTopic(byTPSet(byTP)), err))
			return
		}
		for _, t := range resp.Topics {
			for _, rp := range t.Partitions {
				k := tp{t.Topic, rp.Partition}
				p, eo := byTP[k], offsets[t.Topic][rp.Partition]
				if p == nil {
					continue
				}
				if cerr := kerrFor(rp.ErrorCode); cerr != nil {
					errs = append(errs, fmt.Errorf("%s[%d]: %w", t.Topic, rp.Partition, cerr))
					continue
				}
				p.committed.Store(eo.Offset)
				if in.commitHook != nil {
					in.commitHook(t.Topic, rp.Partition, eo.Offset)
				}
			}
		}
	})
	if len(errs) > 0 {
		in.m.commits.WithLabelValues("error").Inc()
		return fmt.Errorf("kafkainput: commit: %w", errors.Join(errs...))
	}
	in.m.commits.WithLabelValues("ok").Inc()
	return nil
}
