package bench

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/decryptd/decryptd/internal/config"
)

// The Kafka drain's daemon configuration is one decryptd accepts: the
// agreed kafka input section, the drain's sinks.
func TestKafkaDaemonConfigLoads(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	text := kafkaDaemonConfig(dir, []string{"127.0.0.1:9092"}, kafkaTopic, "bench-decryptd-1", 1024, filepath.Join(dir, "root.json"), filepath.Join(dir, "registry.json"))
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	if cfg.Input.Type != config.InputKafka || cfg.Kafka.Group != "bench-decryptd-1" || cfg.Kafka.Topics[0] != kafkaTopic || cfg.Kafka.MaxInFlight != 1024 {
		t.Fatalf("loaded %+v %+v", cfg.Input, cfg.Kafka)
	}
}

// TestKafkaDrainSmall runs the Kafka drain on a tiny backlog: both sides
// drain every record, decryptd dead-letters none and unwraps each key
// once.
func TestKafkaDrainSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := KafkaDrain(ctx, KafkaDrainOptions{Dir: t.TempDir(), Messages: 2000, Devices: 20, Partitions: 4, Rounds: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Runs) != 2 || res.Runs[0].Side != "bare" || res.Runs[1].Side != "decryptd" {
		t.Fatalf("runs %+v", res.Runs)
	}
	d := res.Runs[1]
	if d.Delivered < 2000 || d.DeadLetters != 0 || d.KMSUnwraps != uint64(res.DistinctKeys) {
		t.Fatalf("decryptd run %+v, want 2000 delivered, none dead-lettered, %d unwraps", d, res.DistinctKeys)
	}
	if d.KeysSeconds <= 0 || d.KeysSeconds > d.Seconds {
		t.Errorf("keys loaded after %v s of a %v s drain", d.KeysSeconds, d.Seconds)
	}
	if res.Broker != "kfake in process" || res.Topic != kafkaTopic || d.BrokerCPUPerMsgUS != 0 {
		t.Errorf("broker %q topic %q broker CPU %v: want kfake in process, %s, none apart", res.Broker, res.Topic, d.BrokerCPUPerMsgUS, kafkaTopic)
	}
	if res.Ratio <= 0 || res.BareMedian <= 0 {
		t.Fatalf("ratio %v of %v", res.Ratio, res.BareMedian)
	}
}

// TestKafkaDrainExternalBroker runs the Kafka drain against a broker it
// does not start (ServeKfake, as `decryptd-bench -serve-kfake` runs it in a
// process of its own): the bench creates a topic of its own there, both
// sides drain every record from it, the broker's CPU is reported apart,
// and the topic is gone at the end.
func TestKafkaDrainExternalBroker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	sctx, stop := context.WithCancel(ctx)
	banner, bannerW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer banner.Close()
	served := make(chan error, 1)
	go func() {
		served <- ServeKfake(sctx, addr, bannerW)
		bannerW.Close() // ends the read below if ServeKfake fails first
	}()
	defer func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("ServeKfake: %v", err)
		}
	}()
	if line, _ := bufio.NewReader(banner).ReadString('\n'); !strings.HasPrefix(line, "kfake serving on "+addr) {
		t.Fatalf("ServeKfake wrote %q", line)
	}

	// 6,000 records: decryptd's run then takes well over one 10 ms tick
	// of CPU, which the broker CPU check below needs.
	res, err := KafkaDrain(ctx, KafkaDrainOptions{Dir: t.TempDir(), Messages: 6000, Devices: 20, Partitions: 4, Rounds: 1,
		Brokers: []string{addr}, BrokerPID: os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	res.WriteSummary(testWriter{t})
	if res.Broker != addr || !strings.HasPrefix(res.Topic, "decryptd-bench-") {
		t.Fatalf("broker %q topic %q", res.Broker, res.Topic)
	}
	if len(res.Runs) != 2 || res.Runs[1].Delivered < 6000 || res.Runs[1].DeadLetters != 0 {
		t.Fatalf("runs %+v", res.Runs)
	}
	// The "broker" is this process here, so its CPU is at least the
	// drainer's own: tens of ms for decryptd's run (≈ 8 µs a record), which /proc's 10 ms
	// ticks see (the bare run may take less than one).
	if d := res.Runs[1]; d.BrokerCPUPerMsgUS <= 0 {
		t.Errorf("decryptd: broker CPU per record %v", d.BrokerCPUPerMsgUS)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrMetadataRequest()
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range resp.Topics {
		if tp.Topic != nil && *tp.Topic == res.Topic {
			t.Fatalf("topic %s still there after the drain", res.Topic)
		}
	}
}

// TestServeKfakeRefuses: only a 127.0.0.1 port is served.
func TestServeKfakeRefuses(t *testing.T) {
	for _, addr := range []string{"10.0.0.1:9092", "127.0.0.1:0", "127.0.0.1:x", "9092"} {
		if err := ServeKfake(context.Background(), addr, io.Discard); err == nil {
			t.Errorf("ServeKfake(%q) served", addr)
		}
	}
}

// testWriter writes to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
