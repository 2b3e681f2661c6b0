package demo

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/decryptd/decryptd/internal/rekey"
	"github.com/decryptd/decryptd/internal/seal"
)

// fleet publishes the devices' readings, and a bad message of each kind in
// turn, over one mutual-TLS MQTT connection.
type fleet struct {
	client mqtt.Client
	devs   []*device
	sealer *seal.Sealer
	out    io.Writer
	rnd    *rand.Rand

	good int
	bad  map[string]int // by the reason the daemon should report
	// sentUnder counts good messages by device and key version
	// ("monitor-001 v2").
	sentUnder map[string]int
	last      []byte // a good message already sent, for the replay
	seq       int
}

func newFleet(ctx context.Context, brokerURL string, tc *tls.Config, devs []*device, out io.Writer) (*fleet, error) {
	co := mqtt.NewClientOptions().
		AddBroker(brokerURL).
		SetClientID("demo-fleet").
		SetTLSConfig(tc).
		SetCleanSession(true).
		SetAutoReconnect(true).
		SetConnectTimeout(10 * time.Second)
	c := mqtt.NewClient(co)
	tok := c.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("fleet: connect: %w", err)
	}
	f := &fleet{
		client: c, devs: devs, sealer: seal.New(nil), out: out,
		rnd: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7)),
		bad: map[string]int{}, sentUnder: map[string]int{},
	}
	// Rekeys (docs/rekey-v1.md) on the devices' command topics: each
	// device opens its own with the key it holds and seals under the new
	// version from then on, as a real device does.
	sub := c.Subscribe("iot-2/type/monitor/id/+/cmd/rekey/fmt/json", 1, f.onRekey)
	select {
	case <-sub.Done():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := sub.Error(); err != nil {
		return nil, fmt.Errorf("fleet: subscribe to rekeys: %w", err)
	}
	return f, nil
}

