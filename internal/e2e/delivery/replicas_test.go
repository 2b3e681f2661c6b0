package delivery_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/e2e/e2etest"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

// Two replicas on one shared subscription take 20,000 messages between
// them: every record is delivered (by id), none is lost, none is made up,
// and each replica carries a real share of the load. Each replica's own
// metrics agree with what its sink holds.
func TestTwoReplicasSplitSharedSubscription(t *testing.T) {
	const (
		devices  = 200
		messages = 20000
		minShare = 0.20
	)
	// The broker's window stays below the daemons' max_in_flight, as the
	// consumer asks (Mosquitto 2.0.11 may still overshoot it).
	b := mosquittotest.Start(t, mosquittotest.Options{MaxInflight: 100})
	f := newFleet(t, b, devices)
	replicas := []*inProcess{
		startInProcess(t, f.writeConfig(t, replicaConfig{ClientID: "replica-a", MaxInFlight: 256})),
		startInProcess(t, f.writeConfig(t, replicaConfig{ClientID: "replica-b", MaxInFlight: 256})),
	}

	ids := make([]string, messages)
	pub := newPublisher(t, f, "gateway-1")
	t0 := time.Now()
	if err := pub.publish(0, messages, ids); err != nil {
		t.Fatalf("publish: %v", err)
	}
	pubDur := time.Since(t0)

	// Poll cheaply (line counts) until the sinks hold as many lines as
	// messages were sent, then by id until every record is there.
	var sinks [2]sinkFile
	var all map[string]int
	waitUntil(t, 90*time.Second, "both sinks together hold every record", func() (bool, string) {
		la, lb := countLines(replicas[0].files.Records), countLines(replicas[1].files.Records)
		if la+lb < messages {
			return false, fmt.Sprintf("%d + %d of %d lines", la, lb, messages)
		}
		for i, r := range replicas {
			s, err := readSink(r.files.Records)
			if err != nil {
				return false, err.Error()
			}
			sinks[i] = s
		}
		all = e2etest.Counts(append(append([]string(nil), sinks[0].IDs...), sinks[1].IDs...))
		return len(missing(ids, all)) == 0, fmt.Sprintf("%d distinct of %d", len(all), messages)
	})
	drained := time.Since(t0)

	published := e2etest.Counts(ids)
	if len(published) != messages {
		t.Fatalf("publisher made %d distinct ids for %d messages", len(published), messages)
	}
	for id := range all {
		if published[id] == 0 {
			t.Errorf("record %s in a sink was never published", id)
		}
	}
	lines := len(sinks[0].IDs) + len(sinks[1].IDs)
	t.Logf("published %d in %s; all delivered after %s; sink lines %d + %d = %d, distinct %d, repeated %d",
		messages, pubDur.Round(time.Millisecond), drained.Round(time.Millisecond),
		len(sinks[0].IDs), len(sinks[1].IDs), lines, len(all), lines-len(all))

	// Mosquitto hands each message of a shared subscription to one member
	// and redelivers only to that member's session: a record in both sinks
	// means both replicas were given the message.
	inA := e2etest.Counts(sinks[0].IDs)
	both := 0
	for id := range e2etest.Counts(sinks[1].IDs) {
		if inA[id] > 0 {
			both++
		}
	}
	if both != 0 {
		t.Errorf("%d records are in both replicas' sinks: the subscription was not shared", both)
	}

	for i, r := range replicas {
		s := sinks[i]
		if s.Torn != 0 {
			t.Errorf("replica %d: %d lines of its sink are not records", i, s.Torn)
		}
		distinct := len(e2etest.Counts(s.IDs))
		share := float64(distinct) / messages
		t.Logf("replica %d (%s): %d records (%.1f%% of the messages)", i, r.addr, distinct, 100*share)
		if share < minShare {
			t.Errorf("replica %d took %.1f%% of the messages, want at least %.0f%%: the shared subscription did not split the load", i, 100*share, 100*minShare)
		}
	}

	// Metrics, once every message is acknowledged (nothing held in flight).
	for i, r := range replicas {
		var m metrics
		waitUntil(t, 20*time.Second, fmt.Sprintf("replica %d acknowledges everything", i), func() (bool, string) {
			var err error
			if m, err = scrape(r.addr); err != nil {
				return false, err.Error()
			}
			n := m.Sum("decryptd_inflight_messages")
			return n == 0, fmt.Sprintf("decryptd_inflight_messages %v", n)
		})
		// Read the sink again now that nothing is in flight.
		s, err := readSink(r.files.Records)
		if err != nil {
			t.Fatal(err)
		}
		sinks[i] = s
		held := float64(len(s.IDs))
		delivered := m.Sum("decryptd_messages_processed_total", "outcome", "delivered")
		written := m.Sum("decryptd_records_delivered_total", "sink", "records")
		received := m.Sum("decryptd_mqtt_messages_received_total")
		dups := m.Sum("decryptd_duplicates_total")
		t.Logf("replica %d metrics: received %v, processed delivered %v, duplicate %v, records_delivered{records} %v, released %v, reconnects %v, kms unwraps %v",
			i, received, delivered, dups, written,
			m.Sum("decryptd_mqtt_messages_released_total"), m.Sum("decryptd_mqtt_reconnects_total"),
			m.Sum("decryptd_kms_requests_total", "operation", "unwrap"))
		// A replica writes a record twice only when its PUBACK was lost
		// with a connection; none was lost here.
		if rep := len(sinks[i].IDs) - len(e2etest.Counts(sinks[i].IDs)); rep != 0 && m.Sum("decryptd_mqtt_reconnects_total") == 0 {
			t.Errorf("replica %d wrote %d records twice without ever losing its connection", i, rep)
		}
		if written != held {
			t.Errorf("replica %d: decryptd_records_delivered_total{sink=records} = %v, its sink holds %v records", i, written, held)
		}
		if delivered != held {
			t.Errorf("replica %d: decryptd_messages_processed_total{outcome=delivered} = %v, its sink holds %v records", i, delivered, held)
		}
		if received < delivered+dups {
			t.Errorf("replica %d: received %v messages but finished %v", i, received, delivered+dups)
		}
		for _, name := range []string{"decryptd_dead_letters_total", "decryptd_decrypt_failures_total"} {
			if v := m.Sum(name); v != 0 {
				t.Errorf("replica %d: %s = %v, want 0 (every message is good)", i, name, v)
			}
		}
		if v := m.Sum("decryptd_kms_requests_total", "operation", "unwrap"); v > devices {
			t.Errorf("replica %d: %v KMS unwraps for %d keys: the key cache should unwrap each key once", i, v, devices)
		}
		if v := m.Sum("decryptd_mqtt_connection_up"); v != 1 {
			t.Errorf("replica %d: decryptd_mqtt_connection_up = %v", i, v)
		}
	}

	for i, r := range replicas {
		if err := r.stop(); err != nil {
			t.Errorf("replica %d: graceful stop: %v", i, err)
		}
	}
}
