package decrypt

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/seal"
)

// tamperKit seals messages for the tamper table under a group key that
// two devices may use, so a message moved to the other device reaches the
// tag check instead of stopping at the key lookup.
type tamperKit struct {
	d    *Decryptor
	s    *seal.Sealer
	keys *fakeKeys
	env  seal.Envelope
}

const plainMarker = "SECRET-PLAINTEXT-7f3a"

func newTamperKit(t *testing.T) *tamperKit {
	t.Helper()
	keys := newFakeKeys()
	keys.add(t, "group/ward-7", "v1", bytes.Repeat([]byte{7}, 32), dek.StateActive, "dev-a", "dev-b")
	d, err := New(keys, Options{ReplayDisabled: true})
	if err != nil {
		t.Fatal(err)
	}
	return &tamperKit{d: d, s: seal.New(&countingReader{}), keys: keys,
		env: seal.Envelope{DeviceID: "dev-a", Timestamp: 1700000000, KeyID: "group/ward-7", KeyVersion: "v1"}}
}

func (k *tamperKit) open(t *testing.T, payload []byte) (Record, error) {
	t.Helper()
	// No topic pattern match: the tamper table is about the tag alone.
	return k.d.Open(context.Background(), Message{Topic: "test", Payload: payload, ReceivedAt: time.Unix(1, 0)})
}

// wantAuthFailed checks the reason and that nothing of the plaintext came
// out: no record, and no plaintext in the error text.
func wantAuthFailed(t *testing.T, rec Record, err error) {
	t.Helper()
	if Reason(err) != "auth_failed" {
		t.Fatalf("reason %q (%v), want auth_failed", Reason(err), err)
	}
	if !reflect.DeepEqual(rec, Record{}) {
		t.Fatal("record returned with auth_failed")
	}
	if strings.Contains(err.Error(), plainMarker) || strings.Contains(err.Error(), "P-00") {
		t.Fatalf("error text leaks plaintext: %v", err)
	}
}

func shapeAMessage(sealedB64, keyID, keyVersion, deviceID string, ts int64) []byte {
	return fmt.Appendf(nil, `{"encrypted_data":%q,"key_version":%q,"key_id":%q,"metadata":{"device_id":%q,"timestamp":%d}}`,
		sealedB64, keyVersion, keyID, deviceID, ts)
}

func TestTamperShapeA(t *testing.T) {
	k := newTamperKit(t)
	aead := k.keys.keys[keyRef{"group/ward-7", "v1"}].aead
	readings := []byte(`{"patient_id":"` + plainMarker + `","hr":61}`)
	sealed, err := k.s.Seal(nil, aead, readings, seal.PayloadAAD(nil, k.env.DeviceID, k.env.Timestamp))
	if err != nil {
		t.Fatal(err)
	}
	good := shapeAMessage(base64.StdEncoding.EncodeToString(sealed), "group/ward-7", "v1", "dev-a", k.env.Timestamp)
	if rec, err := k.open(t, good); err != nil || !bytes.Equal(rec.Data, readings) {
		t.Fatalf("untampered message: %v", err)
	}

	for i := range sealed {
		for _, mask := range []byte{0x01, 0x80, 0xff} {
			part := "ciphertext"
			switch {
			case i < 12:
				part = "nonce"
			case i >= len(sealed)-16:
				part = "tag"
			}
			t.Run(fmt.Sprintf("%s byte %d xor %#x", part, i, mask), func(t *testing.T) {
				bad := bytes.Clone(sealed)
				bad[i] ^= mask
				rec, err := k.open(t, shapeAMessage(base64.StdEncoding.EncodeToString(bad), "group/ward-7", "v1", "dev-a", k.env.Timestamp))
				wantAuthFailed(t, rec, err)
			})
		}
	}
	t.Run("truncated tag", func(t *testing.T) {
		rec, err := k.open(t, shapeAMessage(base64.StdEncoding.EncodeToString(sealed[:len(sealed)-1]), "group/ward-7", "v1", "dev-a", k.env.Timestamp))
		wantAuthFailed(t, rec, err)
	})
	t.Run("extra byte", func(t *testing.T) {
		rec, err := k.open(t, shapeAMessage(base64.StdEncoding.EncodeToString(append(bytes.Clone(sealed), 0)), "group/ward-7", "v1", "dev-a", k.env.Timestamp))
		wantAuthFailed(t, rec, err)
	})
	b64 := base64.StdEncoding.EncodeToString(sealed)
	aadCases := []struct {
		name string
		msg  []byte
	}{
		{"device id", shapeAMessage(b64, "group/ward-7", "v1", "dev-b", k.env.Timestamp)},
		{"timestamp +1", shapeAMessage(b64, "group/ward-7", "v1", "dev-a", k.env.Timestamp+1)},
		{"timestamp in ms", shapeAMessage(b64, "group/ward-7", "v1", "dev-a", k.env.Timestamp*1000)},
	}
	for _, c := range aadCases {
		t.Run("aad "+c.name, func(t *testing.T) {
			rec, err := k.open(t, c.msg)
			wantAuthFailed(t, rec, err)
		})
	}
}

