package spool

import (
	"bytes"
	"testing"
)

// FuzzDecodeRecord: the decoder never panics nor reads past its input, and
// a message it accepts survives a re-encoding unchanged.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(appendRecord(nil, msg("a", 1)))
	f.Add(appendRecord(nil, msg("device-with-a-long-name", 3)))
	f.Add(appendRecord(nil, kafkaMsg("k", 4)))
	f.Add([]byte{})
	f.Add(make([]byte, recHeader+10))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeRecord(b)
		if err != nil {
			return
		}
		got, err := decodeRecord(appendRecord(nil, m))
		if err != nil {
			t.Fatalf("re-encoded record refused: %v", err)
		}
		if got.Topic != m.Topic || got.DeviceID != m.DeviceID || got.Source != m.Source || !bytes.Equal(got.Payload, m.Payload) ||
			got.Redelivered != m.Redelivered || !got.ReceivedAt.Equal(m.ReceivedAt) || got.Position != m.Position {
			t.Fatalf("round trip changed the message: %+v != %+v", got, m)
		}
	})
}
