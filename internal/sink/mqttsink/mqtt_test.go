package mqttsink_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/sink/mqttsink"
	"github.com/decryptd/decryptd/internal/sink/sinktest"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

// proxy forwards TCP connections to a broker. Pause holds everything the
// broker sends (PUBACKs) until Resume; Cut drops every connection, as a
// network failure would; Refuse(true) drops new connections at once.
type proxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	cond    *sync.Cond
	paused  bool
	refused bool
	conns   []net.Conn
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	p.cond = sync.NewCond(&p.mu)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.Resume()
		p.Cut()
	})
	return p
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refused := p.refused
		p.mu.Unlock()
		if refused {
			c.Close()
			continue
		}
		b, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, b)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(b, c); b.Close(); c.Close() }()
		go p.copyHeld(c, b)
	}
}

// copyHeld copies broker → client, waiting while paused.
func (p *proxy) copyHeld(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		p.mu.Lock()
		for p.paused {
			p.cond.Wait()
		}
		p.mu.Unlock()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *proxy) Pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

func (p *proxy) Resume() {
	p.mu.Lock()
	p.paused = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refused = on
	p.mu.Unlock()
}

func (p *proxy) Cut() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// subscriber collects every payload published under filter, in arrival
// order.
type subscriber struct {
	mu   sync.Mutex
	msgs [][]byte
	tops []string
}

func subscribe(t *testing.T, b *mosquittotest.Broker, filter string) *subscriber {
	t.Helper()
	sub := &subscriber{}
	o := mqtt.NewClientOptions().AddBroker(b.SSLURL).SetClientID("reader-" + t.Name()).
		SetTLSConfig(b.ClientTLS("reader")).SetCleanSession(true).SetAutoReconnect(false)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	tok := c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
		sub.mu.Lock()
		sub.msgs = append(sub.msgs, append([]byte(nil), m.Payload()...))
		sub.tops = append(sub.tops, m.Topic())
		sub.mu.Unlock()
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return sub
}

func (s *subscriber) read(*testing.T) [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.msgs...)
}

func (s *subscriber) topics() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.tops...)
}

// mqttSink starts a sink on b through a proxy (so tests can stall or cut
// its connection) with mutual TLS.
func mqttSink(t *testing.T, b *mosquittotest.Broker, topic string) (*mqttsink.MQTT, *proxy) {
	t.Helper()
	p := startProxy(t, strings.TrimPrefix(b.SSLURL, "ssl://"))
	s, err := mqttsink.New(t.Context(), mqttsink.Options{
		Name: "mqtt", Broker: "ssl://" + p.Addr(), TLS: b.ClientTLS("decryptd-sink"),
		ClientID: "sink-" + t.Name(), Topic: topic,
		MaxReconnectInterval: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s, p
}

func TestMQTTContract(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{})
	sinktest.Run(t, func(t *testing.T) sinktest.Subject {
		// Each subject gets its own topic prefix: one broker serves all.
		prefix := "out/" + strings.ReplaceAll(t.Name(), "/", "_")
		sub := subscribe(t, b, prefix+"/#")
		s, p := mqttSink(t, b, prefix+"/{device_id}/records")
		return sinktest.Subject{
			Sink: s, Read: sub.read, Async: true,
			Stall: func(*testing.T) func() { p.Pause(); return p.Resume },
		}
	})
}

func TestMQTTTopics(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{})
	t.Run("template", func(t *testing.T) {
		sub := subscribe(t, b, "tpl/#")
		s, _ := mqttSink(t, b, "tpl/{device_id}/rec")
		recs := sinktest.Records("tpl", 3)
		if err := s.Write(t.Context(), recs); err != nil {
			t.Fatal(err)
		}
		waitCount(t, sub, 3)
		for i, top := range sub.topics() {
			if want := "tpl/" + recs[i].DeviceID + "/rec"; top != want {
				t.Errorf("message %d on %q, want %q", i, top, want)
			}
		}
	})
	t.Run("fixed_dead_letter_topic", func(t *testing.T) {
		sub := subscribe(t, b, "dead/#")
		s, _ := mqttSink(t, b, "dead/letters")
		dl := sink.DeadLetter{Reason: "auth_failed", Message: intake.Message{Topic: "iot-2/x", Payload: []byte("raw")}}
		if err := s.Write(t.Context(), []sink.Record{dl.Record()}); err != nil {
			t.Fatal(err)
		}
		waitCount(t, sub, 1)
		if top := sub.topics()[0]; top != "dead/letters" {
			t.Fatalf("topic %q", top)
		}
		for got, err := range sink.ReadDeadLetters(strings.NewReader(string(sub.read(t)[0]))) {
			if err != nil || string(got.Payload) != "raw" {
				t.Fatalf("dead letter read back: %+v, %v", got, err)
			}
		}
	})
	t.Run("unusable_device_ids", func(t *testing.T) {
		s, _ := mqttSink(t, b, "bad/{device_id}")
		for _, dev := range []string{"", "a/b", "a+", "#", "x\x00"} {
			rec := sinktest.Records("bad", 1)[0]
			rec.DeviceID = dev
			if err := s.Write(t.Context(), []sink.Record{rec}); !errors.Is(err, sink.ErrBadRecord) {
				t.Errorf("device id %q: got %v, want ErrBadRecord", dev, err)
			}
		}
		// The sink (and its connection) still works.
		if err := s.Write(t.Context(), sinktest.Records("ok", 1)); err != nil {
			t.Fatal(err)
		}
	})
}

