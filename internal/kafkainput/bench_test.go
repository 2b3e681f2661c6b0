package kafkainput

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/decryptd/decryptd/internal/intake"
)

// nopProc finishes every message at once, on the caller's goroutine.
type nopProc struct{ n atomic.Int64 }

func (p *nopProc) Process(_ context.Context, _ intake.Message, done func(error)) {
	p.n.Add(1)
	done(nil)
}

func (p *nopProc) TryProcess(ctx context.Context, m intake.Message, done func(error)) bool {
	p.Process(ctx, m, done)
	return true
}

// BenchmarkDrain: the input draining a 12-partition backlog of 120,000
// records (kfake, in process) into a Processor that finishes at once,
// beside a bare franz-go group consumer draining the same backlog. Run
// with -benchtime=1x; compare the records/s of the two.
func BenchmarkDrain(b *testing.B) {
	const parts, per = 12, 120000 / 12
	c := fakeCluster(b, parts)
	produce(b, c, parts, per, 50)
	total := int64(parts * per)
	b.Run("bare-franz-go", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumerGroup("bare-"+time.Now().String()),
				kgo.ConsumeTopics(testTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
				kgo.Balancers(kgo.CooperativeStickyBalancer()), kgo.DisableAutoCommit())
			if err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			var n int64
			for n < total {
				fs := cl.PollRecords(context.Background(), 1024)
				n += int64(fs.NumRecords())
			}
			elapsed := time.Since(start)
			if err := cl.CommitUncommittedOffsets(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(total)/elapsed.Seconds(), "records/s")
			cl.Close()
		}
	})
	b.Run("kafkainput", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			p := &nopProc{}
			in := newInput(b, c, p, func(o *Options) {
				o.Group = "input-" + time.Now().String()
				o.MaxInFlight = 1024
				o.CommitInterval = time.Second
			})
			start := time.Now()
			go in.Run(context.Background())
			for p.n.Load() < total {
				time.Sleep(time.Millisecond)
			}
			elapsed := time.Since(start)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := in.Shutdown(ctx); err != nil {
				b.Fatal(err)
			}
			cancel()
			b.ReportMetric(float64(total)/elapsed.Seconds(), "records/s")
		}
	})
}
