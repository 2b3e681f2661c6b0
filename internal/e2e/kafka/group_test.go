package kafka_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/decryptd/decryptd/internal/e2e/e2etest"
	"github.com/decryptd/decryptd/internal/testutil/pgtest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// Three replicas in one consumer group drain a 12-partition topic of
// 100,000 messages into one PostgreSQL table; one is SIGKILLed mid-stream,
// the group gives its partitions to the other two, and it comes back (a
// second rebalance). Nothing is lost: the table holds exactly the produced
// record ids, rows = unique ids. What the killed replica had delivered but
// not committed comes again from the partitions' next owners under the
// same record id (the ledgers show each delivery; the duplicates are rows
// once), and each live replica's metrics agree with its ledger. kcat then
// reads the topic back and, joining the group, finds nothing uncommitted.
func TestGroupReplicaKilledRebalanceLosesNothing(t *testing.T) {
	const (
		partitions = 12
		devices    = 240
		messages   = 100_000
		victim     = "replica-b"
	)
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatalf("kcat not found (scripts/test-deps.sh installs it: apt-get install kcat): %v", err)
	}
	dsn := pgtest.New(t)
	// Built without the race detector whatever the test runs with: the
	// replicas are the product as shipped, and a race-built daemon would be
	// several times slower on a loaded CI machine.
	bin := e2etest.BuildDecryptd(t)
	cluster := startCluster(t, partitions)
	brokers := cluster.ListenAddrs()
	k := provisionFleet(t, devices)
	env := []string{pgEnv + "=" + dsn}
	admin, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	names := []string{"replica-a", "replica-b", "replica-c"}
	files := map[string]replicaFiles{}
	live := map[string]*process{}
	for _, n := range names {
		files[n] = k.writeConfig(t, n, brokers)
		live[n] = startProcess(t, bin, n, files[n], env)
	}
	waitGroup(t, admin, names, partitions, "the three replicas share the 12 partitions")

	p := &produced{ids: make([]string, messages)}
	t0 := time.Now()
	prodDone := make(chan error, 1)
	go func() { prodDone <- produce(t.Context(), brokers, k, messages, 15, p) }()

	wait.Detail(t, 3*time.Minute, "a third of the messages in the table", func() (bool, string) {
		rows, _, err := tableCounts(t.Context(), conn)
		if err != nil {
			return false, err.Error()
		}
		return rows >= messages/3, fmt.Sprintf("%d rows, %d produced", rows, p.acked.Load())
	})
	live[victim].Kill()
	killedAt := time.Now()
	atKill, _, err := tableCounts(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	if atKill >= messages {
		t.Fatalf("the kill came after the whole stream (%d rows)", atKill)
	}
	// The killed process's deliveries are what its ledger holds: its
	// metrics died with it.
	killedLedger, err := readLedger(files[victim].Ledger)
	if err != nil {
		t.Fatal(err)
	}
	delete(live, victim)
	survivors := []string{"replica-a", "replica-c"}
	// The coordinator notices the dead member when its session times out,
	// then the survivors take its partitions.
	waitGroup(t, admin, survivors, partitions, "the two survivors hold all 12 partitions")
	rebalance := time.Since(killedAt)

	live[victim] = startProcess(t, bin, victim, files[victim], env)
	waitGroup(t, admin, names, partitions, "the restarted replica is given partitions again")

	select {
	case err := <-prodDone:
		if err != nil {
			t.Fatalf("produce: %v", err)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("the producer did not finish within 3 minutes")
	}
	wait.Detail(t, 3*time.Minute, "every produced record in the table", func() (bool, string) {
		_, distinct, err := tableCounts(t.Context(), conn)
		if err != nil {
			return false, err.Error()
		}
		return distinct >= messages, fmt.Sprintf("%d of %d distinct ids", distinct, messages)
	})
	drained := time.Since(t0)

	// Each live replica's ledger holds what its metrics say it delivered
	// (the killed one's ledger: what it delivered in its first life too).
	var final map[string]metrics
	wait.Detail(t, time.Minute, "each live replica's ledger matches its metrics", func() (bool, string) {
		final = map[string]metrics{}
		var off []string
		for _, n := range names {
			m, err := scrape(live[n].addr)
			if err != nil {
				return false, fmt.Sprintf("%s: %v", n, err)
			}
			final[n] = m
			l, err := readLedger(files[n].Ledger)
			if err != nil {
				return false, err.Error()
			}
			lines := len(l.IDs)
			if n == victim {
				lines -= len(killedLedger.IDs)
			}
			if got := m.Sum("decryptd_records_delivered_total", "sink", "ledger"); got != float64(lines) {
				off = append(off, fmt.Sprintf("%s: metrics %v, ledger %d", n, got, lines))
			}
			if got := m.Sum("decryptd_records_delivered_total", "sink", "warehouse"); got != float64(lines) {
				off = append(off, fmt.Sprintf("%s: warehouse %v, ledger %d", n, got, lines))
			}
		}
		return len(off) == 0, strings.Join(off, "; ")
	})
	var delivered, duplicates, deadLetters, redelivered float64
	for _, n := range names {
		delivered += final[n].Sum("decryptd_records_delivered_total", "sink", "ledger")
		duplicates += final[n].Sum("decryptd_duplicates_total")
		deadLetters += final[n].Sum("decryptd_dead_letters_total")
		redelivered += final[n].Sum("decryptd_kafka_records_redelivered_total")
	}
	delivered += float64(len(killedLedger.IDs))

	// A graceful stop of all three: each finishes and commits what it holds.
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := live[n].Terminate(45 * time.Second); err != nil {
				t.Errorf("%s: graceful stop: %v", n, err)
			}
		}()
	}
	wg.Wait()

	// Nothing lost, nothing made up: rows = unique ids = the produced ids.
	rows, distinct, err := tableCounts(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	have, err := tableIDs(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	want := e2etest.Counts(p.ids)
	if len(want) != messages {
		t.Fatalf("the producer made %d distinct record ids for %d messages", len(want), messages)
	}
	var missing, unknown int
	for id := range want {
		if have[id] == 0 {
			missing++
		}
	}
	for id := range have {
		if want[id] == 0 {
			unknown++
		}
	}
	if rows != messages || distinct != messages || missing != 0 || unknown != 0 {
		t.Fatalf("table: %d rows, %d distinct ids, %d produced ids missing, %d rows never produced; want %d rows = %d unique ids",
			rows, distinct, missing, unknown, messages, messages)
	}

	// Every delivery in the ledgers is a produced record; those delivered
	// more than once (the redelivered tail of the killed replica's
	// partitions) kept their record id, so they are one row each.
	all := map[string]int{}
	var lines, torn int
	for _, n := range names {
		l, err := readLedger(files[n].Ledger)
		if err != nil {
			t.Fatal(err)
		}
		torn += l.Torn
		lines += len(l.IDs)
		for _, id := range l.IDs {
			all[id]++
		}
	}
	var again, extra int
	for id, c := range all {
		if want[id] == 0 {
			t.Errorf("ledger record %s was never produced", id)
		}
		if c > 1 {
			again++
			extra += c - 1
			if have[id] != 1 {
				t.Errorf("record %s delivered %d times is %d rows", id, c, have[id])
			}
		}
	}
	if len(all) != messages {
		t.Errorf("the ledgers hold %d distinct records, want %d", len(all), messages)
	}
	if deadLetters != 0 {
		t.Errorf("%v messages dead-lettered, want none", deadLetters)
	}
	if torn > 1 {
		t.Errorf("%d torn ledger lines; only the killed replica's last line may be torn", torn)
	}
	// The kill made redeliveries: what the victim delivered after its last
	// commit came again from the partitions' next owners. Those the Kafka
	// input marked (the victim had received them by its last commit) are
	// counted by decryptd, and each is one of the extra deliveries.
	if extra == 0 {
		t.Errorf("no record was delivered twice: the kill at %d rows left nothing delivered and uncommitted", atKill)
	}
	if float64(extra) < redelivered {
		t.Errorf("decryptd counted %v redelivered records, the ledgers show %d extra deliveries", redelivered, extra)
	}

	held := kcatTopic(t, kcat, brokers, k, messages)
	left := kcatGroupLeft(t, kcat, brokers)
	if left != 0 {
		t.Errorf("kcat, joining group %s after the replicas stopped, read %d records: committed offsets short of the end", group, left)
	}
	t.Logf("%d messages produced (kcat reads %d back) and drained in %s by 3 replicas; killed %s with %d rows in the table, %d deliveries in its ledger; "+
		"rebalance to the survivors %s after the kill (the group's session timeout); table %d rows = %d unique ids; "+
		"%d deliveries in the ledgers (%.0f by the metrics), %d records delivered twice or more (%d extra deliveries, same id, one row each); "+
		"decryptd counted %v of them as redelivered (received by the victim before its last commit), decryptd_duplicates_total %v; kcat in the group afterwards: %d left",
		messages, held, drained.Round(time.Second), victim, atKill, len(killedLedger.IDs), rebalance.Round(time.Second),
		rows, distinct, lines, delivered, again, extra, redelivered, duplicates, left)
}

// waitGroup waits until the group is stable with exactly members (client
// ids) holding every partition between them, each at least one.
func waitGroup(t *testing.T, admin *kgo.Client, members []string, partitions int, what string) {
	t.Helper()
	wait.Detail(t, 3*time.Minute, what, func() (bool, string) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		g, err := describeGroup(ctx, admin)
		if err != nil {
			return false, err.Error()
		}
		ids := make([]string, 0, len(g.assigned))
		for id, ps := range g.assigned {
			if len(ps) == 0 {
				return false, g.String()
			}
			ids = append(ids, id)
		}
		slices.Sort(ids)
		return g.state == "Stable" && slices.Equal(ids, members) && g.partitions() == partitions, g.String()
	})
}

