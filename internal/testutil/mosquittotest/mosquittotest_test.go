package mosquittotest

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func connect(t *testing.T, url, id string, tlsCfg *tls.Config, clean bool, h mqtt.MessageHandler) (mqtt.Client, error) {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetOrderMatters(false)
	if tlsCfg != nil {
		o.SetTLSConfig(tlsCfg)
	}
	if h != nil {
		o.SetDefaultPublishHandler(h)
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

func wait(t *testing.T, tok mqtt.Token) {
	t.Helper()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("token timed out")
	}
	if err := tok.Error(); err != nil {
		t.Fatal(err)
	}
}

func TestBroker(t *testing.T) {
	b := Start(t, Options{Plain: true})
	got := make(chan mqtt.Message, 10)

	t.Run("mutual TLS with a client certificate", func(t *testing.T) {
		sub, err := connect(t, b.SSLURL, "sub", b.ClientTLS("sub"), false, func(_ mqtt.Client, m mqtt.Message) { got <- m })
		if err != nil {
			t.Fatal(err)
		}
		wait(t, sub.Subscribe("t/#", 1, nil))
		pub, err := connect(t, b.TCPURL, "pub", nil, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		wait(t, pub.Publish("t/1", 1, false, "hello"))
		select {
		case m := <-got:
			if string(m.Payload()) != "hello" {
				t.Fatalf("payload %q", m.Payload())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no message")
		}
	})

	t.Run("no client certificate is refused", func(t *testing.T) {
		cfg := b.ClientTLS("nocert")
		cfg.Certificates = nil
		_, err := connect(t, b.SSLURL, "nocert", cfg, true, nil)
		// Under TLS 1.3 the client finishes its side of the handshake before
		// the server checks the certificate, so the client sees the alert
		// ("certificate required") or, if its CONNECT write races the close,
		// a reset. The broker's log says why deterministically.
		if err == nil {
			t.Fatal("connected without a client certificate")
		}
		if !RefusedTLS(err) {
			t.Fatalf("connect without certificate: %v, want a TLS refusal", err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(b.Log(), "peer did not return a certificate") {
			if time.Now().After(deadline) {
				t.Fatal("broker log does not show the missing certificate")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("restart keeps a durable session and its queue", func(t *testing.T) {
		// The durable subscriber "sub" from the first subtest is offline
		// once its cleanup ran; queue a message for it across a restart.
		pub, err := connect(t, b.TCPURL, "pub2", nil, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		wait(t, pub.Publish("t/2", 1, false, "queued"))
		pub.Disconnect(100)
		b.Restart()
		if !b.Running() {
			t.Fatal("not running after restart")
		}
		if _, err := connect(t, b.SSLURL, "sub", b.ClientTLS("sub"), false, func(_ mqtt.Client, m mqtt.Message) { got <- m }); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-got:
			if string(m.Payload()) != "queued" {
				t.Fatalf("payload %q", m.Payload())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("queued message lost across restart")
		}
	})

	t.Run("kill", func(t *testing.T) {
		b.Kill()
		if b.Running() {
			t.Fatal("running after Kill")
		}
		b.Restart()
		if !b.Running() {
			t.Fatal("not running after restart")
		}
	})
}
