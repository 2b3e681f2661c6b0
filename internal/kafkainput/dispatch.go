package kafkainput

import (
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/intake"
)

// Handing records to the Processor, in order per MQTT topic (device):
// the poll goroutine hands a record over itself (TryProcess, which never
// blocks) when nothing of its worker is pending, otherwise the worker
// that owns its topic does (Process, which may wait for a key) and the
// topic's later records queue behind it. Different topics run
// concurrently on different workers.

// entry is one record handed out.
type entry struct {
	in      *Input
	p       *partition
	seq     uint64
	size    int
	msg     intake.Message
	backoff time.Duration
}

// dispatch hands e to the Processor without waiting when nothing of its
// worker's topics is queued or being processed and the Processor takes
// it at once; otherwise e goes to its topic's worker.
func (in *Input) dispatch(e *entry) {
	q := in.queues[hashTopic(e.msg.Topic)%uint32(len(in.queues))]
	if q.busy.Load() == 0 && in.proc.TryProcess(in.procCtx, e.msg, e.finish) {
		in.m.inline.Inc()
		return
	}
	q.busy.Add(1)
	q.push(e)
}

func (in *Input) work(q *workQueue) {
	defer in.wg.Done()
	for {
		e, ok := q.pop(in.quit)
		if !ok {
			return
		}
		if e.p.lost.Load() || in.procCtx.Err() != nil {
			// Its partition is gone without a commit, or the shutdown
			// deadline passed: not processed, not committed; whoever
			// holds the partition next gets it.
			e.settle(false)
		} else {
			in.proc.Process(in.procCtx, e.msg, e.finish)
		}
		// Only now may a later message of these topics take the fast
		// path: whatever this call handed on went first.
		q.busy.Add(-1)
	}
}

// finish is the Processor's done for e.
func (e *entry) finish(err error) {
	in := e.in
	if err != nil && in.procCtx.Err() == nil {
		// A Processor fails a message only when its context ended; one
		// that does otherwise breaks that contract. Retrying keeps the
		// partition's commits moving (its order is lost for this one
		// message; a stuck commit would redeliver everything after it).
		e.backoff = min(max(2*e.backoff, 100*time.Millisecond), 5*time.Second)
		in.log.Error("processor failed a message before shutdown; retrying it", zap.Error(err), zap.Duration("backoff", e.backoff))
		time.AfterFunc(e.backoff, func() {
			if in.procCtx.Err() != nil {
				e.settle(false)
				return
			}
			in.proc.Process(in.procCtx, e.msg, e.finish)
		})
		return
	}
	e.settle(err == nil)
}

// settle ends e's time in flight; done says whether it may be committed.
func (e *entry) settle(done bool) {
	p := e.p
	p.mu.Lock()
	if done {
		p.tr.finish(e.seq)
	}
	p.pending--
	p.mu.Unlock()
	e.msg = intake.Message{}
	e.in.release(e.size)
}

// hashTopic picks a topic's worker: FNV-1a.
func hashTopic(topic string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(topic); i++ {
		h ^= uint32(topic[i])
		h *= 16777619
	}
	return h
}

// workQueue is one worker's FIFO. The in-flight bound bounds what all
// queues hold together; pushing never blocks.
type workQueue struct {
	mu    sync.Mutex
	items []*entry
	wake  chan struct{}
	// busy counts the messages queued here or in their Processor call;
	// the poll goroutine takes its fast path only while it is zero.
	busy atomic.Int64
}

func (q *workQueue) push(e *entry) {
	q.mu.Lock()
	q.items = append(q.items, e)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *workQueue) pop(quit <-chan struct{}) (*entry, bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			e := q.items[0]
			q.items[0] = nil
			q.items = q.items[1:]
			q.mu.Unlock()
			return e, true
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-quit:
			return nil, false
		}
	}
}
