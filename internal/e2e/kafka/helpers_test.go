package kafka_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/e2e/e2etest"
	"github.com/decryptd/decryptd/internal/fleet"
	"github.com/decryptd/decryptd/internal/testutil/daemonproc"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/recordfile"
)

// The topic the bridge writes and the group the replicas share, as the
// agreed configuration names them.
const (
	topic = "device-events"
	group = "decryptd"
	// topicHeader carries the device's MQTT topic (kafka.topic_header's
	// default).
	topicHeader = "mqtt_topic"
)

// startCluster starts an in-process Kafka of one broker on a 127.0.0.1 TCP
// port holding topic with the given partitions, closed when t ends.
func startCluster(t *testing.T, partitions int32) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// keys are the files every replica shares and the fleet that seals for
// them.
type keys struct {
	dir      string
	rootKey  string
	registry string
	fleet    *fleet.Fleet
}

// provisionFleet provisions n devices, a key each, with fleet.Bulk (dekctl
// provision's semantics) under a local root key into a file registry.
func provisionFleet(t *testing.T, n int) *keys {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	k := &keys{dir: dir, rootKey: e2etest.RootKeyPath(dir), registry: e2etest.RegistryPath(dir)}
	lp, dk := e2etest.LocalKeys(ctx, t, dir, "kafka-e2e-root")
	defer dk.Close()
	reqs, err := fleet.Requests(n, fleet.ProvisionOptions{Prefix: "dev-"})
	if err != nil {
		t.Fatal(err)
	}
	b := &fleet.Bulk{KMS: lp, Registry: dk.Registry, Audit: dk.Audit, Operator: "e2e-kafka"}
	creds, err := b.ProvisionMany(ctx, reqs)
	if err != nil {
		t.Fatalf("provision: %v", err)
	}
	if k.fleet, err = fleet.NewFleet(creds, ""); err != nil {
		t.Fatal(err)
	}
	return k
}

// produced is what the bridge wrote: the record id of every message, in
// the order made, and how many the broker acknowledged.
type produced struct {
	ids   []string
	acked atomic.Int64
}

// produce writes n messages to the topic as a bridge from MQTT does: the
// fleet's devices in turn (so each device's messages spread over the whole
// stream), value = the envelope v1 payload unchanged, key = the device id,
// header mqtt_topic = the device's MQTT topic; acks=all and idempotence
// (franz-go's defaults). Each message's record id is computed as decryptd
// computes it (the decryption core, the fleet resolving its own keys)
// before it is sent. It returns when the broker acknowledged every one.
func produce(ctx context.Context, brokers []string, k *keys, n int, seed uint64, p *produced) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.ProducerLinger(5*time.Millisecond), kgo.MaxBufferedRecords(20_000))
	if err != nil {
		return err
	}
	defer cl.Close()
	devices := k.fleet.Devices()
	var failed atomic.Value
	// Sealing and computing ids is the producer's cost (several times
	// more under the race detector): workers share it, each with the
	// devices w, w+workers, ... (len(devices) a multiple of workers), so
	// each device's messages stay in order.
	const workers = 4
	if len(devices)%workers != 0 {
		return fmt.Errorf("%d devices: want a multiple of %d", len(devices), workers)
	}
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			errs <- func() error {
				g, err := fleet.NewGenerator(devices, fleet.DefaultMix(), seed+uint64(w), nil)
				if err != nil {
					return err
				}
				dec, err := decrypt.New(k.fleet, decrypt.Options{})
				if err != nil {
					return err
				}
				for i := w; i < n; i += workers {
					d := devices[i%len(devices)]
					m, err := g.Next(d, time.Now().Unix())
					if err != nil {
						return err
					}
					rec, err := dec.Open(ctx, decrypt.Message{Topic: m.Topic, Payload: m.Payload})
					if err != nil {
						return fmt.Errorf("message %d does not open: %w", i, err)
					}
					p.ids[i] = rec.ID
					r := &kgo.Record{Key: []byte(d.ID), Value: m.Payload, Headers: []kgo.RecordHeader{{Key: topicHeader, Value: []byte(m.Topic)}}}
					cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
						if err != nil {
							failed.CompareAndSwap(nil, err)
							return
						}
						p.acked.Add(1)
					})
				}
				return nil
			}()
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			return err
		}
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	if err, _ := failed.Load().(error); err != nil {
		return fmt.Errorf("produce: %w", err)
	}
	return nil
}

// replicaFiles are the files one replica's configuration names: its ledger
// (a file sink of its own) besides e2etest's.
type replicaFiles struct {
	e2etest.Files
	Ledger string
}

// pgEnv names the variable holding the PostgreSQL DSN (it may carry the
// test role's password, which the sink takes only from the environment).
const pgEnv = "KAFKA_E2E_PG_DSN"