// onRekey installs a rekey on its device (own keys only: the demo rotates
// a device key).
func (f *fleet) onRekey(_ mqtt.Client, msg mqtt.Message) {
	m, err := rekey.Parse(msg.Payload())
	if err != nil {
		fmt.Fprintf(f.out, "fleet: a rekey on %s does not parse: %v\n", msg.Topic(), err)
		return
	}
	for _, d := range f.devs {
		if d.id != m.DeviceID || d.keyID != "" {
			continue
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if m.WrapKeyVersion != d.version {
			fmt.Fprintf(f.out, "fleet: %s ignores a rekey sealed under %s (it holds %s)\n", d.id, m.WrapKeyVersion, d.version)
			return
		}
		k, err := m.Open(d.aead)
		if err != nil {
			fmt.Fprintf(f.out, "fleet: %s cannot open its rekey: %v\n", d.id, err)
			return
		}
		a, err := seal.NewAEAD(k)
		clear(k)
		if err != nil {
			return
		}
		fmt.Fprintf(f.out, "fleet: %s took a rekey: key %s installed (it came sealed under %s); its messages use %s from now on\n",
			d.id, m.NewVersion, d.version, m.NewVersion)
		d.aead, d.version = a, m.NewVersion
		return
	}
}

// recordsUnder is how many good messages deviceID sent under version.
func (f *fleet) recordsUnder(deviceID, version string) int {
	return f.sentUnder[deviceID+" "+version]
}

func (f *fleet) close() { f.client.Disconnect(250) }

func (f *fleet) badTotal() int {
	n := 0
	for _, v := range f.bad {
		n += v
	}
	return n
}

func topicOf(deviceID string) string {
	return "iot-2/type/monitor/id/" + deviceID + "/evt/telemetry/fmt/json"
}

// run sends one round per interval until ctx ends.
func (f *fleet) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for round := 0; ; round++ {
		for _, d := range f.devs {
			if d.id == "monitor-099" {
				continue // its key is revoked: only the bad-message turn uses it
			}
			msg, version, err := f.readingOf(d)
			if err != nil {
				fmt.Fprintf(f.out, "fleet: seal %s: %v\n", d.id, err)
				continue
			}
			if f.publish(ctx, topicOf(d.id), msg) {
				f.good++
				f.sentUnder[d.id+" "+version]++
				f.last = msg
			}
		}
		f.sendBad(ctx, round)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (f *fleet) publish(ctx context.Context, topic string, payload []byte) bool {
	if ctx.Err() != nil {
		return false
	}
	tok := f.client.Publish(topic, 1, false, payload)
	// Wait for the PUBACK even when ctx ends meanwhile: a message the broker
	// took is on its way to the daemon and must be in the fleet's tally, or
	// the summary would disagree with the daemon's counts.
	return tok.WaitTimeout(10*time.Second) && tok.Error() == nil
}

func (f *fleet) now(d *device) int64 {
	if d.millis {
		return time.Now().UnixMilli()
	}
	return time.Now().Unix()
}

// readingOf is reading, also returning the key version it sealed under.
func (f *fleet) readingOf(d *device) ([]byte, string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := f.sealReading(d)
	return m, d.version, err
}

// reading seals plausible vital signs: shape A (the whole reading) or
// shape B (only the identifying fields sealed).
func (f *fleet) reading(d *device) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return f.sealReading(d)
}

// sealReading is reading; the caller holds d.mu.
func (f *fleet) sealReading(d *device) ([]byte, error) {
	f.seq++
	env := seal.Envelope{DeviceID: d.id, Timestamp: f.now(d), KeyID: d.keyID, KeyVersion: d.version}
	hr := 58 + f.rnd.IntN(40)
	spo2 := 93 + f.rnd.IntN(7)
	temp := 36.2 + float64(f.rnd.IntN(19))/10
	patient := `"P-` + strconv.Itoa(100000+f.rnd.IntN(900000)) + `"`
	if d.shapeB {
		return f.sealer.AppendShapeB(nil, d.aead, env, []seal.Field{
			{Name: "heart_rate", Value: []byte(strconv.Itoa(hr))},
			{Name: "spo2", Value: []byte(strconv.Itoa(spo2))},
			{Name: "temperature_c", Value: []byte(strconv.FormatFloat(temp, 'f', 1, 64))},
			{Name: "patient_id", Value: []byte(patient), Seal: true},
			{Name: "notes", Value: []byte(`"stable, seq ` + strconv.Itoa(f.seq) + `"`), Seal: true},
		})
	}
	readings := fmt.Sprintf(`{"heart_rate":%d,"spo2":%d,"temperature_c":%.1f,"patient_id":%s,"seq":%d}`, hr, spo2, temp, patient, f.seq)
	return f.sealer.AppendShapeA(nil, d.aead, env, []byte(readings), []byte(`{"fw":"2.3.1"}`))
}

// sendBad sends one bad message per round, each kind in turn.
func (f *fleet) sendBad(ctx context.Context, round int) {
	kinds := []struct {
		reason, what string
		make         func() (topic string, payload []byte, err error)
	}{
		{"auth_failed", "tampered ciphertext", func() (string, []byte, error) {
			d := f.devs[0]
			m, err := f.reading(d)
			if err != nil {
				return "", nil, err
			}
			// Change one base64 character in the middle of the sealed data.
			i := bytes.Index(m, []byte(`"encrypted_data":"`)) + len(`"encrypted_data":"`) + 20
			if m[i] == 'A' {
				m[i] = 'B'
			} else {
				m[i] = 'A'
			}
			return topicOf(d.id), m, nil
		}},
		{"unknown_key", "unknown key version", func() (string, []byte, error) {
			d := f.devs[0]
			d.mu.Lock()
			defer d.mu.Unlock()
			m, err := f.sealer.AppendShapeA(nil, d.aead, seal.Envelope{DeviceID: d.id, Timestamp: f.now(d), KeyVersion: "v9"}, []byte(`{"heart_rate":70}`), nil)
			return topicOf(d.id), m, err
		}},
		{"key_revoked", "message under a revoked key", func() (string, []byte, error) {
			d := f.devs[len(f.devs)-1]
			m, err := f.reading(d)
			return topicOf(d.id), m, err
		}},
		{"topic_mismatch", "message on another device's topic", func() (string, []byte, error) {
			m, err := f.reading(f.devs[0])
			return topicOf(f.devs[1].id), m, err
		}},
		{"malformed", "malformed message", func() (string, []byte, error) {
			if round%2 == 0 {
				return topicOf(f.devs[0].id), []byte(`{"device_id":"monitor-001","timestamp":1634567890.5,"key_version":"v1"}`), nil
			}
			return topicOf(f.devs[0].id), []byte("heart_rate=72;spo2=97"), nil
		}},
		{"replay", "replayed message", func() (string, []byte, error) {
			if f.last == nil {
				return "", nil, nil
			}
			// The last good message's sealed value in another message
			// (an exact copy would be a duplicate: envelope amendment 1).
			return topicFromPayload(f.last), append([]byte("{ "), f.last[1:]...), nil
		}},
	}
	k := kinds[round%len(kinds)]
	topic, payload, err := k.make()
	if err != nil || payload == nil {
		return
	}
	if f.publish(ctx, topic, payload) {
		f.bad[k.reason]++
		fmt.Fprintf(f.out, "fleet: sent a bad message: %s (expect dead letter, reason %s)\n", k.what, k.reason)
	}
}

// topicFromPayload finds the device a message claims and its topic.
func topicFromPayload(m []byte) string {
	for _, key := range []string{`"device_id":"`} {
		if i := bytes.Index(m, []byte(key)); i >= 0 {
			rest := m[i+len(key):]
			if j := bytes.IndexByte(rest, '"'); j >= 0 {
				return topicOf(string(rest[:j]))
			}
		}
	}
	return topicOf("unknown")
}
