package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/testutil/vectors"
)

const kafkaTopic = "device-events"

func kafkaConfig(t *testing.T, dir string, brokers []string) *config.Config {
	t.Helper()
	on := true
	cfg := config.Default()
	cfg.Input.Type = config.InputKafka
	cfg.Kafka.Brokers = brokers
	cfg.Kafka.Topics = []string{kafkaTopic}
	cfg.Kafka.AllowPlaintext = true
	cfg.Kafka.CommitInterval = 50 * time.Millisecond
	cfg.KMS = config.KMS{Provider: config.ProviderLocal, Local: config.LocalKMS{RootKeyFile: filepath.Join(dir, "root-key.json")}}
	cfg.Registry = config.Registry{Driver: config.DriverFile, Path: filepath.Join(dir, "registry.json")}
	cfg.Sinks = []config.Sink{{Name: "records", Type: config.SinkFile, Config: &sink.FileConfig{Path: filepath.Join(dir, "records.jsonl"),
		MaxBytes: config.DefaultSinkMaxBytes, Keep: config.DefaultSinkKeep, Fsync: &on}}}
	cfg.DeadLetter = config.DeadLetter{Type: config.SinkFile, Path: filepath.Join(dir, "dead-letter.jsonl"), Fsync: &on}
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Audit.Path = filepath.Join(dir, "audit.log")
	cfg.ShutdownTimeout = 10 * time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startDaemon runs a daemon on cfg and waits for /readyz; the returned
// stop ends it and checks Run's error.
func startDaemon(t *testing.T, cfg *config.Config) (base string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.New(ctx, daemon.Options{Config: cfg, Registry: prometheus.NewRegistry(), Version: "test"})
	if err != nil {
		cancel()
		t.Fatalf("daemon.New: %v", err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(ctx) }()
	base = "http://" + d.Addr().String()
	waitHTTP(t, 20*time.Second, "/readyz 200", func() bool { code, _ := httpGet(t, base+"/readyz"); return code == http.StatusOK })
	return base, func() {
		cancel()
		select {
		case err := <-runErr:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Run did not return within 20 s of the context ending")
		}
	}
}

func waitHTTP(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: no %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// produceCases writes the cases, in order, to partition 0: value the
// message unchanged, key the device id, header mqtt_topic the topic (the
// layout docs/kafka-input.md agrees with bridges).
func produceCases(t *testing.T, brokers []string, cases []vectors.Case) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(kafkaTopic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	tp, _ := intake.ParseTopicPattern(config.DefaultTopicPattern)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, c := range cases {
		dev, _ := tp.DeviceID(c.Topic)
		r := &kgo.Record{Partition: 0, Key: []byte(dev), Value: []byte(c.Message),
			Headers: []kgo.RecordHeader{{Key: "mqtt_topic", Value: []byte(c.Topic)}}}
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatalf("produce %s: %v", c.Name, err)
		}
	}
}

func metricsPage(t *testing.T, base string) string {
	_, page := httpGet(t, base+"/metrics")
	return page
}

// TestDaemonVectorsKafka runs the whole daemon with the Kafka input (an
// in-process Kafka, kfake, 3 partitions): every spec vector, produced in
// order with the agreed layout, gives its expected record or dead-letter
// reason, the exact repeat is a duplicate (amendment 1), and the
// partition is committed to its end. Then a second daemon (a fresh
// process's replay window) takes the group over: the exact repeat sent
// once more is still a duplicate, because the new holder rebuilt the
// partition's window from the log.
func TestDaemonVectorsKafka(t *testing.T) {
	v := vectors.Load(t)
	cases := v.Cases
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, kafkaTopic))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	brokers := kc.ListenAddrs()
	dir := t.TempDir()
	setupKeys(t, dir, v)
	cfg := kafkaConfig(t, dir, brokers)
	base, stop := startDaemon(t, cfg)

	produceCases(t, brokers, cases)
	wantOK, wantDup, wantFail := 0, 0, map[string]int{}
	var repeated vectors.Case // the message the duplicate case repeats
	for i, c := range cases {
		switch {
		case c.Expect.OK:
			wantOK++
		case c.Expect.Duplicate:
			wantDup++
			repeated = cases[i-1]
		default:
			wantFail[c.Expect.Reason]++
		}
	}
	nFail := len(cases) - wantOK - wantDup
	recPath, dlPath := cfg.Sinks[0].Config.(*sink.FileConfig).Path, cfg.DeadLetter.Path
	waitHTTP(t, 30*time.Second, "every record and dead letter", func() bool {
		return len(readLines(t, recPath)) >= wantOK && len(readLines(t, dlPath)) >= nFail
	})
	dupLine := func(n int) string { return fmt.Sprintf(`decryptd_duplicates_total{cause="repeat"} %d`, n) }
	waitHTTP(t, 20*time.Second, dupLine(wantDup), func() bool { return strings.Contains(metricsPage(t, base), dupLine(wantDup)) })
	committedLine := fmt.Sprintf(`decryptd_kafka_committed_offset{partition="0",topic="%s"} %d`, kafkaTopic, len(cases))
	waitHTTP(t, 20*time.Second, committedLine, func() bool { return strings.Contains(metricsPage(t, base), committedLine) })
	page := metricsPage(t, base)
	for reason, n := range wantFail {
		line := fmt.Sprintf(`decryptd_decrypt_failures_total{reason=%q} %d`, reason, n)
		if !strings.Contains(page, line) {
			t.Errorf("/metrics lacks %s", line)
		}
	}
	for _, line := range []string{
		fmt.Sprintf(`decryptd_records_delivered_total{sink="records"} %d`, wantOK),
		`decryptd_duplicates_total{cause="redelivery"} 0`,
		fmt.Sprintf(`decryptd_kafka_records_received_total %d`, len(cases)),
		`decryptd_kafka_records_unmapped_total 0`,
		fmt.Sprintf(`decryptd_kafka_partition_lag{partition="0",topic="%s"} 0`, kafkaTopic),
		`decryptd_inflight_messages 0`,
		`decryptd_input_info{input="kafka"} 1`,
	} {
		if !strings.Contains(page, line) {
			t.Errorf("/metrics lacks %s", line)
		}
	}

	checkVectorOutputs(t, cases, recPath, dlPath)
	stop()

	// A new replica with an empty window takes the partitions over.
	cfg2 := *cfg
	base2, stop2 := startDaemon(t, &cfg2)
	defer stop2()
	produceCases(t, brokers, []vectors.Case{repeated})
	waitHTTP(t, 20*time.Second, "the repeat after the takeover counted a duplicate", func() bool {
		return strings.Contains(metricsPage(t, base2), dupLine(1))
	})
	page = metricsPage(t, base2)
	if !strings.Contains(page, "decryptd_kafka_replay_rebuild_records_total ") || strings.Contains(page, "decryptd_kafka_replay_rebuild_records_total 0\n") {
		t.Error("no records read back into the replay window")
	}
	if got := len(readLines(t, recPath)); got != wantOK {
		t.Errorf("%d records after the takeover, want %d (the repeat delivered again)", got, wantOK)
	}
}

