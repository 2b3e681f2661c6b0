package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// kafkaTarget is where a Kafka drain reads: the brokers, the backlog's
// topic, and the broker's process when it is a local one of its own
// (0: in this process, or not known).
type kafkaTarget struct {
	brokers   []string
	topic     string
	brokerPID int
}

// brokerCPU is the broker process's CPU time so far (0 without one).
func (t kafkaTarget) brokerCPU() time.Duration {
	if t.brokerPID <= 0 {
		return 0
	}
	return procCPU(t.brokerPID)
}

// perMsgUS is d over n records in µs (0 without a broker process).
func (t kafkaTarget) perMsgUS(d time.Duration, n int) float64 {
	if t.brokerPID <= 0 || n <= 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(n)
}

// cpuScope says what a run's CPU per record covers, for the progress line.
func cpuScope(kfakeInProcess bool, brokerUS float64) string {
	switch {
	case kfakeInProcess:
		return "kfake in process included"
	case brokerUS > 0:
		return fmt.Sprintf("the broker's %.1f apart", brokerUS)
	}
	return "the broker's apart"
}

// createTopic creates topic with the given partitions (replication factor:
// the cluster's default) and waits until a producer can find its leaders.
func createTopic(ctx context.Context, brokers []string, topic string, partitions int) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = topic, int32(partitions), -1
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 30_000
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	resp, err := req.RequestWith(cctx, cl)
	if err != nil {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	for _, t := range resp.Topics {
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			return fmt.Errorf("create topic %s: %w", topic, err)
		}
	}
	return nil
}

// deleteTopic deletes topic, best effort: the bench's result stands
// whether or not the cluster lets it go.
func deleteTopic(brokers []string, topic string) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := kmsg.NewPtrDeleteTopicsRequest()
	req.TopicNames = []string{topic}
	rt := kmsg.NewDeleteTopicsRequestTopic()
	rt.Topic = &topic
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 30_000
	_, _ = req.RequestWith(ctx, cl)
}

// ServeKfake serves an empty kfake (one broker, topics created on request)
// on addr's port of 127.0.0.1 until ctx ends, after writing one line to w
// that names the address and this process: the Kafka drain's broker in a
// process of its own (KafkaDrainOptions.Brokers and BrokerPID), which a
// script can pin to CPUs of its own with taskset.
func ServeKfake(ctx context.Context, addr string, w io.Writer) error {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("serve kfake: %w", err)
	}
	if host != "127.0.0.1" && host != "localhost" && host != "" {
		return errors.New("serve kfake: kfake listens on 127.0.0.1 only")
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port <= 0 || port > 65535 {
		return fmt.Errorf("serve kfake: port %q: want 1-65535", portText)
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port))
	if err != nil {
		return fmt.Errorf("serve kfake: %w", err)
	}
	defer c.Close()
	fmt.Fprintf(w, "kfake serving on %s (pid %d)\n", c.ListenAddrs()[0], os.Getpid())
	<-ctx.Done()
	return nil
}
