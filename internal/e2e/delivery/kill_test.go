package delivery_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/e2e/e2etest"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

// A replica killed without warning (SIGKILL) mid-stream and started again
// under the same client id loses nothing: the broker kept its persistent
// session, redelivers what it had not acknowledged and hands it what queued
// meanwhile. What the killed process had written but not acknowledged comes
// back as a duplicate line with the same record id, and the restarted
// process counts the broker's redeliveries.
func TestKilledReplicaRestartedLosesNothing(t *testing.T) {
	const (
		devices  = 50
		messages = 5000
	)
	bin := e2etest.BuildDecryptd(t)
	b := mosquittotest.Start(t, mosquittotest.Options{MaxInflight: 100})
	f := newFleet(t, b, devices)
	rf := f.writeConfig(t, replicaConfig{ClientID: "replica-k", MaxInFlight: 200})
	first := startProcess(t, bin, rf)

	ids := make([]string, messages)
	pub := newPublisher(t, f, "gateway-k")
	pubDone := make(chan error, 1)
	go func() { pubDone <- pub.publish(0, messages, ids) }()

	// Kill once about half the stream is in the sink.
	waitUntil(t, 60*time.Second, "half the messages in the sink", func() (bool, string) {
		n := countLines(rf.Records)
		return n >= messages/2, fmt.Sprintf("%d lines", n)
	})
	before := mustScrape(t, first.addr)
	first.Kill()
	killedAt := time.Now()
	atKill, err := readSink(rf.Records)
	if err != nil {
		t.Fatal(err)
	}
	if len(atKill.IDs) >= messages {
		t.Fatalf("the kill came after the whole stream (%d records): nothing was mid-stream", len(atKill.IDs))
	}
	t.Logf("killed the first process (%v) with %d records in the sink (%d torn lines); shortly before: received %v, delivered %v, acknowledged %v, in flight %v",
		first.Err(), len(atKill.IDs), atKill.Torn,
		before.Sum("decryptd_mqtt_messages_received_total"),
		before.Sum("decryptd_messages_processed_total", "outcome", "delivered"),
		before.Sum("decryptd_mqtt_ack_latency_seconds_count"),
		before.Sum("decryptd_inflight_messages"))

	// The publisher carries on while no replica is up: the broker queues.
	select {
	case err := <-pubDone:
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("publisher did not finish within 60s")
	}

	second := startProcess(t, bin, rf)
	t.Logf("second process ready %s after the kill", time.Since(killedAt).Round(time.Millisecond))
	var final sinkFile
	var have map[string]int
	waitUntil(t, 60*time.Second, "every published record in the sink", func() (bool, string) {
		if n := countLines(rf.Records); n < messages {
			return false, fmt.Sprintf("%d lines for %d messages", n, messages)
		}
		s, err := readSink(rf.Records)
		if err != nil {
			return false, err.Error()
		}
		final, have = s, e2etest.Counts(s.IDs)
		miss := missing(ids, have)
		return len(miss) == 0, fmt.Sprintf("%d of %d published records missing", len(miss), messages)
	})

	// The first process's records are the file's first lines (a torn line
	// is ended by the restarted sink and is not a record).
	for i, id := range atKill.IDs {
		if final.IDs[i] != id {
			t.Fatalf("sink line %d changed after the kill", i)
		}
	}
	published := e2etest.Counts(ids)
	for id := range have {
		if published[id] == 0 {
			t.Errorf("record %s in the sink was never published", id)
		}
	}
	firstSet := e2etest.Counts(atKill.IDs)
	secondIDs := final.IDs[len(atKill.IDs):]
	dupSecond := 0 // records the second process wrote again
	seen := map[string]bool{}
	for _, id := range secondIDs {
		if firstSet[id] > 0 || seen[id] {
			dupSecond++
		}
		seen[id] = true
	}
	dupLines := len(final.IDs) - len(have)
	repeatedIDs := 0
	for _, n := range have {
		if n > 1 {
			repeatedIDs++
		}
	}
	if final.Torn > 1 {
		t.Errorf("%d lines of the sink are not records; a kill tears at most one", final.Torn)
	}

	// Let the second process acknowledge everything, then read its metrics.
	var m metrics
	waitUntil(t, 20*time.Second, "the second process acknowledges everything", func() (bool, string) {
		var err error
		if m, err = scrape(second.addr); err != nil {
			return false, err.Error()
		}
		n := m.Sum("decryptd_inflight_messages")
		return n == 0, fmt.Sprintf("decryptd_inflight_messages %v", n)
	})
	t.Logf("sink: %d lines (%d torn), %d distinct records = every one of %d published; %d duplicate lines (%d ids more than once), %d of them written by the second process",
		len(final.IDs)+final.Torn, final.Torn, len(have), messages, dupLines, repeatedIDs, dupSecond)
	t.Logf("second process: received %v, delivered %v, duplicate %v, dead-lettered %v",
		m.Sum("decryptd_mqtt_messages_received_total"),
		m.Sum("decryptd_messages_processed_total", "outcome", "delivered"),
		m.Sum("decryptd_duplicates_total"), m.Sum("decryptd_dead_letters_total"))
	if v := m.Sum("decryptd_dead_letters_total"); v != 0 {
		t.Errorf("second process dead-lettered %v messages, want 0", v)
	}
	if got, want := m.Sum("decryptd_messages_processed_total", "outcome", "delivered"), float64(len(secondIDs)); got != want {
		t.Errorf("second process: decryptd_messages_processed_total{outcome=delivered} = %v, it wrote %v records", got, want)
	}

	// Every duplicate the second process wrote is a message the broker
	// redelivered (DUP set): the first process had written it but its
	// PUBACK never left. The operator must be able to see that count;
	// these are the names such a counter may have (the first present is
	// used).
	redeliveryMetrics := []string{
		"decryptd_mqtt_redelivered_total",
		"decryptd_mqtt_messages_redelivered_total",
		"decryptd_mqtt_redeliveries_total",
	}
	name := ""
	for _, n := range redeliveryMetrics {
		if m.Has(n) {
			name = n
			break
		}
	}
	if name == "" {
		t.Errorf("the daemon exports no counter of broker redeliveries (MQTT DUP flag): none of %v on /metrics; "+
			"decryptd_duplicates_total = %v counts only redeliveries the in-memory replay window recognises, which a restarted process has lost, "+
			"so %d duplicate records written after the restart are invisible in the metrics",
			redeliveryMetrics, m.Sum("decryptd_duplicates_total"), dupSecond)
	} else if v := m.Sum(name); v < float64(dupSecond) {
		t.Errorf("%s = %v, but the second process wrote %d records again", name, v, dupSecond)
	} else {
		t.Logf("%s = %v >= %d duplicates written by the second process", name, v, dupSecond)
	}

	if err := second.Terminate(30 * time.Second); err != nil {
		t.Errorf("second process: graceful stop (SIGTERM): %v", err)
	}
	after, err := readSink(rf.Records)
	if err != nil {
		t.Fatal(err)
	}
	if miss := missing(ids, e2etest.Counts(after.IDs)); len(miss) != 0 {
		t.Errorf("after the graceful stop %d records are missing", len(miss))
	}
}
