package kafkainput

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/decryptd/decryptd/internal/intake"
)

// stallProc is a replica's Processor that, once stalled, takes messages
// and finishes none of them until released (a replica whose processing
// hangs: a stuck sink, a stopped process). It records what it holds.
type stallProc struct {
	*fakeProc
	stalled atomic.Bool
	release chan struct{}
	mu      sync.Mutex
	held    map[[2]int]bool
}

func (s *stallProc) hold(m intake.Message, done func(error)) bool {
	if !s.stalled.Load() {
		return false
	}
	p, seq := parseValue(s.t, m.Payload)
	s.mu.Lock()
	s.held[[2]int{p, seq}] = true
	s.mu.Unlock()
	go func() { <-s.release; done(nil) }()
	return true
}

func (s *stallProc) Process(ctx context.Context, m intake.Message, done func(error)) {
	if !s.hold(m, done) {
		s.fakeProc.Process(ctx, m, done)
	}
}

func (s *stallProc) TryProcess(ctx context.Context, m intake.Message, done func(error)) bool {
	if s.hold(m, done) {
		return true
	}
	return s.fakeProc.TryProcess(ctx, m, done)
}

func (s *stallProc) heldSet() map[[2]int]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[[2]int]bool, len(s.held))
	for k := range s.held {
		out[k] = true
	}
	return out
}

func heldPartitions(in *Input) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.parts)
}

// TestPartitionsLost: replica a stalls (its messages stop finishing) and
// stops heartbeating (the coordinator sees nothing from it: its heartbeat
// is held at the broker past its 1 s session timeout, as for a paused or
// partitioned process). The coordinator expires its session and gives its
// partitions to b, which starts at a's last commit; a, on its next
// heartbeat answered "unknown member", loses its partitions without a
// commit (decryptd_kafka_rebalances_total{event="lost"} = 1); it stays
// cut off (its joins held) until the end. Nothing is
// lost: every record is finished, and every record a held uncommitted is
// delivered again by b (the same record, so the same record id
// downstream).
func TestPartitionsLost(t *testing.T) {
	const parts, per = 6, 100
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(parts, testTopic), kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)

	// a's heartbeats, once paused, are held until wake is closed; then
	// the coordinator answers them (by then: unknown member).
	var paused atomic.Bool
	var aMember atomic.Value
	aMember.Store("")
	wake := make(chan struct{})
	var heldHB atomic.Int64
	c.ControlKey(int16(kmsg.Heartbeat), func(r kmsg.Request) (kmsg.Response, error, bool) {
		req := r.(*kmsg.HeartbeatRequest)
		if paused.Load() && req.MemberID == aMember.Load().(string) {
			heldHB.Add(1)
			c.SleepControl(func() { <-wake })
		}
		return nil, nil, false
	})
	// While paused, a stays cut off: its attempts to join again (it
	// does after a loss, as a fresh member) are held until healed is
	// closed, so b keeps what it took over. a is told apart by its
	// session timeout (1 s, b's is 3 s).
	healed := make(chan struct{})
	var heldJoins atomic.Int64
	c.ControlKey(int16(kmsg.JoinGroup), func(r kmsg.Request) (kmsg.Response, error, bool) {
		req := r.(*kmsg.JoinGroupRequest)
		if paused.Load() && req.SessionTimeoutMillis == 1000 {
			heldJoins.Add(1)
			c.SleepControl(func() { <-healed })
		}
		return nil, nil, false
	})

	aProc := &stallProc{fakeProc: newFakeProc(t, time.Millisecond), release: make(chan struct{}), held: map[[2]int]bool{}}
	aProc.anyOrder = true
	bProc := newFakeProc(t, time.Millisecond)
	bProc.anyOrder = true // a takeover restarts a device at the last commit
	a := newInput(t, c, aProc, func(o *Options) { o.SessionTimeout = time.Second })
	b := newInput(t, c, bProc, func(o *Options) { o.SessionTimeout = 3 * time.Second })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tStart := time.Now()
	go a.Run(ctx)
	waitFor(t, 20*time.Second, "a holds every partition", func() bool { return heldPartitions(a) == parts })
	go b.Run(ctx)
	waitFor(t, 20*time.Second, "a and b share the partitions", func() bool {
		na, nb := heldPartitions(a), heldPartitions(b)
		return na > 0 && nb > 0 && na+nb == parts
	})
	aParts := heldPartitions(a)

	// a stalls; the records arrive; a takes (at most MaxInFlight) of its
	// partitions' records and finishes none, b finishes its own.
	aProc.stalled.Store(true)
	produce(t, c, parts, per, 5)
	wantHeld := min(64, aParts*per)
	waitFor(t, 20*time.Second, "a holds its in-flight bound of records", func() bool { return len(aProc.heldSet()) == wantHeld })

	// a stops heartbeating: the coordinator expires it and b gets every
	// partition.
	member, _ := a.clp.Load().GroupMetadata()
	aMember.Store(member)
	paused.Store(true)
	waitFor(t, 30*time.Second, "b holds every partition after a's session expired", func() bool { return heldPartitions(b) == parts })
	if heldHB.Load() == 0 {
		t.Fatal("b took a's partitions without a's heartbeat being held")
	}
	if lost := testutil.ToFloat64(a.m.rebalances.WithLabelValues("lost")); lost != 0 {
		t.Fatalf("a counted %v losses before it could know", lost)
	}
	// a's held heartbeat reaches the coordinator: unknown member.
	close(wake)
	waitFor(t, 20*time.Second, "a counts its partitions lost", func() bool {
		return testutil.ToFloat64(a.m.rebalances.WithLabelValues("lost")) == 1
	})
	t.Logf("a lost its partitions %v after the start", time.Since(tStart))
	if n := testutil.ToFloat64(a.m.rebalances.WithLabelValues("revoked")); n != 1 {
		// One revocation: the handover to b when b joined. The loss
		// is not one.
		t.Errorf("a counted %v revocations, want 1 (b joining)", n)
	}

	// Nothing lost: everything finished by b (a finished nothing since
	// the stall); each record a held is delivered again by b.
	waitFor(t, 30*time.Second, "b finished every record", func() bool { u, _ := bProc.counts(); return u == parts*per })
	held := aProc.heldSet()
	for k := range held {
		if !bProc.isDone(k[0], k[1]) {
			t.Errorf("record %d:%d, held by a when it lost its partition, not delivered again by b", k[0], k[1])
		}
	}
	if u, _ := aProc.counts(); u != 0 {
		t.Errorf("a finished %d records while stalled", u)
	}
	t.Logf("a held %d records of %d partitions when it lost them; b delivered all %d records, those %d again",
		len(held), aParts, parts*per, len(held))

	time.Sleep(100 * time.Millisecond) // nothing more comes
	if u, total := bProc.counts(); u != parts*per || total != u {
		// b started at a's commit and kept every partition.
		t.Errorf("b: %d unique, %d total finishes", u, total)
	}
	t.Logf("a's joins held while cut off: %d", heldJoins.Load())

	// The partition heals: a's late finishes land on partitions it no
	// longer holds (no commit); both leave.
	close(aProc.release)
	close(healed)
	sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer scancel()
	if err := a.Shutdown(sctx); err != nil {
		t.Errorf("a.Shutdown: %v", err)
	}
	if err := b.Shutdown(sctx); err != nil {
		t.Errorf("b.Shutdown: %v", err)
	}
}
