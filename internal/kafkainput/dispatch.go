package kafkainput

import (
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/intake"
)

// Handing records to the Processor, in order per MQTT topic (device): the
// poll goroutine only tracks the records of a poll and hands them, grouped
// by worker, to the workers (one queue push and at most one wake-up per
// worker and poll); a topic's records always go to the worker its hash
// picks, which takes them in order, one at a time: TryProcess (never
// blocks) and, when that declines (a key being loaded, a transient fault),
// Process (which may wait; the topic's later records queue behind it; see
// work for how the keys of a batch load together).
// Different topics run concurrently on different workers, so decryption
// uses as many cores as there are busy workers, and the poll goroutine is
// free to fetch the next records meanwhile.

// entry is one record handed out.
type entry struct {
	in      *Input
	p       *partition
	seq     uint64
	size    int
	msg     intake.Message
	backoff time.Duration
}

// dispatchAll hands the entries of one poll to their topics' workers, in
// order. It never blocks (the in-flight bound bounds the queues).
func (in *Input) dispatchAll(es []*entry) {
	touched := in.touched[:0]
	for _, e := range es {
		qi := hashTopic(e.msg.Topic) % uint32(len(in.queues))
		if len(in.pend[qi]) == 0 {
			touched = append(touched, qi)
		}
		in.pend[qi] = append(in.pend[qi], e)
	}
	for _, qi := range touched {
		in.queues[qi].pushAll(in.pend[qi])
		clear(in.pend[qi])
		in.pend[qi] = in.pend[qi][:0]
	}
	in.touched = touched
}

// work takes its queue's entries in order until the input stops. Each
// batch popped goes in two passes: first every entry whose topic has not
// had to wait yet in this batch is offered to TryProcess (which also
// starts loading the key of one it declines, so the keys of a batch load
// concurrently); the declined entries, and every later entry of their
// topics, are then handed over in order (TryProcess, else Process, which
// waits). A topic's entries thus still reach the Processor one at a time
// in offset order.
func (in *Input) work(q *workQueue) {
	defer in.wg.Done()
	var batch, waiting []*entry
	blocked := map[string]struct{}{}
	for {
		var ok bool
		batch, ok = q.popAll(in.quit, batch[:0])
		if !ok {
			return
		}
		fast := 0
		for i, e := range batch {
			batch[i] = nil
			if len(blocked) > 0 {
				if _, b := blocked[e.msg.Topic]; b {
					waiting = append(waiting, e)
					continue
				}
			}
			if in.skip(e) {
				continue
			}
			if in.proc.TryProcess(in.procCtx, e.msg, e.finish) {
				fast++
				continue
			}
			blocked[e.msg.Topic] = struct{}{}
			waiting = append(waiting, e)
		}
		for i, e := range waiting {
			waiting[i] = nil
			if in.skip(e) {
				continue
			}
			if in.proc.TryProcess(in.procCtx, e.msg, e.finish) {
				fast++
				continue
			}
			in.proc.Process(in.procCtx, e.msg, e.finish)
		}
		waiting = waiting[:0]
		clear(blocked)
		if fast > 0 {
			in.m.inline.Add(float64(fast))
		}
	}
}

// skip settles e undone when its partition is gone without a commit or
// the shutdown deadline passed: not processed, not committed; whoever
// holds the partition next gets it.
func (in *Input) skip(e *entry) bool {
	if e.p.lost.Load() || in.procCtx.Err() != nil {
		e.settle(false)
		return true
	}
	return false
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
}

// pushAll appends es (in order) and wakes the worker.
func (q *workQueue) pushAll(es []*entry) {
	q.mu.Lock()
	q.items = append(q.items, es...)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// popAll waits for entries and returns all of them, in order, swapping
// buf (emptied) in as the queue's next storage; ok=false once quit is
// closed.
func (q *workQueue) popAll(quit <-chan struct{}, buf []*entry) ([]*entry, bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			out := q.items
			q.items = buf[:0]
			q.mu.Unlock()
			return out, true
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-quit:
			return nil, false
		}
	}
}
