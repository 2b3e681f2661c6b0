package decrypt

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/seal"
)

func BenchmarkZZParts(b *testing.B) {
	dekBytes, _ := hex.DecodeString("bc09d6f6cd7b59b8fe1706c0833b261500ceb9943408ca3dec61ef1905f2436b")
	keys := newFakeKeys()
	aead := keys.add(b, "device/sensor-001", "v2", dekBytes, dek.StateActive)
	s := seal.New(&countingReader{})
	env := seal.Envelope{DeviceID: "sensor-001", Timestamp: 1634567890, KeyVersion: "v2"}
	msg, _ := s.AppendShapeA(nil, aead, env, []byte(benchReadings), []byte(`{"fw":"1.4.2","battery":0.83}`))
	b.Logf("msg %d bytes", len(msg))
	b.Run("scan-msg", func(b *testing.B) {
		var sc scanner
		for b.Loop() {
			sc.document(msg, true)
		}
	})
	b.Run("parse", func(b *testing.B) {
		var st state
		for b.Loop() {
			st.parse(msg)
			st.wipe()
		}
	})
	b.Run("scan-plain", func(b *testing.B) {
		var sc scanner
		for b.Loop() {
			sc.document([]byte(benchReadings), false)
		}
	})
	b.Run("sha256", func(b *testing.B) {
		in := []byte("device/sensor-001\x00v2\x00123456789012")
		for b.Loop() {
			sha256.Sum256(in)
		}
	})
	b.Run("now", func(b *testing.B) {
		for b.Loop() {
			time.Now()
		}
	})
	b.Run("resolve", func(b *testing.B) {
		for b.Loop() {
			keys.ResolveKey(context.Background(), "device/sensor-001", "v2", "sensor-001")
		}
	})
	b.Run("window", func(b *testing.B) {
		w := newWindow(2048, time.Hour)
		keys := make([]replayKey, 8192)
		for i := range keys {
			sum := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
			copy(keys[i][:], sum[:])
		}
		now := time.Now().UnixNano()
		for i := 0; b.Loop(); i++ {
			w.admit(keys[i%8192:i%8192+1], false, now)
		}
	})
	b.Run("window1M", func(b *testing.B) {
		w := newWindow(1_000_000, time.Hour)
		now := time.Now().UnixNano()
		var k [1]replayKey
		for i := range 1_000_000 {
			sum := sha256.Sum256([]byte{byte(i), byte(i >> 8), byte(i >> 16), 1})
			copy(k[0][:], sum[:])
			w.admit(k[:], false, now)
		}
		keys := make([]replayKey, 1<<16)
		for i := range keys {
			sum := sha256.Sum256([]byte{byte(i), byte(i >> 8), 2})
			copy(keys[i][:], sum[:])
		}
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			w.admit(keys[i%len(keys):i%len(keys)+1], false, now)
		}
	})
	b.Run("alloc2", func(b *testing.B) {
		b.ReportAllocs()
		var sink []byte
		var ss string
		for b.Loop() {
			sink = make([]byte, 100)
			ss = string(sink[:90])
		}
		_ = ss
	})
}
