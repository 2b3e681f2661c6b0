package decrypt

import (
	"context"
	"encoding/hex"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/seal"
)

// BenchmarkStages splits BenchmarkDecrypt/shapeA into its stages, each run
// alone over the same messages: where a message's time goes. Each reports
// cpu-ns/op as BenchmarkDecrypt does (the steadier figure on a shared
// machine).
func BenchmarkStages(b *testing.B) {
	dekBytes, _ := hex.DecodeString("bc09d6f6cd7b59b8fe1706c0833b261500ceb9943408ca3dec61ef1905f2436b")
	aead, err := seal.NewAEAD(dekBytes)
	if err != nil {
		b.Fatal(err)
	}
	s := seal.New(&countingReader{})
	const topic = "iot-2/type/monitor/id/sensor-001/evt/telemetry/fmt/encrypted"
	msgs := make([][]byte, benchMessages)
	for i := range msgs {
		env := seal.Envelope{DeviceID: "sensor-001", Timestamp: 1634567890 + int64(i), KeyVersion: "v2"}
		msgs[i], err = s.AppendShapeA(nil, aead, env, []byte(benchReadings), []byte(`{"fw":"1.4.2","battery":0.83}`))
		if err != nil {
			b.Fatal(err)
		}
	}
	keys := oneKeyResolver{keyID: "device/sensor-001", version: "v2", deviceID: "sensor-001", aead: aead}
	d, err := New(keys, Options{ReplayDisabled: true})
	if err != nil {
		b.Fatal(err)
	}
	st := new(state)
	b.Run("scan", func(b *testing.B) {
		b.ReportAllocs()
		cpu := startCPU()
		for i := 0; b.Loop(); i++ {
			if _, _, err := st.msg.document(msgs[i%benchMessages], true); err != nil {
				b.Fatal(err)
			}
		}
		cpu.report(b)
	})
	b.Run("parse", func(b *testing.B) { // scan + envelope checks + base64
		b.ReportAllocs()
		cpu := startCPU()
		for i := 0; b.Loop(); i++ {
			if _, err := st.parse(msgs[i%benchMessages]); err != nil {
				b.Fatal(err)
			}
		}
		cpu.report(b)
	})
	b.Run("topic", func(b *testing.B) {
		cpu := startCPU()
		for b.Loop() {
			if _, ok := d.topic.DeviceID(topic); !ok {
				b.Fatal("no device id")
			}
		}
		cpu.report(b)
	})
	b.Run("plaintext-scan", func(b *testing.B) {
		pt := []byte(benchReadings)
		cpu := startCPU()
		for b.Loop() {
			if _, _, err := st.sub.document(pt, false); err != nil {
				b.Fatal(err)
			}
		}
		cpu.report(b)
	})
	b.Run("id+key", func(b *testing.B) { // newRecord: SHA-256, hex, names
		env, err := st.parse(msgs[0])
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		cpu := startCPU()
		for b.Loop() {
			var rec Record
			id := st.replayKeys(&env)
			st.newRecord(&rec, Message{Topic: topic}, time.Time{}, &env, &id)
		}
		cpu.report(b)
	})
	b.Run("digest", func(b *testing.B) {
		w := newWindow(16, time.Hour)
		cpu := startCPU()
		for i := 0; b.Loop(); i++ {
			w.dg.digest(topic, msgs[i%benchMessages])
		}
		cpu.report(b)
	})
	b.Run("open-no-window", func(b *testing.B) {
		ctx := context.Background()
		received := time.Now()
		b.ReportAllocs()
		cpu := startCPU()
		for i := 0; b.Loop(); i++ {
			if _, err := d.Open(ctx, Message{Topic: topic, Payload: msgs[i%benchMessages], ReceivedAt: received}); err != nil {
				b.Fatal(err)
			}
		}
		cpu.report(b)
	})
}