// checkVectorOutputs: each case's record (by id) or dead letter (by
// payload, reason and topic, naming its Kafka record), each written once;
// the exact repeat leaves neither.
func checkVectorOutputs(t *testing.T, cases []vectors.Case, recPath, dlPath string) {
	t.Helper()
	recordCount := map[string]int{}
	recordLines := map[string][]byte{}
	for _, l := range readLines(t, recPath) {
		var r struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatalf("record line is not JSON: %v", err)
		}
		recordCount[r.ID]++
		recordLines[r.ID] = l
	}
	dlData, err := os.ReadFile(dlPath)
	if err != nil {
		t.Fatal(err)
	}
	dls := map[string][]sink.DeadLetter{}
	for dl, err := range sink.ReadDeadLetters(bytes.NewReader(dlData)) {
		if err != nil {
			t.Fatal(err)
		}
		dls[string(dl.Payload)] = append(dls[string(dl.Payload)], dl)
	}
	for i, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			switch {
			case c.Expect.Duplicate:
				if len(dls[c.Message]) != 0 {
					t.Fatal("an exact repeat was dead-lettered")
				}
				var id string
				_ = json.Unmarshal(cases[i-1].Expect.Record["id"], &id)
				if recordCount[id] != 1 {
					t.Fatalf("the repeated message's record written %d times, want once", recordCount[id])
				}
			case !c.Expect.OK:
				got := dls[c.Message]
				if len(got) != 1 || got[0].Reason != c.Expect.Reason || got[0].Topic != c.Topic {
					t.Fatalf("dead letters %+v; want one, reason %q topic %q", got, c.Expect.Reason, c.Topic)
				}
				// produceCases writes case i at partition 0, offset i.
				if pos := (intake.LogPosition{Topic: kafkaTopic, Partition: 0, Offset: int64(i)}); got[0].Source != "kafka" || got[0].Position != pos {
					t.Fatalf("dead letter names input %q, record %+v; want kafka, %+v", got[0].Source, got[0].Position, pos)
				}
			default:
				var id string
				if err := json.Unmarshal(c.Expect.Record["id"], &id); err != nil {
					t.Fatal(err)
				}
				if recordCount[id] != 1 {
					t.Fatalf("record %s written %d times, want once", id, recordCount[id])
				}
				vectors.CheckRecord(t, recordLines[id], c.Expect)
			}
		})
	}
}
