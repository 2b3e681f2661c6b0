package seal

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

type vectors struct {
	Keys []struct {
		KeyID      string `json:"key_id"`
		KeyVersion string `json:"key_version"`
		DEKHex     string `json:"dek_hex"`
	} `json:"keys"`
	Cases []struct {
		Name    string `json:"name"`
		Message string `json:"message"`
	} `json:"cases"`
}

// fixedReader hands out the given bytes, for known-answer tests.
type fixedReader struct{ b []byte }

func (r *fixedReader) Read(p []byte) (int, error) {
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// TestKnownAnswer reseals the public vectors' plaintexts with their nonces
// and must reproduce their SEALED values byte for byte.
func TestKnownAnswer(t *testing.T) {
	raw, err := os.ReadFile("../../testdata/envelope-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	dekHex := map[string]string{}
	for _, k := range v.Keys {
		dekHex[k.KeyID+"@"+k.KeyVersion] = k.DEKHex
	}
	find := func(name string) string {
		for _, c := range v.Cases {
			if c.Name == name {
				return c.Message
			}
		}
		t.Fatalf("no case %s", name)
		return ""
	}

	t.Run("shape A", func(t *testing.T) {
		var m struct {
			ED string `json:"encrypted_data"`
		}
		if err := json.Unmarshal([]byte(find("A/metadata-passthrough")), &m); err != nil {
			t.Fatal(err)
		}
		sealed, _ := base64.StdEncoding.DecodeString(m.ED)
		b, _ := hex.DecodeString(dekHex["device/sensor-001@v2"])
		aead, _ := NewAEAD(b)
		env := Envelope{DeviceID: "sensor-001", Timestamp: 1634567892, KeyVersion: "v2"}
		readings := []byte(`{"temperature":98.60,"heart_rate":72,"spo2":97,"patient_id":"P-0012345"}`)
		msg, err := New(&fixedReader{sealed[:NonceSize]}).AppendShapeA(nil, aead, env, readings, []byte(`{"fw": "1.4.2", "battery": 0.83}`))
		if err != nil {
			t.Fatal(err)
		}
		want := `{"encrypted_data":"` + m.ED + `","key_version":"v2","metadata":{"device_id":"sensor-001","timestamp":1634567892,"fw": "1.4.2", "battery": 0.83}}`
		if string(msg) != want {
			t.Fatalf("got  %s\nwant %s", msg, want)
		}
	})

	t.Run("shape B", func(t *testing.T) {
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(find("B/basic")), &m); err != nil {
			t.Fatal(err)
		}
		b, _ := hex.DecodeString(dekHex["device/sensor-001@v2"])
		aead, _ := NewAEAD(b)
		env := Envelope{DeviceID: "sensor-001", Timestamp: 1634567890, KeyVersion: "v2"}
		for name, plain := range map[string]string{"patient_id": `"P-0012345"`, "medical_record": `"MRN-99887766"`} {
			var field string
			if err := json.Unmarshal(m[name], &field); err != nil {
				t.Fatal(err)
			}
			sealed, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(field, Prefix))
			got, err := New(&fixedReader{sealed[:NonceSize]}).AppendField(nil, aead, env, Pointer(name), []byte(plain))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(m[name]) {
				t.Fatalf("%s: got %s, want %s", name, got, m[name])
			}
		}
	})
}

func TestShapeB(t *testing.T) {
	aead, err := NewAEAD(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	s := New(&fixedReader{bytes.Repeat([]byte{9}, 64)})
	env := Envelope{DeviceID: "d-1", Timestamp: 1700000000000, KeyID: "group/g", KeyVersion: "v1"}
	msg, err := s.AppendShapeB([]byte("prefix:"), aead, env, []Field{
		{Name: "t", Value: []byte(`36.60`)},
		{Name: "a/b~", Value: []byte(`{"x":[1]}`), Seal: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	msg = bytes.TrimPrefix(msg, []byte("prefix:"))
	var m map[string]any
	if err := json.Unmarshal(msg, &m); err != nil {
		t.Fatalf("%s: %v", msg, err)
	}
	if m["device_id"] != "d-1" || m["key_id"] != "group/g" || m["key_version"] != "v1" || m["timestamp"] != 1700000000000.0 || m["t"] != 36.6 {
		t.Fatalf("message %s", msg)
	}
	text, _ := m["a/b~"].(string)
	sealed, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(text, Prefix))
	if err != nil || !strings.HasPrefix(text, Prefix) {
		t.Fatalf("field %q: %v", text, err)
	}
	pt, err := aead.Open(nil, sealed[:NonceSize], sealed[NonceSize:], []byte("d-1\x001700000000000\x00/a~1b~0"))
	if err != nil || string(pt) != `{"x":[1]}` {
		t.Fatalf("open with the spec's AAD: %q, %v", pt, err)
	}
}

func TestPointer(t *testing.T) {
	cases := map[string][]string{
		"":              nil,
		"/patient_id":   {"patient_id"},
		"/vitals/ecg":   {"vitals", "ecg"},
		"/readings/0":   {"readings", "0"},
		"/a~1b/~0~1~01": {"a/b", "~/~1"},
		"/":             {""},
	}
	for want, tokens := range cases {
		if got := Pointer(tokens...); got != want {
			t.Errorf("Pointer(%q) = %q, want %q", tokens, got, want)
		}
	}
}

func TestRefuses(t *testing.T) {
	aead, _ := NewAEAD(make([]byte, 32))
	s := New(nil)
	good := Envelope{DeviceID: "d", Timestamp: 1, KeyVersion: "v1"}
	if _, err := NewAEAD(make([]byte, 16)); err == nil {
		t.Error("16-byte DEK accepted")
	}
	for _, env := range []Envelope{
		{DeviceID: "", Timestamp: 1, KeyVersion: "v1"},
		{DeviceID: "a b", Timestamp: 1, KeyVersion: "v1"},
		{DeviceID: "d", Timestamp: -1, KeyVersion: "v1"},
		{DeviceID: "d", Timestamp: 1, KeyVersion: "v/1"},
		{DeviceID: "d", Timestamp: 1, KeyVersion: "v1", KeyID: "k\""},
		{DeviceID: "d", Timestamp: 1},
	} {
		if _, err := s.AppendShapeA(nil, aead, env, []byte(`{}`), nil); err == nil {
			t.Errorf("envelope %+v accepted", env)
		}
	}
	for _, readings := range []string{`[]`, `{`, ``, `"x"`} {
		if _, err := s.AppendShapeA(nil, aead, good, []byte(readings), nil); err == nil {
			t.Errorf("readings %q accepted", readings)
		}
	}
	for _, f := range []Field{{Name: "device_id", Value: []byte(`1`)}, {Name: "x", Value: []byte(`{`)}} {
		if _, err := s.AppendShapeB(nil, aead, good, []Field{f}); err == nil {
			t.Errorf("field %+v accepted", f)
		}
	}
	noVersion := Envelope{DeviceID: "d", Timestamp: 1}
	if _, err := s.AppendShapeB(nil, aead, noVersion, []Field{{Name: "x", Value: []byte(`1`), Seal: true}}); err == nil {
		t.Error("sealed field without key version accepted")
	}
	if _, err := s.AppendShapeB(nil, aead, noVersion, []Field{{Name: "x", Value: []byte(`1`)}}); err != nil {
		t.Errorf("unencrypted shape B: %v", err)
	}
}
