package kafka

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// fakeCluster starts an in-process Kafka (kfake) holding topic with the
// given partitions, closed when t ends.
func fakeCluster(t testing.TB, topic string, partitions int32, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic)}, opts...)...)
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// held is one record as read back from the topic.
type held struct {
	Partition int32
	Key       string
	Value     []byte
	Headers   map[string]string
	HeaderSeq []string // header keys in order
}

// readTopic returns every record the topic holds now, partition by
// partition in offset order (partitions in ascending order), reading up to
// each partition's high watermark.
func readTopic(t testing.TB, brokers []string, topic string, opts ...kgo.Opt) []held {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	admin, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, opts...)...)
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	defer admin.Close()
	meta := kmsg.NewPtrMetadataRequest()
	mt := kmsg.NewMetadataRequestTopic()
	mt.Topic = kmsg.StringPtr(topic)
	meta.Topics = append(meta.Topics, mt)
	mresp, err := meta.RequestWith(ctx, admin)
	if err != nil || len(mresp.Topics) != 1 {
		t.Fatalf("metadata: %v", err)
	}
	req := kmsg.NewPtrListOffsetsRequest()
	lt := kmsg.NewListOffsetsRequestTopic()
	lt.Topic = topic
	for _, p := range mresp.Topics[0].Partitions {
		lp := kmsg.NewListOffsetsRequestTopicPartition()
		lp.Partition = p.Partition
		lp.Timestamp = -1 // latest: the high watermark
		lt.Partitions = append(lt.Partitions, lp)
	}
	req.Topics = append(req.Topics, lt)
	resp, err := req.RequestWith(ctx, admin)
	if err != nil {
		t.Fatalf("list offsets: %v", err)
	}
	hwm := map[int32]int64{}
	offsets := map[int32]kgo.Offset{}
	for _, rt := range resp.Topics {
		for _, rp := range rt.Partitions {
			if rp.Offset > 0 {
				hwm[rp.Partition] = rp.Offset
				offsets[rp.Partition] = kgo.NewOffset().AtStart()
			}
		}
	}
	if len(hwm) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets})}, opts...)...)
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	defer cl.Close()
	byPart := map[int32][]held{}
	left := len(hwm)
	for left > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s: %v", topic, ctx.Err())
		}
		fs.EachError(func(_ string, _ int32, err error) { t.Fatalf("fetch: %v", err) })
		fs.EachRecord(func(r *kgo.Record) {
			h := held{Partition: r.Partition, Key: string(r.Key), Value: r.Value, Headers: map[string]string{}}
			for _, hd := range r.Headers {
				h.Headers[hd.Key] = string(hd.Value)
				h.HeaderSeq = append(h.HeaderSeq, hd.Key)
			}
			byPart[r.Partition] = append(byPart[r.Partition], h)
			if r.Offset+1 == hwm[r.Partition] {
				left--
			}
		})
	}
	var out []held
	for p := range int32(len(mresp.Topics[0].Partitions)) {
		out = append(out, byPart[p]...)
	}
	return out
}