func waitCount(t *testing.T, sub *subscriber, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); len(sub.read(t)) < n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("subscriber got %d of %d messages within 10 s", len(sub.read(t)), n)
		}
	}
}

func TestMQTTConnectionLoss(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{})
	sub := subscribe(t, b, "loss/#")
	s, p := mqttSink(t, b, "loss/{device_id}")

	// Lost while waiting for PUBACKs, and not back: Write fails promptly,
	// not at its deadline. (Had paho reconnected at once, it would resend
	// the publishes and Write could rightly succeed on their PUBACKs.)
	p.Pause()
	done := make(chan error, 1)
	go func() { done <- s.Write(t.Context(), sinktest.Records("lost", 3)) }()
	time.Sleep(100 * time.Millisecond) // let the publishes go out
	p.Refuse(true)
	p.Cut()
	p.Resume()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, context.Canceled) {
			t.Fatalf("Write across a lost connection: %v, want a connection error", err)
		}
		t.Logf("Write across a lost connection: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Write did not notice the lost connection within 10 s")
	}

	// The sink reconnects by itself; the caller's retry then succeeds.
	p.Refuse(false)
	retry := sinktest.Records("lost", 3)
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.Write(t.Context(), retry)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Write still failing 10 s after the connection came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitCount(t, sub, 3)
}

func TestMQTTBrokerDown(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{})
	s, _ := mqttSink(t, b, "down/x")
	b.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// The loss shows within a poll or two; every Write meanwhile fails
	// (none hangs until the context's end).
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err = s.Write(ctx, sinktest.Records("down", 1)); err != nil {
			break
		}
	}
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Write with the broker down: %v", err)
	}
	t.Logf("Write with the broker down: %v", err)
}

func TestMQTTConnectFailures(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{})
	t.Run("no_client_certificate", func(t *testing.T) {
		tlsc := b.ClientTLS("x")
		tlsc.Certificates = nil
		_, err := mqttsink.New(t.Context(), mqttsink.Options{Name: "m", Broker: b.SSLURL, TLS: tlsc, ClientID: "c1", Topic: "t", ConnectTimeout: 5 * time.Second})
		if err == nil {
			t.Fatal("connected without a client certificate")
		}
	})
	t.Run("nothing_listening", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		_, err := mqttsink.New(t.Context(), mqttsink.Options{Name: "m", Broker: "ssl://" + addr, TLS: b.ClientTLS("x"), ClientID: "c2", Topic: "t", ConnectTimeout: 5 * time.Second})
		if err == nil || !strings.Contains(err.Error(), "connect") {
			t.Fatalf("got %v", err)
		}
	})
}

func TestMQTTOptionsValidation(t *testing.T) {
	ok := mqttsink.Options{Name: "m", Broker: "ssl://h:8883", ClientID: "c", Topic: "a/{device_id}"}
	tests := []struct {
		name string
		mod  func(*mqttsink.Options)
		want string
	}{
		{"no name", func(o *mqttsink.Options) { o.Name = "" }, "name:"},
		{"no broker", func(o *mqttsink.Options) { o.Broker = "" }, "broker:"},
		{"plain", func(o *mqttsink.Options) { o.Broker = "tcp://h:1883" }, "broker: must be ssl"},
		{"ws", func(o *mqttsink.Options) { o.Broker = "ws://h:1883" }, "broker:"},
		{"creds", func(o *mqttsink.Options) { o.Broker = "ssl://u:p@h:8883" }, "broker:"},
		{"no client id", func(o *mqttsink.Options) { o.ClientID = "" }, "client_id:"},
		{"no topic", func(o *mqttsink.Options) { o.Topic = "" }, "topic:"},
		{"wildcard", func(o *mqttsink.Options) { o.Topic = "a/+/b" }, "topic:"},
		{"system topic", func(o *mqttsink.Options) { o.Topic = "$SYS/x" }, "topic:"},
		{"unknown placeholder", func(o *mqttsink.Options) { o.Topic = "a/{key_id}" }, "topic:"},
		{"negative timeout", func(o *mqttsink.Options) { o.WriteTimeout = -1 }, "write_timeout:"},
		{"tiny keepalive", func(o *mqttsink.Options) { o.KeepAlive = time.Millisecond }, "keep_alive:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := ok
			tc.mod(&o)
			_, err := mqttsink.New(t.Context(), o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func BenchmarkMQTTWrite(b *testing.B) {
	br := mosquittotest.Start(b, mosquittotest.Options{})
	s, err := mqttsink.New(b.Context(), mqttsink.Options{
		Name: "mqtt", Broker: br.SSLURL, TLS: br.ClientTLS("bench"), ClientID: "bench", Topic: "bench/{device_id}",
	})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(context.Background())
	batch := sinktest.Records("bench", 100)
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Write(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "records/s")
}
