package fieldpolicy

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/sink/kafka"
)

// newKafka returns a Kafka sink on an in-process cluster and a reader of
// every byte the topic holds: keys, values, header names and values.
func newKafka(t *testing.T) (sink.Sink, func() []byte) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "analytics"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	s, err := kafka.New(t.Context(), kafka.Config{Name: "analytics", Brokers: c.ListenAddrs(), Topic: "analytics", AllowPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	read := func() []byte {
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics("analytics"),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		var all []byte
		n := 0
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		for n < 1000 {
			fs := cl.PollFetches(ctx)
			if ctx.Err() != nil {
				t.Fatalf("read %d of 1000 records: %v", n, ctx.Err())
			}
			fs.EachRecord(func(r *kgo.Record) {
				n++
				all = append(append(all, r.Key...), r.Value...)
				for _, h := range r.Headers {
					all = append(append(all, h.Key...), h.Value...)
				}
			})
		}
		return all
	}
	return s, read
}
