package decrypt_test

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/seal"
)

// oneKey resolves a single DEK version for its own device.
type oneKey struct{ aead cipher.AEAD }

func (k oneKey) ResolveKey(_ context.Context, keyID, keyVersion, deviceID string) (cipher.AEAD, error) {
	if keyID != dek.DeviceKeyID(deviceID) || deviceID != "sensor-001" || keyVersion != "v2" {
		return nil, dek.ErrUnknownKey
	}
	return k.aead, nil
}

// A device seals one field of a shape B message; the daemon opens it, and
// refuses the same message sent again.
func Example() {
	aead, err := seal.NewAEAD(bytes.Repeat([]byte{0x42}, 32))
	if err != nil {
		panic(err)
	}
	msg, err := seal.New(rand.Reader).AppendShapeB(nil, aead,
		seal.Envelope{DeviceID: "sensor-001", Timestamp: 1634567890, KeyVersion: "v2"},
		[]seal.Field{
			{Name: "temperature", Value: []byte(`98.60`)},
			{Name: "patient_id", Value: []byte(`"P-0012345"`), Seal: true},
		})
	if err != nil {
		panic(err)
	}
	fmt.Println("sealed on the wire:", !bytes.Contains(msg, []byte("P-0012345")))

	d, err := decrypt.New(oneKey{aead}, decrypt.Options{})
	if err != nil {
		panic(err)
	}
	m := decrypt.Message{Topic: "iot-2/type/monitor/id/sensor-001/evt/telemetry/fmt/json", Payload: msg}
	rec, err := d.Open(context.Background(), m)
	if err != nil {
		panic(err)
	}
	fmt.Println(rec.DeviceID, rec.KeyID, rec.KeyVersion, rec.Timestamp)
	fmt.Println(string(rec.Data))

	// The same message again (a QoS 1 device resending what it got no
	// PUBACK for) is a duplicate; its bytes on another topic, a replay.
	_, err = d.Open(context.Background(), m)
	fmt.Println("again:", errors.Is(err, decrypt.ErrDuplicate))
	m.Topic = "iot-2/type/monitor/id/sensor-001/evt/other/fmt/json"
	_, err = d.Open(context.Background(), m)
	fmt.Println("moved:", decrypt.Reason(err))
	// Output:
	// sealed on the wire: true
	// sensor-001 device/sensor-001 v2 1634567890
	// {"temperature":98.60,"patient_id":"P-0012345"}
	// again: true
	// moved: replay
}