// writeConfig writes replica name's configuration file, as an operator
// would with the agreed Kafka input section: the group's brokers, group
// and topic, this replica's client id; the shared PostgreSQL table; a
// ledger file sink of its own (fsynced); the fleet's keys.
func (k *keys) writeConfig(t *testing.T, name string, brokers []string) replicaFiles {
	t.Helper()
	files := e2etest.NewFiles(t, k.dir, name)
	rf := replicaFiles{Files: files, Ledger: filepath.Join(files.Dir, "ledger.jsonl")}
	var in strings.Builder
	in.WriteString("input:\n  type: kafka\n")
	fmt.Fprintf(&in, "kafka:\n  brokers: [%s]\n  group: %s\n  topics: [%s]\n  client_id: %s\n  topic_header: %s\n  max_in_flight: 1024\n  allow_plaintext: true\n",
		strings.Join(quoteAll(brokers), ", "), group, topic, name, topicHeader)
	e2etest.WriteConfig(t, files, e2etest.Config{
		Input:    in.String(),
		KMS:      e2etest.LocalKMS(k.rootKey),
		Registry: k.registry,
		Sinks:    fmt.Sprintf("  - name: warehouse\n    type: postgres\n    dsn_env: %s\n", pgEnv) + e2etest.FileSink("ledger", rf.Ledger),
		Shutdown: "20s",
		ShowLog:  12 << 10,
	})
	return rf
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

// process is the decryptd binary run with `decryptd run --config F`.
type process struct {
	*daemonproc.Proc
	name  string
	files replicaFiles
	addr  string
}

// startProcess runs bin with the configuration, learns its HTTP address
// from its "serving" log line and waits until /readyz says ready.
func startProcess(t *testing.T, bin, name string, rf replicaFiles, env []string) *process {
	t.Helper()
	ctx := context.Background()
	dp, err := daemonproc.Start(ctx, bin, daemonproc.Options{Args: []string{"run", "--config", rf.Config}, Env: env, Log: rf.Log})
	if err != nil {
		t.Fatal(err)
	}
	p := &process{Proc: dp, name: name, files: rf}
	t.Cleanup(p.Kill)
	if p.addr, err = p.WaitServing(ctx, 60*time.Second); err != nil {
		t.Fatalf("%s %v; log:\n%s", name, err, mosquittotest.Tail(rf.Log, 8<<10))
	}
	if err := daemonproc.WaitReady(ctx, p.addr, 60*time.Second, 50*time.Millisecond, p.Exited); err != nil {
		t.Fatalf("%s %v (%v); log:\n%s", name, err, p.Err(), mosquittotest.Tail(rf.Log, 8<<10))
	}
	return p
}

// metrics is one scrape of a daemon's /metrics (e2etest.Metrics).
type metrics = e2etest.Metrics

func scrape(addr string) (metrics, error) { return e2etest.Scrape(context.Background(), addr) }

// readLedger reads a replica's file sink (its ledger of deliveries).
func readLedger(path string) (recordfile.Lines, error) { return recordfile.Read(path) }

// tableCounts returns the records table's rows and distinct ids.
func tableCounts(ctx context.Context, conn *pgx.Conn) (rows, distinct int, err error) {
	err = conn.QueryRow(ctx, "SELECT count(*), count(DISTINCT id) FROM decryptd_records").Scan(&rows, &distinct)
	if err != nil && strings.Contains(err.Error(), "does not exist") {
		return 0, 0, nil // not created yet: no replica has started its sink
	}
	return rows, distinct, err
}

// tableIDs returns every id in the records table.
func tableIDs(ctx context.Context, conn *pgx.Conn) (map[string]int, error) {
	r, err := conn.Query(ctx, "SELECT id FROM decryptd_records")
	if err != nil {
		return nil, err
	}
	got, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	return e2etest.Counts(got), nil
}

// groupState describes the consumer group as the coordinator sees it: its
// state, and the partitions of the topic assigned to each member by client
// id.
type groupState struct {
	state    string
	assigned map[string][]int32 // client id -> partitions
}

func (g groupState) String() string {
	return fmt.Sprintf("%s %v", g.state, g.assigned)
}

// partitions is how many partitions the members hold between them.
func (g groupState) partitions() int {
	n := 0
	for _, ps := range g.assigned {
		n += len(ps)
	}
	return n
}

// describeGroup asks the coordinator (DescribeGroups) and decodes each
// member's consumer-protocol assignment.
func describeGroup(ctx context.Context, admin *kgo.Client) (groupState, error) {
	req := kmsg.NewPtrDescribeGroupsRequest()
	req.Groups = []string{group}
	resp, err := req.RequestWith(ctx, admin)
	if err != nil {
		return groupState{}, err
	}
	if len(resp.Groups) != 1 {
		return groupState{}, fmt.Errorf("describe groups: %d groups", len(resp.Groups))
	}
	g := resp.Groups[0]
	if err := kerr.ErrorForCode(g.ErrorCode); err != nil {
		return groupState{}, err
	}
	gs := groupState{state: g.State, assigned: map[string][]int32{}}
	for _, m := range g.Members {
		var a kmsg.ConsumerMemberAssignment
		if len(m.MemberAssignment) > 0 {
			if err := a.ReadFrom(m.MemberAssignment); err != nil {
				return groupState{}, fmt.Errorf("member %s assignment: %w", m.ClientID, err)
			}
		}
		ps := []int32{}
		for _, t := range a.Topics {
			if t.Topic == topic {
				ps = append(ps, t.Partitions...)
			}
		}
		gs.assigned[m.ClientID] = append(gs.assigned[m.ClientID], ps...)
	}
	return gs, nil
}
