package fleet

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

// fakeSender records what it is given, per connection, and acks at once
// (or fails every failEvery-th publish).
type fakeSender struct {
	conns     int
	failEvery int

	mu   sync.Mutex
	n    int
	sent map[int][]Message
}

func (s *fakeSender) Connections() int { return s.conns }

func (s *fakeSender) Publish(_ context.Context, conn int, topic string, payload []byte, done func(error)) error {
	s.mu.Lock()
	s.n++
	var err error
	if s.failEvery > 0 && s.n%s.failEvery == 0 {
		err = errors.New("broker said no")
	}
	if s.sent == nil {
		s.sent = map[int][]Message{}
	}
	s.sent[conn] = append(s.sent[conn], Message{Topic: topic, Payload: payload})
	s.mu.Unlock()
	done(err)
	return nil
}

func (s *fakeSender) Flush(context.Context) error { return nil }

func TestRunCountsAndMix(t *testing.T) {
	f := memFleet(t, 50, 0)
	s := &fakeSender{conns: 4, failEvery: 100}
	mix := Mix{ShapeB: 0.5, Bad: map[Kind]float64{Tampered: 0.05, Replayed: 0.05, Malformed: 0.05, TopicMismatch: 0.05, UnknownVersion: 0.05}}
	var prog bytes.Buffer
	var mu sync.Mutex
	results := map[Kind]int{}
	sum, err := Run(context.Background(), f, s, RunOptions{
		Count: 2000, Mix: mix, Seed: 3, Progress: &prog, ProgressEvery: 10 * time.Millisecond,
		OnResult: func(m Message, err error) {
			mu.Lock()
			results[m.Kind]++
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Published != 2000 || sum.Acked+sum.Errors != 2000 || sum.Errors != 20 {
		t.Fatalf("published %d, acked %d, errors %d; want 2000 = acked + 20 errors", sum.Published, sum.Acked, sum.Errors)
	}
	total := uint64(0)
	for _, k := range append([]Kind{Good}, BadKinds()...) {
		if sum.ByKind[k] == 0 {
			t.Errorf("no %s acked: %v", k, sum.ByKind)
		}
		total += sum.ByKind[k]
	}
	if total != sum.Acked || sum.ByShape[ShapeA]+sum.ByShape[ShapeB] != sum.ByKind[Good] {
		t.Fatalf("by kind %v, by shape %v do not add up to %d acked", sum.ByKind, sum.ByShape, sum.Acked)
	}
	if r := sum.ExpectedReasons(); r["auth_failed"] != sum.ByKind[Tampered] || r["replay"] != sum.ByKind[Replayed] {
		t.Fatalf("expected reasons %v from %v", r, sum.ByKind)
	}
	if results[Good] == 0 || len(results) != 6 {
		t.Fatalf("OnResult saw %v", results)
	}
	var js bytes.Buffer
	if err := json.NewEncoder(&js).Encode(sum); err != nil || !strings.Contains(js.String(), `"achieved_rate"`) {
		t.Fatalf("summary JSON %s (%v)", js.String(), err)
	}
	var txt bytes.Buffer
	sum.Text(&txt)
	if !strings.Contains(txt.String(), "expect reason auth_failed") {
		t.Fatalf("summary text:\n%s", txt.String())
	}
}

// TestRunRate: a paced run sends about rate × duration (a generous band:
// this is a sanity check of the bucket, not a timing assertion).
func TestRunRate(t *testing.T) {
	f := memFleet(t, 20, 0)
	s := &fakeSender{conns: 2}
	sum, err := Run(context.Background(), f, s, RunOptions{Rate: 400, Duration: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Acked < 100 || sum.Acked > 260 {
		t.Fatalf("%d messages at 400/s for 0.5 s, want about 200", sum.Acked)
	}
}

// TestRunOffline: offline devices' messages are held, then sent in one
// burst with their original timestamps, after the online ones of that
// time.
func TestRunOffline(t *testing.T) {
	f := memFleet(t, 10, 0)
	s := &fakeSender{conns: 1}
	var mu sync.Mutex
	var order []Message
	sum, err := Run(context.Background(), f, s, RunOptions{
		Count: 300, Rate: 1000, Offline: 0.5, OfflineFor: 100 * time.Millisecond, Seed: 9,
		OnResult: func(m Message, err error) {
			mu.Lock()
			order = append(order, m)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Acked != 300 || sum.OfflineDevices == 0 || sum.Burst == 0 {
		t.Fatalf("acked %d, offline devices %d, burst %d", sum.Acked, sum.OfflineDevices, sum.Burst)
	}
	firstBurst := -1
	for i, m := range order {
		if m.Burst && firstBurst < 0 {
			firstBurst = i
		}
	}
	if firstBurst <= 0 {
		t.Fatalf("burst at %d: want online messages before it", firstBurst)
	}
	for _, m := range order[firstBurst : firstBurst+int(sum.Burst)] {
		if !m.Burst {
			t.Fatal("burst interleaved with online messages")
		}
	}
}

// TestFleetOverMosquitto runs a small provisioned fleet against a real
// Mosquitto with mutual TLS: every message arrives, good ones open with
// the registry's keys, bad ones fail with their intended reason, and the
// offline burst arrives.
func TestFleetOverMosquitto(t *testing.T) {
	const n = 200
	broker := mosquittotest.Start(t, mosquittotest.Options{})
	env := newKeyEnv(t)
	ctx := context.Background()
	creds, err := Provision(ctx, n, env.bulk(), ProvisionOptions{GroupSize: 20})
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewFleet(creds, "")
	if err != nil {
		t.Fatal(err)
	}

	// The subscriber, first, so nothing is missed.
	type got struct {
		topic   string
		payload []byte
	}
	recv := make(chan got, 10000)
	sub := mqttClient(t, broker.SSLURL, broker.ClientTLS("ingest-1"), "test-sub")
	if tok := sub.Subscribe("iot-2/type/+/id/+/evt/+/fmt/+", 1, func(_ mqtt.Client, m mqtt.Message) {
		recv <- got{m.Topic(), m.Payload()}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}

	pub, err := NewPublisher(ctx, PublisherOptions{Broker: broker.SSLURL, TLS: broker.ClientTLS("telemsim"), Connections: 4, MaxOutstanding: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	// What each payload was meant to be, in publish order per payload (a
	// replay repeats its original's bytes).
	var mu sync.Mutex
	want := map[string][]Kind{}
	const count = 3000
	sum, err := Run(ctx, f, pub, RunOptions{
		Count: count, Rate: 0, Seed: 11,
		Mix:     Mix{ShapeB: 0.5, Bad: map[Kind]float64{Tampered: 0.02, UnknownVersion: 0.02, Replayed: 0.02, Malformed: 0.02, TopicMismatch: 0.02}},
		Offline: 0.1, OfflineFor: time.Hour, // held for the whole run, sent at its end
		OnResult: func(m Message, err error) {
			if err != nil {
				return
			}
			mu.Lock()
			want[string(m.Payload)] = append(want[string(m.Payload)], m.Kind)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Acked != count || sum.Errors != 0 || sum.Burst == 0 {
		t.Fatalf("acked %d, errors %d, burst %d; want %d, 0, some", sum.Acked, sum.Errors, sum.Burst, count)
	}

	d, err := decrypt.New(&registryResolver{reg: env.reg, kms: env.kms}, decrypt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[Kind]map[string]int{}
	deadline := time.After(30 * time.Second)
	for i := 0; i < count; i++ {
		var g got
		select {
		case g = <-recv:
		case <-deadline:
			t.Fatalf("received %d of %d messages", i, count)
		}
		mu.Lock()
		kinds := want[string(g.payload)]
		if len(kinds) == 0 {
			mu.Unlock()
			t.Fatalf("received a message nobody published (or too often): %.80s", g.payload)
		}
		kind := kinds[0]
		want[string(g.payload)] = kinds[1:]
		mu.Unlock()
		_, err := d.Open(ctx, decrypt.Message{Topic: g.topic, Payload: g.payload})
		if reasons[kind] == nil {
			reasons[kind] = map[string]int{}
		}
		reasons[kind][decrypt.Reason(err)]++
		if got := decrypt.Reason(err); got != kind.Reason() {
			t.Errorf("%s message on %s: reason %q (%v), want %q", kind, g.topic, got, err, kind.Reason())
		}
	}
	select {
	case g := <-recv:
		t.Fatalf("an extra message: %.80s", g.payload)
	case <-time.After(200 * time.Millisecond):
	}
	for _, k := range append([]Kind{Good}, BadKinds()...) {
		if reasons[k][k.Reason()] == 0 {
			t.Errorf("no %s message opened: %v", k, reasons)
		}
	}
	t.Logf("reasons by kind: %v; summary rate %.0f msg/s", reasons, sum.Rate)
}

func mqttClient(t *testing.T, url string, tlsc *tls.Config, id string) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetTLSConfig(tlsc).SetCleanSession(true).SetOrderMatters(true)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(250) })
	return c
}