// kcatTopic reads the whole topic with kcat (librdkafka, an independent
// client) and checks each record as the bridge wrote it: the key is a
// provisioned device, the mqtt_topic header that device's topic, want of
// them. It returns the records read.
func kcatTopic(t *testing.T, kcat string, brokers []string, k *keys, want int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kcat, "-b", strings.Join(brokers, ","), "-C", "-t", topic,
		"-o", "beginning", "-e", "-q", "-J", "-X", "broker.address.family=v4")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kcat: %v\n%s", err, stderr.String())
	}
	topics := map[string]string{}
	for _, d := range k.fleet.Devices() {
		topics[d.ID] = d.Topic()
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var m struct {
			Key     string   `json:"key"`
			Headers []string `json:"headers"`
		}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("kcat line %.200q: %v", line, err)
		}
		if len(m.Headers) != 2 || m.Headers[0] != topicHeader || topics[m.Key] == "" || m.Headers[1] != topics[m.Key] {
			t.Fatalf("kcat record key %q headers %q: want a device's id and its topic in %s", m.Key, m.Headers, topicHeader)
		}
		n++
	}
	if n != want {
		t.Errorf("kcat read %d records from %s, want %d", n, topic, want)
	}
	return n
}

// kcatGroupLeft joins the replicas' group with kcat (a balanced consumer,
// from the committed offsets; a partition without one would start at the
// beginning) and returns how many records it read before reaching the end
// of every partition: none when every committed offset is at its end.
func kcatGroupLeft(t *testing.T, kcat string, brokers []string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kcat, "-b", strings.Join(brokers, ","), "-G", group, "-e", "-q",
		"-f", "%p %o\n", "-X", "broker.address.family=v4", "-X", "auto.offset.reset=earliest",
		"-X", "enable.auto.commit=false", topic)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kcat -G: %v\n%s", err, stderr.String())
	}
	return strings.Count(string(out), "\n")
}
