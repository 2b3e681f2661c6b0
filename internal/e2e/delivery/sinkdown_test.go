package delivery_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/e2e/e2etest"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

// receiver is an HTTP sink's other end: it takes NDJSON batches and keeps
// the record ids, or answers 503 while down.
type receiver struct {
	mu        sync.Mutex
	down      bool
	ids       map[string]int
	refused   int       // requests answered 503
	accepted  int       // requests answered 200
	firstUp   time.Time // first request accepted after the last outage
	wasDown   bool
	lastTaken time.Time // last request accepted
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	r.mu.Lock()
	down := r.down
	r.mu.Unlock()
	if down {
		_, _ = io.Copy(io.Discard, req.Body)
		r.mu.Lock()
		r.refused++
		r.mu.Unlock()
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
		return
	}
	var ids []string
	sc := bufio.NewScanner(req.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var rec struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil || rec.ID == "" {
			// A permanent refusal: the test fails on the dead letter.
			http.Error(w, "not a record", http.StatusBadRequest)
			return
		}
		ids = append(ids, rec.ID)
	}
	if sc.Err() != nil {
		http.Error(w, "read error", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		r.ids[id]++
	}
	r.accepted++
	now := time.Now()
	if r.wasDown {
		r.firstUp, r.wasDown = now, false
	}
	r.lastTaken = now
	w.WriteHeader(http.StatusOK)
}

func (r *receiver) setDown(down bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = down
	if down {
		r.wasDown = true
	}
}

func (r *receiver) snapshot() (ids map[string]int, refused, accepted int, firstUp, lastTaken time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids = make(map[string]int, len(r.ids))
	for k, v := range r.ids {
		ids[k] = v
	}
	return ids, r.refused, r.accepted, r.firstUp, r.lastTaken
}

// An HTTP sink down (503) for 10 s while messages keep arriving: intake
// stops at mqtt.max_in_flight (the rest stays queued at the broker), nothing
// is dead-lettered, and once the sink is back every record reaches it.
func TestSinkDownPausesIntakeLosesNothing(t *testing.T) {
	const (
		devices     = 20
		maxInFlight = 50
		outage      = 10 * time.Second
		before      = 500  // sent and delivered before the outage
		during      = 2000 // sent while the sink is down
		after       = 500  // sent once it is back
		messages    = before + during + after
	)
	rcv := &receiver{ids: map[string]int{}}
	srv := httptest.NewServer(rcv)
	t.Cleanup(srv.Close)

	// The broker's window equals the daemon's bound, as the consumer asks.
	b := mosquittotest.Start(t, mosquittotest.Options{MaxInflight: maxInFlight})
	f := newFleet(t, b, devices)
	rf := f.writeConfig(t, replicaConfig{
		ClientID: "replica-h", MaxInFlight: maxInFlight,
		Sinks: fmt.Sprintf("  - name: ehr\n    type: http\n    url: %q\n    batch_max: 100\n    timeout: 2s\n", srv.URL+"/records"),
	})
	d := startInProcess(t, rf)

	ids := make([]string, messages)
	pub := newPublisher(t, f, "gateway-h")
	if err := pub.publish(0, before, ids); err != nil {
		t.Fatalf("publish: %v", err)
	}
	waitUntil(t, 30*time.Second, "records sent before the outage delivered", func() (bool, string) {
		got, _, _, _, _ := rcv.snapshot()
		miss := missing(ids[:before], got)
		return len(miss) == 0, fmt.Sprintf("%d of %d missing", len(miss), before)
	})
	m0 := mustScrape(t, d.addr)

	// The outage: the sink answers 503 while the devices keep publishing.
	rcv.setDown(true)
	downAt := time.Now()
	pubDone := make(chan error, 1)
	go func() {
		const chunk = 100
		for from := before; from < before+during; from += chunk {
			if err := pub.publish(from, from+chunk, ids); err != nil {
				pubDone <- err
				return
			}
			// Spread over most of the outage: messages keep arriving
			// while the sink is down.
			time.Sleep(outage * 8 / 10 / (during / chunk))
		}
		pubDone <- nil
	}()

	type point struct {
		at                               time.Duration
		inflight, received, released     float64
		admitted                         float64 // received - released
		sinkUp                           float64
		processedDelivered, deadLettered float64
	}
	var points []point
	for time.Since(downAt) < outage {
		m, err := scrape(d.addr)
		if err != nil {
			t.Fatalf("scrape during the outage: %v", err)
		}
		p := point{
			at:                 time.Since(downAt),
			inflight:           m.Sum("decryptd_inflight_messages"),
			received:           m.Sum("decryptd_mqtt_messages_received_total"),
			released:           m.Sum("decryptd_mqtt_messages_released_total"),
			sinkUp:             m.Sum("decryptd_sink_up", "sink", "ehr"),
			processedDelivered: m.Sum("decryptd_messages_processed_total", "outcome", "delivered"),
			deadLettered:       m.Sum("decryptd_dead_letters_total"),
		}
		p.admitted = p.received - p.released
		points = append(points, p)
		time.Sleep(200 * time.Millisecond)
	}
	rcv.setDown(false)
	upAt := time.Now()
	if err := <-pubDone; err != nil {
		t.Fatalf("publish during the outage: %v", err)
	}
	if err := pub.publish(before+during, messages, ids); err != nil {
		t.Fatalf("publish after the outage: %v", err)
	}

	var got map[string]int
	waitUntil(t, 60*time.Second, "every record at the receiver after the outage", func() (bool, string) {
		got, _, _, _, _ = rcv.snapshot()
		miss := missing(ids, got)
		return len(miss) == 0, fmt.Sprintf("%d of %d missing", len(miss), messages)
	})
	_, refused, accepted, firstUp, _ := rcv.snapshot()

	// What the outage looked like from the daemon's metrics.
	maxInflight, lastDown := 0.0, point{}
	var settled *point // first sample once intake had stopped (2 s in)
	for i, p := range points {
		maxInflight = max(maxInflight, p.inflight)
		if p.at >= 2*time.Second && settled == nil {
			settled = &points[i]
		}
		lastDown = p
	}
	if settled == nil {
		t.Fatal("no metrics sample during the outage")
	}
	startReceived := m0.Sum("decryptd_mqtt_messages_received_total")
	startAdmitted := startReceived - m0.Sum("decryptd_mqtt_messages_released_total")
	startDelivered := m0.Sum("decryptd_messages_processed_total", "outcome", "delivered")
	t.Logf("outage %s: sink refused %d requests; %d messages published meanwhile, the daemon took in %v during the outage, the rest waited at the broker",
		outage, refused, during, lastDown.admitted-startAdmitted)
	t.Logf("intake: received %v before, %v at 2 s, %v at the end of the outage (released %v); admitted %v at 2 s, %v at the end; in flight at most %v (max_in_flight %d); delivered %v before, %v during",
		startReceived, settled.received, lastDown.received, lastDown.released,
		settled.admitted, lastDown.admitted, maxInflight, maxInFlight,
		startDelivered, lastDown.processedDelivered-startDelivered)
	flatFrom := lastDown.at
	for i := len(points) - 1; i >= 0 && points[i].admitted == lastDown.admitted; i-- {
		flatFrom = points[i].at
	}
	t.Logf("intake paused: admitted count flat from %s into the outage to its end (%s); no record reached the receiver for %s",
		flatFrom.Round(time.Millisecond), outage, firstUp.Sub(downAt).Round(time.Millisecond))
	t.Logf("recovery: first batch accepted %s after the sink came back; all %d records there %s after",
		firstUp.Sub(upAt).Round(time.Millisecond), messages, time.Since(upAt).Round(time.Millisecond))

	if refused == 0 {
		t.Fatal("the sink was never called during the outage: the test did not test an outage")
	}
	if maxInflight > maxInFlight {
		t.Errorf("decryptd_inflight_messages reached %v during the outage, above max_in_flight %d", maxInflight, maxInFlight)
	}
	// Intake stopped: from 2 s into the outage on, no message was admitted
	// (every slot was held by a message waiting for the sink), and in all
	// the outage at most max_in_flight were. The one unit of slack is a
	// message paho's router has handed over (received counts it) that waits
	// for a slot and is then released (released counts it): the handler
	// runs on that one goroutine, so there is at most one.
	if grown := lastDown.admitted - settled.admitted; grown > 1 {
		t.Errorf("intake did not stop: %v more messages admitted between 2 s and %s into the outage", grown, outage)
	}
	if inOutage := lastDown.admitted - startAdmitted; inOutage > maxInFlight+1 {
		t.Errorf("%v messages admitted during the outage, want at most max_in_flight %d", inOutage, maxInFlight)
	}
	if lastDown.inflight < maxInFlight/2 {
		t.Errorf("only %v messages in flight at the end of the outage, with %d waiting at the broker: the bound is not what stopped intake", lastDown.inflight, during)
	}
	if lastDown.sinkUp != 0 {
		t.Errorf("decryptd_sink_up{sink=ehr} = %v at the end of the outage, want 0", lastDown.sinkUp)
	}
	if d := lastDown.processedDelivered - startDelivered; d != 0 {
		t.Errorf("%v messages counted delivered while the sink refused everything", d)
	}

	published := e2etest.Counts(ids)
	for id := range got {
		if published[id] == 0 {
			t.Errorf("record %s at the receiver was never published", id)
		}
	}
	repeats := 0
	for _, n := range got {
		repeats += n - 1
	}
	m := mustScrape(t, d.addr)
	t.Logf("after: %d distinct records of %d published, %d repeated; %d requests accepted; metrics: received %v, released %v, reconnects %v, sink errors %v, sink retries %v, dead letters %v",
		len(got), messages, repeats, accepted,
		m.Sum("decryptd_mqtt_messages_received_total"), m.Sum("decryptd_mqtt_messages_released_total"),
		m.Sum("decryptd_mqtt_reconnects_total"), m.Sum("decryptd_sink_errors_total", "sink", "ehr"),
		m.Sum("decryptd_transient_retries_total", "cause", "sink"), m.Sum("decryptd_dead_letters_total"))
	if v := m.Sum("decryptd_dead_letters_total"); v != 0 {
		t.Errorf("%v messages dead-lettered, want 0: a sink outage is transient", v)
	}
	if dl, err := readSink(rf.DeadLetter); err != nil || len(dl.IDs)+dl.Torn != 0 {
		t.Errorf("dead-letter file holds %d lines (%v), want none", len(dl.IDs)+dl.Torn, err)
	}
	if v := m.Sum("decryptd_sink_up", "sink", "ehr"); v != 1 {
		t.Errorf("decryptd_sink_up{sink=ehr} = %v after recovery, want 1", v)
	}
	if err := d.stop(); err != nil {
		t.Errorf("graceful stop: %v", err)
	}
}
