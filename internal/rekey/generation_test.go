package rekey_test

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/rekey"
)

// TestGenerationRoundTrip: a message with a generation parses back to the
// same header and opens from sealed_dek_gen; its sealed_dek still opens
// for a device of the original v1.
func TestGenerationRoundTrip(t *testing.T) {
	wrapKey, newKey := make([]byte, 32), make([]byte, 32)
	rand.Read(wrapKey)
	rand.Read(newKey)
	h := rekey.Header{DeviceID: "d-1", KeyID: "device/d-1", NewVersion: "v7", WrapKeyID: "device/d-1", WrapKeyVersion: "v6", Generation: 7}
	msg, err := rekey.Seal(rand.Reader, gcm(t, wrapKey), h, newKey, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	m, err := rekey.Parse(msg)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header != h || m.IssuedAt != 1700000000 || len(m.SealedGen) != rekey.SealedSize {
		t.Fatalf("parsed %+v", m)
	}
	got, err := m.Open(gcm(t, wrapKey))
	if err != nil || !bytes.Equal(got, newKey) {
		t.Fatal("open from sealed_dek_gen failed", err)
	}
	old := m
	old.Generation, old.SealedGen = 0, nil // what a v1 device reads
	if got, err := old.Open(gcm(t, wrapKey)); err != nil || !bytes.Equal(got, newKey) {
		t.Fatal("open from sealed_dek failed", err)
	}
}

// TestGenerationTamper: the generation and issued_at are bound by
// sealed_dek_gen, as the names are.
func TestGenerationTamper(t *testing.T) {
	wrapKey := make([]byte, 32)
	wrap := gcm(t, wrapKey)
	h := rekey.Header{DeviceID: "d-1", KeyID: "device/d-1", NewVersion: "v3", WrapKeyID: "device/d-1", WrapKeyVersion: "v2", Generation: 3}
	msg, err := rekey.Seal(rand.Reader, wrap, h, make([]byte, 32), time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := rekey.Seal(rand.Reader, wrap, h, make([]byte, 32), time.Unix(1700000000, 0))
	var o map[string]any
	json.Unmarshal(other, &o)
	for _, tc := range []struct {
		name string
		edit func(m map[string]any)
	}{
		{"generation raised", func(m map[string]any) { m["generation"] = 4 }},
		{"generation lowered", func(m map[string]any) { m["generation"] = 2 }},
		{"issued_at", func(m map[string]any) { m["issued_at"] = 1700000001 }},
		{"other device", func(m map[string]any) { m["device_id"] = "d-2" }},
		{"other version", func(m map[string]any) { m["new_version"] = "v4" }},
		{"other wrap version", func(m map[string]any) { m["wrap_key_version"] = "v1" }},
		{"sealed_dek_gen of another message, its sealed_dek kept", func(m map[string]any) { m["sealed_dek"] = o["sealed_dek_gen"] }},
		{"sealed_dek in place of sealed_dek_gen", func(m map[string]any) { m["sealed_dek_gen"] = m["sealed_dek"] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m map[string]any
			json.Unmarshal(msg, &m)
			tc.edit(m)
			raw, _ := json.Marshal(m)
			p, err := rekey.Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			if tc.name == "sealed_dek_gen of another message, its sealed_dek kept" {
				// sealed_dek is not what a generation-aware reader opens;
				// a v1 reader opening it fails.
				p.Generation = 0
			}
			if _, err := p.Open(wrap); !errors.Is(err, rekey.ErrAuth) {
				t.Fatalf("got %v, want ErrAuth", err)
			}
		})
	}
}

func TestGenerationOf(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want uint64
		ok   bool
	}{
		{"v1", 1, true}, {"v42", 42, true}, {"v9007199254740991", 1<<53 - 1, true},
		{"v0", 0, false}, {"v01", 0, false}, {"v", 0, false}, {"2026-q4", 0, false},
		{"v-1", 0, false}, {"v+1", 0, false}, {"v9007199254740992", 0, false}, {"V3", 0, false},
	} {
		got, ok := rekey.GenerationOf(tc.v)
		if got != tc.want || ok != tc.ok {
			t.Errorf("GenerationOf(%q) = %d, %v; want %d, %v", tc.v, got, ok, tc.want, tc.ok)
		}
	}
}

func TestSealRefusesBadGeneration(t *testing.T) {
	h := rekey.Header{DeviceID: "d-1", KeyID: "device/d-1", NewVersion: "v3", WrapKeyID: "device/d-1", WrapKeyVersion: "v2", Generation: 1 << 53}
	if _, err := rekey.Seal(rand.Reader, gcm(t, make([]byte, 32)), h, make([]byte, 32), time.Now()); !errors.Is(err, rekey.ErrMalformed) {
		t.Fatalf("got %v", err)
	}
}

// FuzzTake: whatever arrives, Take never installs a generation at or below
// the floor, nor one without a generation once the floor is set, and a
// repeat or a refusal carries no key.
func FuzzTake(f *testing.F) {
	cases := publishedCases(f).Cases
	for _, c := range cases {
		f.Add([]byte(c.Message), uint8(0))
	}
	f.Fuzz(func(t *testing.T, msg []byte, which uint8) {
		c := cases[int(which)%len(cases)]
		k := keyring{t, c.Device}
		tk, err := rekey.Take(msg, k)
		if err != nil || tk.Repeat {
			if tk.DEK != nil {
				t.Fatal("a key came with a refusal or a repeat")
			}
			return
		}
		floor := k.Floor(tk.KeyID)
		if (tk.Generation == 0 && floor > 0) || (tk.Generation > 0 && tk.Generation <= floor) {
			t.Fatalf("installed generation %d at floor %d", tk.Generation, floor)
		}
		if len(tk.DEK) != rekey.DEKSize {
			t.Fatal("installed without a key")
		}
	})
}
