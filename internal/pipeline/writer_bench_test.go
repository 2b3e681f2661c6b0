package pipeline

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/sink"
)

// nopOpener is never called: BenchmarkWriterFile hands records over as a
// decrypting worker would after Open.
type nopOpener struct{}

func (nopOpener) Open(context.Context, decrypt.Message) (decrypt.Record, error) {
	return decrypt.Record{}, nil
}
func (nopOpener) TryOpen(decrypt.Message) (decrypt.Record, error) { return decrypt.Record{}, nil }
func (nopOpener) Forget(decrypt.Record)                           {}

type nopSink struct{ name string }

func (s nopSink) Name() string                               { return s.name }
func (s nopSink) Write(context.Context, []sink.Record) error { return nil }
func (s nopSink) Flush(context.Context) error                { return nil }
func (s nopSink) Close(context.Context) error                { return nil }

// BenchmarkWriterFile feeds decrypted records (no decryption: the workers'
// side is only deliver, the encoding) from every P, up to 4096 in flight,
// through the pipeline to a real file sink without fsync, so that the
// writer goroutine is the bottleneck and its batches are as large as under
// load on many cores. The writer's CPU per record (line building, the
// write, and whatever settling it does itself) caps a replica whatever the
// cores; measure it from a profile, by the writer's label:
//
//	go test -run XXX -bench WriterFile -benchtime 2000000x -cpuprofile cpu.out ./internal/pipeline/
//	go tool pprof -tagfocus goroutine=writer -top cpu.out | sed -n 6p   (total / 2e6 records)
//
// recs/write is the records per sink write.
//
// Sub-benchmarks: natural, the default (no Linger: batches are what
// gathered during the previous write, which on 2 CPUs varies from run to
// run); batch_1024, a Linger long enough that every batch is MaxBatch
// (1024) records, as under load on many cores: its figure is the one to
// compare between runs.
func BenchmarkWriterFile(b *testing.B) {
	b.Run("natural", func(b *testing.B) { benchWriterFile(b, 0) })
	b.Run("batch_1024", func(b *testing.B) { benchWriterFile(b, time.Second) })
}

func benchWriterFile(b *testing.B, linger time.Duration) {
	fs, err := sink.NewFile(sink.FileOptions{Name: "file", Path: b.TempDir() + "/out.jsonl", Fsync: sink.FsyncNever, MaxBytes: 256 << 20, Keep: 1})
	if err != nil {
		b.Fatal(err)
	}
	p, err := New(Options{Opener: nopOpener{}, Sinks: []sink.Sink{fs}, Linger: linger, DeadLetter: nopSink{"dead_letter"}})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close(context.Background())
	slots := make(chan struct{}, 4096)
	done := func(err error) {
		if err != nil {
			b.Error(err)
		}
		<-slots
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		data := []byte(`{"hr":72,"spo2":98,"temp":36.6,"steps":1234,"battery":87}`)
		meta := []byte(`{"fw":"1.2.3"}`)
		d0, m0 := append([]byte(nil), data...), append([]byte(nil), meta...)
		i := 0
		for pb.Next() {
			i++
			slots <- struct{}{}
			copy(data, d0)
			copy(meta, m0)
			rec := decrypt.Record{ID: "r" + strconv.Itoa(i), DeviceID: "dev-" + strconv.Itoa(i%1000), Timestamp: 1700000000,
				KeyID: "k1", KeyVersion: "3", Topic: "devices/x/telemetry", Data: data, Metadata: meta}
			d := p.begin(ctx, decrypt.Message{Topic: rec.Topic}, done, nil)
			p.deliver(d, rec)
		}
	})
	for range cap(slots) {
		slots <- struct{}{}
	}
	b.StopTimer()
	var dm dto.Metric
	if err := p.m.sinkBatch.WithLabelValues("file").(prometheus.Histogram).Write(&dm); err != nil {
		b.Fatal(err)
	}
	if w := dm.GetHistogram().GetSampleCount(); w > 0 {
		b.ReportMetric(dm.GetHistogram().GetSampleSum()/float64(w), "recs/write")
	}
}
