package deploytest

import (
	"context"
	"crypto/cipher"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/util/teststorage"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/seal"
)

// The Kafka run: shorter than the MQTT one (no rotation to wait for),
// with the second replica joining a third of the way in.
const (
	kafkaRunFor      = 30 * time.Second
	kafkaSecondAfter = 10 * time.Second
	kafkaTopic       = "device-events"
	kafkaPartitions  = 3
)

// runKafkaDaemon runs two replicas of the daemon with input.type kafka
// (the real kafkainput registration, through daemon.New) against an
// in-process Kafka (kfake, 3 partitions) for kafkaRunFor: decryptd-0
// alone first, then decryptd-1 joins the group (a cooperative rebalance:
// partitions revoked from the first, assigned to the second, which
// rebuilds their replay windows from the log). A bridge's layout is
// produced all along (value the payload, key the device id, header
// mqtt_topic): good messages from five devices, and in turn an
// auth_failed, an unknown_key, a topic_mismatch, a malformed record, an
// exact repeat (a duplicate) and a record without a topic (unmapped).
// Both replicas are scraped every scrapeEvery into one TSDB, as
// instance decryptd-0 and decryptd-1; run.scrapes are decryptd-0's.
func runKafkaDaemon(t *testing.T) *liveRun {
	t.Helper()
	ft := t
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(kafkaPartitions, kafkaTopic))
	check(ft, err)
	defer kc.Close()
	brokers := kc.ListenAddrs()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), kafkaRunFor+60*time.Second)
	defer cancel()

	ops, aw, regPath := openKeys(ctx, ft, dir, nil)
	var devs []*device
	for i := range 5 {
		devs = append(devs, provisionDevice(ctx, ft, ops, fmt.Sprintf("meter-%d", i+1)))
	}
	aw.Close()

	// Each replica's configuration as an operator writes it.
	yml := func(n int) string {
		rd := filepath.Join(dir, fmt.Sprintf("decryptd-%d", n))
		return fmt.Sprintf(`
input: {type: kafka}
kafka:
  brokers: [%q]
  group: decryptd
  topics: [%s]
  client_id: decryptd-%d
  allow_plaintext: true
  commit_interval: 200ms
kms:
  provider: local
  local: {root_key_file: %q}
registry: {driver: file, path: %q}
sinks:
  - {name: records, type: file, path: %q, fsync: true}
dead_letter: {type: file, path: %q, fsync: true}
metrics: {listen: "127.0.0.1:0"}
audit: {path: %q}
shutdown_timeout: 10s
`, brokers[0], kafkaTopic, n, filepath.Join(dir, "root-key.json"), regPath,
			rd+"-records.jsonl", rd+"-dead-letter.jsonl", rd+"-audit.log")
	}
	start := func(n int) (url string, stop func()) {
		cfg, err := config.Parse([]byte(yml(n)), nil)
		if err != nil {
			ft.Fatalf("configuration: %v\n%s", err, yml(n))
		}
		dctx, cancel := context.WithCancel(ctx)
		d, err := daemon.New(dctx, daemon.Options{Config: cfg, Registry: prometheus.NewRegistry(), Version: "deploytest"})
		if err != nil {
			cancel()
			ft.Fatal(err)
		}
		runErr := make(chan error, 1)
		go func() { runErr <- d.Run(dctx) }()
		for deadline := time.Now().Add(20 * time.Second); !d.Ready(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				cancel()
				ft.Fatalf("decryptd-%d not ready within 20 s", n)
			}
		}
		return "http://" + d.Addr().String() + "/metrics", func() {
			cancel()
			select {
			case err := <-runErr:
				check(ft, err)
			case <-time.After(30 * time.Second):
				ft.Fatalf("decryptd-%d did not stop within 30 s", n)
			}
		}
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(kafkaTopic))
	check(ft, err)
	defer cl.Close()
	produce := func(key, topic string, value []byte) {
		r := &kgo.Record{Key: []byte(key), Value: value}
		if topic != "" {
			r.Headers = []kgo.RecordHeader{{Key: "mqtt_topic", Value: []byte(topic)}}
		}
		check(ft, cl.ProduceSync(ctx, r).FirstErr())
	}

	url0, stop0 := start(0)
	defer stop0()
	run := &liveRun{store: teststorage.New(t), start: time.Now()}
	t.Cleanup(func() { run.store.Close() })
	var url1 string
	tg0 := &target{store: run.store, instance: "decryptd-0"}
	tg1 := &target{store: run.store, instance: "decryptd-1"}
	scrapeNow := func() {
		body := get(ft, url0)
		at := time.Now()
		run.scrapes = append(run.scrapes, scrape{at: at, body: body})
		check(ft, tg0.appendScrape(at, body))
		if url1 != "" {
			check(ft, tg1.appendScrape(time.Now(), get(ft, url1)))
		}
	}

	wrong, err := seal.NewAEAD(make([]byte, 32))
	check(ft, err)
	ghost := &device{id: "ghost-1", keys: map[string]cipher.AEAD{"v1": wrong}, current: "v1"}
	var replayed []byte
	seq := 0
	next := time.Now()
	for tick := 0; time.Since(run.start) < kafkaRunFor; tick++ {
		if url1 == "" && time.Since(run.start) >= kafkaSecondAfter {
			var stop1 func()
			url1, stop1 = start(1)
			defer stop1()
		}
		for _, dv := range devs {
			produce(dv.id, topicOf(dv.id), dv.seal(ft, "", seq))
			seq++
		}
		switch tick % 6 {
		case 0:
			tampered := &device{id: devs[1].id, keys: map[string]cipher.AEAD{devs[1].currentVersion(): wrong}, current: devs[1].currentVersion()}
			produce(devs[1].id, topicOf(devs[1].id), tampered.seal(ft, "", seq)) // auth_failed
		case 1:
			produce(ghost.id, topicOf(ghost.id), ghost.seal(ft, "", seq)) // unknown_key
		case 2:
			produce(devs[2].id, topicOf(devs[2].id), devs[3].seal(ft, "", seq)) // topic_mismatch
		case 3:
			produce(devs[2].id, topicOf(devs[2].id), []byte(`{"not":"an envelope"}`)) // malformed
		case 4:
			if replayed == nil {
				replayed = devs[4].seal(ft, "", seq)
			}
			produce(devs[4].id, topicOf(devs[4].id), replayed) // a duplicate (cause repeat)
		case 5:
			produce(devs[0].id, "", devs[0].seal(ft, "", seq)) // no mqtt_topic header: unmapped
		}
		if time.Now().After(next) {
			scrapeNow()
			next = next.Add(scrapeEvery)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Let the last records finish and be committed.
	time.Sleep(2 * time.Second)
	scrapeNow()
	run.end = time.Now()
	if url1 == "" {
		ft.Fatal("the second replica never started")
	}
	return run
}
