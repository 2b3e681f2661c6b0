package rekey_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/rekey"
)

func gcm(t testing.TB, key []byte) cipher.AEAD {
	t.Helper()
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type vector struct {
	Name    string `json:"name"`
	Wrap    string `json:"wrap_dek_hex"`
	New     string `json:"new_dek_hex"`
	AAD     string `json:"aad_hex"`
	Message string `json:"message"`
}

func loadVectors(t testing.TB) []vector {
	raw, err := os.ReadFile("testdata/rekey-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Cases []vector }
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return v.Cases
}

// TestVectors opens the vectors made by an independent implementation.
func TestVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			m, err := rekey.Parse([]byte(v.Message))
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(m.AAD()); got != v.AAD {
				t.Fatalf("AAD %s, want %s", got, v.AAD)
			}
			dek, err := m.Open(gcm(t, unhex(t, v.Wrap)))
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(dek) != v.New {
				t.Fatal("wrong DEK")
			}
		})
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	wrapKey, newKey := make([]byte, 32), make([]byte, 32)
	rand.Read(wrapKey)
	rand.Read(newKey)
	h := rekey.Header{DeviceID: "d-1", KeyID: "device/d-1", NewVersion: "v2", WrapKeyID: "device/d-1", WrapKeyVersion: "v1"}
	msg, err := rekey.Seal(rand.Reader, gcm(t, wrapKey), h, newKey, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(msg, newKey) || strings.Contains(string(msg), hex.EncodeToString(newKey)) {
		t.Fatal("message holds the key in the clear")
	}
	m, err := rekey.Parse(msg)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header != h || m.IssuedAt != 1700000000 {
		t.Fatalf("parsed %+v", m)
	}
	got, err := m.Open(gcm(t, wrapKey))
	if err != nil || !bytes.Equal(got, newKey) {
		t.Fatal("round trip failed", err)
	}
	if got := rekey.Topic("", "monitor", "d-1"); got != "iot-2/type/monitor/id/d-1/cmd/rekey/fmt/json" {
		t.Fatal(got)
	}
}

// TestTamper: any change to a bound name, the sealed bytes or the key fails.
func TestTamper(t *testing.T) {
	v := loadVectors(t)[0]
	wrap := gcm(t, unhex(t, v.Wrap))
	for _, tc := range []struct {
		name string
		edit func(m map[string]any)
	}{
		{"other device", func(m map[string]any) { m["device_id"] = "sensor-002" }},
		{"other key id", func(m map[string]any) { m["key_id"] = "device/sensor-002" }},
		{"other version", func(m map[string]any) { m["new_version"] = "v4" }},
		{"other wrap version", func(m map[string]any) { m["wrap_key_version"] = "v1" }},
		{"other wrap key", func(m map[string]any) { m["wrap_key_id"] = "group/g" }},
		{"bit flipped", func(m map[string]any) {
			s := []byte(m["sealed_dek"].(string))
			if s[20] == 'A' {
				s[20] = 'B'
			} else {
				s[20] = 'A'
			}
			m["sealed_dek"] = string(s)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m map[string]any
			json.Unmarshal([]byte(v.Message), &m)
			tc.edit(m)
			raw, _ := json.Marshal(m)
			msg, err := rekey.Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := msg.Open(wrap); !errors.Is(err, rekey.ErrAuth) {
				t.Fatalf("got %v, want ErrAuth", err)
			}
		})
	}
	t.Run("wrong key", func(t *testing.T) {
		m, _ := rekey.Parse([]byte(v.Message))
		if _, err := m.Open(gcm(t, make([]byte, 32))); !errors.Is(err, rekey.ErrAuth) {
			t.Fatal(err)
		}
	})
}

func TestParseMalformed(t *testing.T) {
	good := loadVectors(t)[0].Message
	for _, tc := range []struct{ name, msg string }{
		{"not json", "nope"},
		{"array", "[]"},
		{"type", strings.Replace(good, `"type":"rekey"`, `"type":"other"`, 1)},
		{"version", strings.Replace(good, `"v":1`, `"v":2`, 1)},
		{"version string", strings.Replace(good, `"v":1`, `"v":"1"`, 1)},
		{"missing member", strings.Replace(good, `"issued_at"`, `"issued"`, 1)},
		{"null member", strings.Replace(good, `"new_version":"v3"`, `"new_version":null`, 1)},
		{"repeated member", strings.Replace(good, `"v":1`, `"v":1,"v":1`, 1)},
		{"bad device id", strings.Replace(good, `"device_id":"sensor-001"`, `"device_id":"a b"`, 1)},
		{"bad version", strings.Replace(good, `"new_version":"v3"`, `"new_version":"v/3"`, 1)},
		{"short sealed", strings.Replace(good, `"sealed_dek":"`, `"sealed_dek":"AAAA`, 1)},
		{"bad base64", strings.Replace(good, `"sealed_dek":"`, `"sealed_dek":"*`, 1)},
		{"negative issued_at", strings.Replace(good, `"issued_at":1767225600`, `"issued_at":-1`, 1)},
		{"trailing", good + "{}"},
		{"oversize", `{"x":"` + strings.Repeat("a", rekey.MaxMessage) + `"}`},
		{"sealed under itself", strings.Replace(strings.Replace(good, `"wrap_key_version":"v2"`, `"wrap_key_version":"v3"`, 1), "", "", 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := rekey.Parse([]byte(tc.msg)); !errors.Is(err, rekey.ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, v := range loadVectors(f) {
		f.Add([]byte(v.Message))
	}
	for _, c := range publishedCases(f).Cases {
		f.Add([]byte(c.Message))
	}
	f.Add([]byte(`{}`))
	wrap := gcm(f, make([]byte, 32))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := rekey.Parse(b)
		if err != nil {
			if !errors.Is(err, rekey.ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		if len(m.Sealed) != rekey.SealedSize || (m.Generation > 0) != (len(m.SealedGen) == rekey.SealedSize) {
			t.Fatal("accepted a bad length")
		}
		if m.Generation > rekey.MaxGeneration {
			t.Fatal("accepted a generation above 2^53-1")
		}
		_, _ = m.Open(wrap)
	})
}
