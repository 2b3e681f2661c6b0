package kafkainput

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/intake"
)

// sinkProc stands in for the pipeline: each message costs some CPU on the
// calling goroutine (work rounds of SHA-256 over the payload, a few µs,
// as decrypting and encoding a record does) and is done only once a
// "batch write" that started after it ends (a writer goroutine taking
// everything pending, then sleeping write, as the file sink's
// write+fsync).
type sinkProc struct {
	work  int
	write time.Duration
	n     atomic.Int64

	mu      sync.Mutex
	pending []func(error)
	wake    chan struct{}
	quit    chan struct{}
}

func newSinkProc(work int, write time.Duration) *sinkProc {
	p := &sinkProc{work: work, write: write, wake: make(chan struct{}, 1), quit: make(chan struct{})}
	go p.writer()
	return p
}

func (p *sinkProc) writer() {
	var batch []func(error)
	for {
		select {
		case <-p.wake:
		case <-p.quit:
			return
		}
		for {
			p.mu.Lock()
			batch, p.pending = p.pending, batch[:0]
			p.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			time.Sleep(p.write)
			for i, done := range batch {
				done(nil)
				batch[i] = nil
			}
			p.n.Add(int64(len(batch)))
		}
	}
}

func (p *sinkProc) Process(_ context.Context, m intake.Message, done func(error)) {
	sum := sha256.Sum256(m.Payload)
	for range p.work {
		sum = sha256.Sum256(sum[:])
	}
	p.mu.Lock()
	p.pending = append(p.pending, done)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *sinkProc) TryProcess(ctx context.Context, m intake.Message, done func(error)) bool {
	p.Process(ctx, m, done)
	return true
}

// BenchmarkDrainSink: the input draining a 12-partition backlog of
// 120,000 records (kfake, in process, 1,000 devices) into sinkProc (about
// 5 µs of CPU per record, batches written in 2 ms), for in-flight bounds
// of 1024 and 8192, timed from the first batch written. Run with
// -benchtime=1x and compare records/s across versions of the input and
// GOMAXPROCS.
func BenchmarkDrainSink(b *testing.B) {
	const parts, per = 12, 120000 / 12
	c := fakeCluster(b, parts)
	produce(b, c, parts, per, 1000/parts)
	total := int64(parts * per)
	for _, mif := range []int{1024, 8192} {
		b.Run(fmt.Sprintf("max-in-flight-%d", mif), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				p := newSinkProc(20, 2*time.Millisecond)
				in := newInput(b, c, p, func(o *Options) {
					o.Group = fmt.Sprintf("sink-%d-%d-%d", mif, i, time.Now().UnixNano())
					o.MaxInFlight = mif
					o.Workers = 256
					o.CommitInterval = time.Second
				})
				go in.Run(context.Background())
				// Timed from the first batch written: the group join is
				// not the input's speed.
				for p.n.Load() == 0 {
					time.Sleep(100 * time.Microsecond)
				}
				start, n0 := time.Now(), p.n.Load()
				for p.n.Load() < total {
					time.Sleep(time.Millisecond)
				}
				elapsed := time.Since(start)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if err := in.Shutdown(ctx); err != nil {
					b.Fatal(err)
				}
				cancel()
				close(p.quit)
				b.ReportMetric(float64(total-n0)/elapsed.Seconds(), "records/s")
			}
		})
	}
}
