package pipeline_test

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/sink"
)

// slowSink costs a fixed time per Write, like an fsync, whatever the batch
// size.
type slowSink struct {
	name string
	cost time.Duration
}

func (s slowSink) Name() string { return s.name }
func (s slowSink) Write(ctx context.Context, batch []sink.Record) error {
	time.Sleep(s.cost)
	return nil
}
func (s slowSink) Flush(context.Context) error { return nil }
func (s slowSink) Close(context.Context) error { return nil }

// BenchmarkProcess measures messages through a sink whose every Write
// costs 1ms (an fsync), with 64 concurrent callers (the consumer's
// workers). max_batch_1 is what writing one record per Write would give;
// compare the two in one run.
func BenchmarkProcess(b *testing.B) {
	for _, maxBatch := range []int{1, pipeline.DefaultMaxBatch} {
		b.Run(fmt.Sprintf("max_batch_%d", maxBatch), func(b *testing.B) {
			p, err := pipeline.New(pipeline.Options{
				Opener:     newOpener(),
				Sinks:      []sink.Sink{slowSink{"file", time.Millisecond}},
				DeadLetter: slowSink{"dead_letter", time.Millisecond},
				MaxBatch:   maxBatch,
			})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close(context.Background())
			var n atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(64 / max(1, testingProcs()))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					m := intake.Message{Topic: "t", Payload: []byte(fmt.Sprintf("ok:r%d", i))}
					if err := handle(p, context.Background(), m); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func testingProcs() int { return runtime.GOMAXPROCS(0) }

// countSink costs nothing and counts its Writes.
type countSink struct {
	name   string
	writes *atomic.Int64
}

func (s countSink) Name() string { return s.name }
func (s countSink) Write(ctx context.Context, batch []sink.Record) error {
	s.writes.Add(1)
	return nil
}
func (s countSink) Flush(context.Context) error { return nil }
func (s countSink) Close(context.Context) error { return nil }

// BenchmarkProcessFastSink hands messages over from every P at once, up to
// 1024 in flight, to a sink that costs nothing: the pipeline's own cost per
// message, and writes/op, the sink Writes per message (how many records
// each writer wake-up takes; compare -cpu 2,16).
func BenchmarkProcessFastSink(b *testing.B) {
	var writes atomic.Int64
	p, err := pipeline.New(pipeline.Options{
		Opener:     newOpener(),
		Sinks:      []sink.Sink{countSink{"file", &writes}},
		DeadLetter: countSink{"dead_letter", &atomic.Int64{}},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close(context.Background())
	slots := make(chan struct{}, 1024)
	var n atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			slots <- struct{}{}
			m := intake.Message{Topic: "t", Payload: []byte("ok:r" + strconv.FormatInt(i, 10))}
			p.Process(context.Background(), m, func(err error) {
				if err != nil {
					b.Error(err)
				}
				<-slots
			})
		}
	})
	for range cap(slots) {
		slots <- struct{}{}
	}
	b.StopTimer()
	b.ReportMetric(float64(writes.Load())/float64(b.N), "writes/op")
}

// BenchmarkWriterPath is BenchmarkProcessFastSink through a real file sink
// (no fsync, so the disk does not dominate): the writer goroutine's work
// per record (line building, the write, settling each record) is what
// caps a replica on many cores. Measure its CPU per record with a profile:
//
//	go test -run XXX -bench WriterPath -benchtime 1000000x -cpuprofile cpu.out ./internal/pipeline/
//	go tool pprof -tagfocus goroutine=writer -top cpu.out   (total / 1e6 records)
func BenchmarkWriterPath(b *testing.B) {
	fs, err := sink.NewFile(sink.FileOptions{Name: "file", Path: b.TempDir() + "/out.jsonl", Fsync: sink.FsyncNever, MaxBytes: 256 << 20, Keep: 1})
	if err != nil {
		b.Fatal(err)
	}
	p, err := pipeline.New(pipeline.Options{
		Opener:     newOpener(),
		Sinks:      []sink.Sink{fs},
		DeadLetter: countSink{"dead_letter", &atomic.Int64{}},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close(context.Background())
	slots := make(chan struct{}, 4096)
	var n, settled atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			slots <- struct{}{}
			m := intake.Message{Topic: "t", Payload: []byte("ok:r" + strconv.FormatInt(i, 10))}
			p.Process(context.Background(), m, func(err error) {
				if err != nil {
					b.Error(err)
				}
				settled.Add(1)
				<-slots
			})
		}
	})
	for range cap(slots) {
		slots <- struct{}{}
	}
	b.StopTimer()
}