func TestTamperShapeB(t *testing.T) {
	k := newTamperKit(t)
	aead := k.keys.keys[keyRef{"group/ward-7", "v1"}].aead
	field := func(env seal.Envelope, ptr, value string) string {
		b, err := k.s.AppendField(nil, aead, env, ptr, []byte(value))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	head := func(dev string, ts int64) string {
		return fmt.Sprintf(`{"device_id":%q,"timestamp":%d,"key_version":"v1","key_id":"group/ward-7"`, dev, ts)
	}
	env := k.env
	pid := field(env, "/patient_id", `"`+plainMarker+`"`)
	ecg := field(env, "/vitals/ecg", `[0.1,0.25]`)
	mrn := field(env, "/readings/1/mrn", `"MRN-1"`)
	slash := field(env, "/a~1b", `"slash"`)
	build := func(dev string, ts int64, pid, ecg, mrn, slash string) []byte {
		return []byte(head(dev, ts) + `,"patient_id":` + pid + `,"vitals":{"ecg":` + ecg + `},"readings":[1,{"mrn":` + mrn + `}],"a/b":` + slash + `}`)
	}
	good := build("dev-a", env.Timestamp, pid, ecg, mrn, slash)
	rec, err := k.open(t, good)
	if err != nil {
		t.Fatalf("untampered message: %v", err)
	}
	want := `{"patient_id":"` + plainMarker + `","vitals":{"ecg":[0.1,0.25]},"readings":[1,{"mrn":"MRN-1"}],"a/b":"slash"}`
	if string(rec.Data) != want {
		t.Fatalf("data %s, want %s", rec.Data, want)
	}

	cases := []struct {
		name string
		msg  []byte
	}{
		{"device id", build("dev-b", env.Timestamp, pid, ecg, mrn, slash)},
		{"timestamp", build("dev-a", env.Timestamp+1, pid, ecg, mrn, slash)},
		{"fields swapped", build("dev-a", env.Timestamp, mrn, ecg, pid, slash)},
		{"moved to another member", []byte(head("dev-a", env.Timestamp) + `,"patient_idx":` + pid + `}`)},
		{"moved into an object", []byte(head("dev-a", env.Timestamp) + `,"patient_id":{"x":` + pid + `}}`)},
		{"moved into an array", []byte(head("dev-a", env.Timestamp) + `,"patient_id":[` + pid + `]}`)},
		{"moved to another index", []byte(head("dev-a", env.Timestamp) + `,"readings":[{"mrn":` + mrn + `},1]}`)},
		{"pointer escaping: a~1b sealed, a~1b read as member a~1b", []byte(head("dev-a", env.Timestamp) + `,"a~1b":` + slash + `}`)},
		{"one good field, one tampered", build("dev-a", env.Timestamp, pid, ecg, flipB64(t, mrn, 20), slash)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec, err := k.open(t, c.msg)
			wantAuthFailed(t, rec, err)
		})
	}

	// Every byte of one sealed field.
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(strings.TrimPrefix(pid, `"`+seal.Prefix), `"`))
	if err != nil {
		t.Fatal(err)
	}
	for i := range raw {
		bad := bytes.Clone(raw)
		bad[i] ^= 0x01
		badField := `"` + seal.Prefix + base64.StdEncoding.EncodeToString(bad) + `"`
		rec, err := k.open(t, build("dev-a", env.Timestamp, badField, ecg, mrn, slash))
		if Reason(err) != "auth_failed" || !reflect.DeepEqual(rec, Record{}) {
			t.Fatalf("byte %d flipped: reason %q (%v)", i, Reason(err), err)
		}
	}
}

// flipB64 flips one byte of a sealed field's SEALED bytes.
func flipB64(t *testing.T, field string, i int) string {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(strings.TrimPrefix(field, `"`+seal.Prefix), `"`))
	if err != nil {
		t.Fatal(err)
	}
	raw[i] ^= 0x01
	return `"` + seal.Prefix + base64.StdEncoding.EncodeToString(raw) + `"`
}
