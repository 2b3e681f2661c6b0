package kafkainput

import (
	"context"
	"github.com/decryptd/decryptd/internal/intake"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRebalanceGraceful: a second replica joins the group mid-stream
// (cooperative: half the partitions move, each committed by the first
// before it is released), then the first leaves (all move). Nothing is
// lost, and with every handover committed nothing is processed twice.
func TestRebalanceGraceful(t *testing.T) {
	const parts, per = 12, 400
	c := fakeCluster(t, parts)
	produce(t, c, parts, per, 5)
	proc := newFakeProc(t, 2*time.Millisecond)
	var started atomic.Bool
	joined := make(chan struct{})
	proc.onCall = func(n int) {
		if n == parts*per/4 && started.CompareAndSwap(false, true) {
			close(joined)
		}
	}
	a := newInput(t, c, proc, nil)
	b := newInput(t, c, proc, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Run(ctx)
	<-joined
	go b.Run(ctx)
	waitFor(t, 30*time.Second, "b holds partitions", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.parts) > 0 })
	if u, _ := proc.counts(); u == parts*per {
		t.Log("everything was processed before the second replica joined; the handover moved no work")
	}
	sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer scancel()
	if err := a.Shutdown(sctx); err != nil {
		t.Fatalf("a.Shutdown: %v", err)
	}
	waitFor(t, 30*time.Second, "every message finished", func() bool { u, _ := proc.counts(); return u == parts*per })
	if err := b.Shutdown(sctx); err != nil {
		t.Fatalf("b.Shutdown: %v", err)
	}
	u, total := proc.counts()
	if u != parts*per {
		t.Fatalf("%d of %d messages finished", u, parts*per)
	}
	if total != u {
		t.Errorf("%d messages processed twice across committed handovers", total-u)
	}
}

// TestRebalanceCrash: the first replica dies without committing its last
// progress (commits off, then it leaves). Nothing is lost; what it had
// not committed is processed again by the second (duplicates, each the
// same message, so the same record id downstream), and a message marked
// Redelivered was handed out before.
func TestRebalanceCrash(t *testing.T) {
	const parts, per = 12, 400
	c := fakeCluster(t, parts)
	produce(t, c, parts, per, 5)
	proc := newFakeProc(t, 2*time.Millisecond)
	proc.anyOrder = true
	var seen sync.Map // (partition, seq) handed out
	mark := &markProc{fakeProc: proc, seen: &seen, t: t}
	var crashed atomic.Bool
	halfway := make(chan struct{})
	proc.onCall = func(n int) {
		if n == parts*per/2 && crashed.CompareAndSwap(false, true) {
			close(halfway)
		}
	}
	a := newInput(t, c, mark, func(o *Options) { o.CommitInterval = 50 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Run(ctx)
	<-halfway
	a.noCommit.Store(true)
	sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer scancel()
	_ = a.Shutdown(sctx)
	b := newInput(t, c, mark, nil)
	go b.Run(ctx)
	waitFor(t, 30*time.Second, "every message finished", func() bool { u, _ := proc.counts(); return u == parts*per })
	// Let b's redeliveries of a's last uncommitted stretch settle.
	time.Sleep(100 * time.Millisecond)
	if err := b.Shutdown(sctx); err != nil {
		t.Fatalf("b.Shutdown: %v", err)
	}
	u, total := proc.counts()
	if u != parts*per {
		t.Fatalf("%d of %d messages finished: lost some", u, parts*per)
	}
	t.Logf("%d messages processed twice after the crash; %d marked redelivered", total-u, mark.redelivered.Load())
	if total == u {
		t.Log("no duplicates: the crash came right after a commit")
	}
}

// markProc checks that a message marked Redelivered was handed out
// before.
type markProc struct {
	*fakeProc
	seen        *sync.Map
	redelivered atomic.Int64
	t           testing.TB
}

func (m *markProc) note(msg messageLike) {
	p, s := parseValue(m.t, msg.payload())
	_, before := m.seen.LoadOrStore([2]int{p, s}, true)
	if msg.redelivered() {
		m.redelivered.Add(1)
		if !before {
			m.t.Errorf("%d:%d marked Redelivered on its first delivery", p, s)
		}
	}
}

type messageLike interface {
	payload() []byte
	redelivered() bool
}

type msgView struct{ m intakeMessage }

func (v msgView) payload() []byte   { return v.m.Payload }
func (v msgView) redelivered() bool { return v.m.Redelivered }

func (m *markProc) Process(ctx context.Context, msg intakeMessage, done func(error)) {
	m.note(msgView{msg})
	m.fakeProc.Process(ctx, msg, done)
}

func (m *markProc) TryProcess(ctx context.Context, msg intakeMessage, done func(error)) bool {
	if m.fakeProc.TryProcess(ctx, msg, done) {
		m.note(msgView{msg})
		return true
	}
	return false
}

type intakeMessage = intake.Message
