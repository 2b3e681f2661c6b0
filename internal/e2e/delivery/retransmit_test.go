package delivery_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

// A device publishing at QoS 1 misses its PUBACK (the proxy between it and
// the broker drops it and cuts the link, as a radio would). On reconnecting
// it resends the PUBLISH with DUP set; Mosquitto forwards the resend to
// decryptd as a new message, byte for byte the first (envelope amendment
// 1). decryptd writes one record, counts one duplicate (cause repeat) and
// dead-letters nothing.
func TestQoS1RetransmissionIsOneRecord(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Plain: true})
	f := newFleet(t, b, 1)
	r := startInProcess(t, f.writeConfig(t, replicaConfig{ClientID: "retransmit"}))

	proxy := startPubackDropper(t, strings.TrimPrefix(b.TCPURL, "tcp://"))
	o := mqtt.NewClientOptions().
		AddBroker("tcp://" + proxy.addr()).
		SetClientID("device-" + f.devices[0].id). // stable: a persistent session
		SetCleanSession(false).
		SetAutoReconnect(true).
		SetConnectRetryInterval(100 * time.Millisecond).
		SetMaxReconnectInterval(200 * time.Millisecond).
		SetConnectTimeout(5 * time.Second).
		SetWriteTimeout(5 * time.Second)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("device: connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(250) })

	topic, payload, id, err := f.message(0)
	if err != nil {
		t.Fatal(err)
	}
	// paho completes the first token when it resumes the stored message
	// on reconnecting, before the resend is on the wire: watch the proxy.
	if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	waitUntil(t, 30*time.Second, "the device's resend, with DUP, acknowledged", func() (bool, string) {
		state := fmt.Sprintf("%d connections, %d PUBACKs dropped, %d PUBLISH (%d with DUP), %d PUBACKs passed",
			proxy.conns.Load(), proxy.dropped.Load(), proxy.publishes.Load(), proxy.dupPublishes.Load(), proxy.pubacks.Load())
		return proxy.dupPublishes.Load() >= 1 && proxy.pubacks.Load() >= 1, state
	})
	if proxy.dropped.Load() != 1 || proxy.conns.Load() < 2 || proxy.publishes.Load() != 2 {
		t.Fatalf("the proxy saw %d connections, dropped %d PUBACKs, passed %d PUBLISH; want a reconnect, the first PUBACK dropped, the message and its resend",
			proxy.conns.Load(), proxy.dropped.Load(), proxy.publishes.Load())
	}

	// Both copies reached decryptd: one delivered, one duplicate.
	waitUntil(t, 30*time.Second, "one record and one duplicate", func() (bool, string) {
		m, err := scrape(r.addr)
		if err != nil {
			return false, err.Error()
		}
		done := m.Sum("decryptd_messages_processed_total")
		return done >= 2, fmt.Sprintf("%v messages processed", done)
	})
	m := mustScrape(t, r.addr)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"decryptd_messages_processed_total", []string{"outcome", "delivered"}, 1},
		{"decryptd_messages_processed_total", []string{"outcome", "duplicate"}, 1},
		{"decryptd_messages_processed_total", []string{"outcome", "dead_lettered"}, 0},
		{"decryptd_duplicates_total", []string{"cause", "repeat"}, 1},
		{"decryptd_duplicates_total", []string{"cause", "redelivery"}, 0},
		{"decryptd_dead_letters_total", nil, 0},
		{"decryptd_decrypt_failures_total", nil, 0},
	} {
		if got := m.Sum(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	s, err := readSink(r.files.Records)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.IDs) != 1 || s.IDs[0] != id {
		t.Errorf("records sink holds %v, want [%s] once", s.IDs, id)
	}
	if fi, err := os.Stat(r.files.DeadLetter); err == nil && fi.Size() != 0 {
		t.Errorf("dead-letter file holds %d bytes, want none", fi.Size())
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}

// pubackDropper is a TCP proxy between one MQTT client and the broker. It
// passes every byte, and counts the client's PUBLISH packets; the first
// PUBACK the broker sends back it drops, closing that connection (a lost
// acknowledgement, then a lost link). Later connections pass everything.
type pubackDropper struct {
	ln     net.Listener
	target string

	conns, dropped, pubacks atomic.Int32
	publishes, dupPublishes atomic.Int32
	wg                      sync.WaitGroup
}

func startPubackDropper(t *testing.T, target string) *pubackDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pubackDropper{ln: ln, target: target}
	var open sync.Map // net.Conn: struct{}, closed at cleanup
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			dev, err := ln.Accept()
			if err != nil {
				return
			}
			p.conns.Add(1)
			open.Store(dev, struct{}{})
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.relay(dev, &open)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		open.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		p.wg.Wait()
	})
	return p
}

func (p *pubackDropper) addr() string { return p.ln.Addr().String() }

func (p *pubackDropper) relay(dev net.Conn, open *sync.Map) {
	defer dev.Close()
	br, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	open.Store(br, struct{}{})
	defer br.Close()
	go func() {
		// Device to broker: every packet as it is, counting PUBLISHes.
		defer br.Close()
		r := bufio.NewReader(dev)
		for {
			pkt, err := readPacket(r)
			if err != nil {
				return
			}
			if pkt[0]>>4 == 3 {
				p.publishes.Add(1)
				if pkt[0]&0x08 != 0 {
					p.dupPublishes.Add(1)
				}
			}
			if _, err := br.Write(pkt); err != nil {
				return
			}
		}
	}()
	r := bufio.NewReader(br)
	for {
		pkt, err := readPacket(r)
		if err != nil {
			return
		}
		if pkt[0]>>4 == 4 {
			if p.dropped.CompareAndSwap(0, 1) {
				return // the PUBACK is lost, and the link with it
			}
			p.pubacks.Add(1)
		}
		if _, err := dev.Write(pkt); err != nil {
			return
		}
	}
}

// readPacket reads one MQTT control packet: the fixed header (type and
// flags, remaining length as a variable byte integer) and its body.
func readPacket(r *bufio.Reader) ([]byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	pkt := []byte{h}
	n, mult := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return nil, errors.New("mqtt: remaining length over 4 bytes")
		}
		c, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		pkt = append(pkt, c)
		n += int(c&0x7f) * mult
		mult *= 128
		if c&0x80 == 0 {
			break
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return append(pkt, body...), nil
}
