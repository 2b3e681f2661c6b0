package rekey_test

import (
	"bytes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/rekey"
)

// publishedPath is the copy device makers read (docs/device-guide.md).
const publishedPath = "../../docs/vectors/rekey-v1.json"

var update = flag.Bool("update", false, "rewrite "+publishedPath+" from the cases made here")

// pubKey is one DEK version a vector's device holds.
type pubKey struct {
	KeyID      string `json:"key_id"`
	KeyVersion string `json:"key_version"`
	DEKHex     string `json:"dek_hex"`
	Generation uint64 `json:"generation"`
}

// pubDevice is the device state a vector's message arrives at.
type pubDevice struct {
	DeviceID string            `json:"device_id"`
	Keys     []pubKey          `json:"keys"`
	Floors   map[string]uint64 `json:"floors"`
}

type pubCase struct {
	Name      string    `json:"name"`
	MadeBy    string    `json:"made_by"`
	Device    pubDevice `json:"device"`
	Message   string    `json:"message"`
	Expect    string    `json:"expect"`
	NewDEKHex string    `json:"new_dek_hex,omitempty"`
	AADHex    string    `json:"aad_hex,omitempty"`
	GenAADHex string    `json:"gen_aad_hex,omitempty"`
}

type pubFile struct {
	Spec        string    `json:"spec"`
	Description string    `json:"description"`
	Notes       string    `json:"notes"`
	Cases       []pubCase `json:"cases"`
}

// keyring is a vector's device as a rekey.Keyring.
type keyring struct {
	t testing.TB
	d pubDevice
}

func (k keyring) DeviceID() string { return k.d.DeviceID }
func (k keyring) UsesKey(keyID string) bool {
	for _, x := range k.d.Keys {
		if x.KeyID == keyID {
			return true
		}
	}
	return false
}
func (k keyring) Key(keyID, version string) cipher.AEAD {
	for _, x := range k.d.Keys {
		if x.KeyID == keyID && x.KeyVersion == version {
			return gcm(k.t, unhex(k.t, x.DEKHex))
		}
	}
	return nil
}
func (k keyring) Floor(keyID string) uint64 { return k.d.Floors[keyID] }

// counter is a deterministic nonce source: seed, seed+1, ...
type counter struct{ b byte }

func (c *counter) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = c.b
		c.b++
	}
	return len(p), nil
}

func dekOf(label string) []byte { s := sha256.Sum256([]byte("rekey vector " + label)); return s[:] }

// issued is the vectors' issued_at.
var issued = time.Unix(1798761600, 0) // 2027-01-01

// publishedCases makes the file: the Python-made cases of testdata (as
// they are, at a device holding only the wrapping key and its group key,
// no generation accepted yet) and the amendment's cases made here.
func publishedCases(t testing.TB) pubFile {
	f := pubFile{
		Spec:        "rekey-v1 (docs/rekey-v1.md) with amendment 1 (key generation)",
		Description: "Rekey messages and what a device decides at a given state. Cases made_by python-cryptography are the original v1 vectors (internal/rekey/testdata/rekey-v1.json, an independent implementation); the others are made by internal/rekey/vectors_test.go, which also checks this file cannot drift from it.",
		Notes:       "For each case, build a device with `device`: its id, the DEK versions it holds (`generation` 0: installed without one, e.g. provisioned), and `floors`, the highest generation it has accepted per key id (absent: 0). Give it `message` as received on its command topic. `expect` is what it must decide: installed (it opens the new DEK, equal to new_dek_hex, and would store it with the message's generation), repeat (it holds key_id@new_version already: nothing changes, in particular not the version it seals under), or a refusal: malformed, not_for_device, rollback, unknown_wrap_key, auth_failed. A device holds a key id if it holds any version of it. aad_hex and gen_aad_hex are the associated data of sealed_dek and sealed_dek_gen where the message parses.",
	}
	for _, v := range loadVectors(t) {
		m, err := rekey.Parse([]byte(v.Message))
		if err != nil {
			t.Fatal(err)
		}
		d := pubDevice{DeviceID: m.DeviceID, Floors: map[string]uint64{},
			Keys: []pubKey{{KeyID: m.WrapKeyID, KeyVersion: m.WrapKeyVersion, DEKHex: v.Wrap}}}
		if m.WrapKeyID != m.KeyID {
			d.Keys = append(d.Keys, pubKey{KeyID: m.KeyID, KeyVersion: "v4", DEKHex: hex.EncodeToString(dekOf(m.KeyID + " v4"))})
		}
		f.Cases = append(f.Cases, pubCase{Name: "v1/" + v.Name, MadeBy: "python-cryptography", Device: d,
			Message: v.Message, Expect: "installed", NewDEKHex: v.New, AADHex: v.AAD})
	}

	type key struct {
		id, ver string
		gen     uint64
	}
	dev := func(id string, floors map[string]uint64, keys ...key) pubDevice {
		d := pubDevice{DeviceID: id, Floors: floors}
		if d.Floors == nil {
			d.Floors = map[string]uint64{}
		}
		for _, k := range keys {
			d.Keys = append(d.Keys, pubKey{KeyID: k.id, KeyVersion: k.ver, DEKHex: hex.EncodeToString(dekOf(k.id + " " + k.ver)), Generation: k.gen})
		}
		return d
	}
	seal := func(seed byte, h rekey.Header) string {
		msg, err := rekey.Seal(&counter{seed}, gcm(t, dekOf(h.WrapKeyID+" "+h.WrapKeyVersion)), h, dekOf(h.KeyID+" "+h.NewVersion), issued)
		if err != nil {
			t.Fatal(err)
		}
		return string(msg)
	}
	add := func(name string, d pubDevice, msg, expect string) {
		c := pubCase{Name: name, MadeBy: "go", Device: d, Message: msg, Expect: expect}
		if m, err := rekey.Parse([]byte(msg)); err == nil {
			c.AADHex = hex.EncodeToString(m.AAD())
			if m.Generation > 0 {
				c.GenAADHex = hex.EncodeToString(m.GenAAD(m.IssuedAt))
			}
			if expect == "installed" {
				c.NewDEKHex = hex.EncodeToString(dekOf(m.KeyID + " " + m.NewVersion))
			}
		}
		f.Cases = append(f.Cases, c)
	}
	const dk = "device/sensor-001"
	const gk = "group/icu-monitors"
	v3 := rekey.Header{DeviceID: "sensor-001", KeyID: dk, NewVersion: "v3", WrapKeyID: dk, WrapKeyVersion: "v2", Generation: 3}
	m3 := seal(0x10, v3)
	add("gen/device key", dev("sensor-001", map[string]uint64{dk: 2}, key{dk, "v2", 2}), m3, "installed")
	add("gen/group key under member's device key", dev("icu-7", map[string]uint64{gk: 4, "device/icu-7": 1}, key{"device/icu-7", "v1", 1}, key{gk, "v4", 4}),
		seal(0x20, rekey.Header{DeviceID: "icu-7", KeyID: gk, NewVersion: "v5", WrapKeyID: "device/icu-7", WrapKeyVersion: "v1", Generation: 5}), "installed")
	add("gen/group key under the group's current version", dev("icu-8", map[string]uint64{gk: 4}, key{gk, "v4", 4}),
		seal(0x30, rekey.Header{DeviceID: "icu-8", KeyID: gk, NewVersion: "v5", WrapKeyID: gk, WrapKeyVersion: "v4", Generation: 5}), "installed")
	add("gen/first generation at a device that took only v1 rekeys", dev("sensor-001", nil, key{dk, "v2", 0}), m3, "installed")
	add("gen/repeat of a held version", dev("sensor-001", map[string]uint64{dk: 3}, key{dk, "v2", 2}, key{dk, "v3", 3}), m3, "repeat")
	add("gen/repeat of an older held version changes nothing", dev("sensor-001", map[string]uint64{dk: 4}, key{dk, "v3", 3}, key{dk, "v4", 4}), m3, "repeat")
	add("gen/replayed older rekey at a device restored from backup", dev("sensor-001", map[string]uint64{dk: 3}, key{dk, "v1", 1}),
		seal(0x40, rekey.Header{DeviceID: "sensor-001", KeyID: dk, NewVersion: "v2", WrapKeyID: dk, WrapKeyVersion: "v1", Generation: 2}), "rollback")
	add("gen/same generation under another name", dev("sensor-001", map[string]uint64{dk: 3}, key{dk, "v2", 2}, key{dk, "v3x", 3}), m3, "rollback")
	add("gen/no generation after one was accepted (downgrade)", dev("sensor-001", map[string]uint64{dk: 2}, key{dk, "v2", 2}),
		seal(0x50, rekey.Header{DeviceID: "sensor-001", KeyID: dk, NewVersion: "v3", WrapKeyID: dk, WrapKeyVersion: "v2"}), "rollback")
	at2 := dev("sensor-001", map[string]uint64{dk: 2}, key{dk, "v2", 2})
	add("gen/generation raised in transit", at2, strings.Replace(m3, `"generation":3`, `"generation":9`, 1), "auth_failed")
	add("gen/issued_at changed in transit", at2, strings.Replace(m3, `"issued_at":1798761600`, `"issued_at":1798761601`, 1), "auth_failed")
	add("gen/sealed_dek_gen from another device's rekey", at2, replaceMember(t, m3, "sealed_dek_gen",
		member(t, seal(0x60, rekey.Header{DeviceID: "sensor-002", KeyID: dk, NewVersion: "v3", WrapKeyID: dk, WrapKeyVersion: "v2", Generation: 3}), "sealed_dek_gen")), "auth_failed")
	add("gen/another device's rekey", dev("sensor-002", map[string]uint64{"device/sensor-002": 2}, key{"device/sensor-002", "v2", 2}), m3, "not_for_device")
	add("gen/a key the device does not use", at2,
		seal(0x70, rekey.Header{DeviceID: "sensor-001", KeyID: "group/other", NewVersion: "v2", WrapKeyID: dk, WrapKeyVersion: "v2", Generation: 2}), "not_for_device")
	add("gen/wrapping key not held", dev("sensor-001", map[string]uint64{dk: 1}, key{dk, "v1", 1}), m3, "unknown_wrap_key")
	add("gen/generation without sealed_dek_gen", at2, removeMember(t, m3, "sealed_dek_gen"), "malformed")
	add("gen/generation zero", at2, strings.Replace(m3, `"generation":3`, `"generation":0`, 1), "malformed")
	add("gen/generation above 2^53-1", at2, strings.Replace(m3, `"generation":3`, `"generation":9007199254740992`, 1), "malformed")
	add("gen/generation not an integer", at2, strings.Replace(m3, `"generation":3`, `"generation":3.0`, 1), "malformed")
	add("gen/generation a string", at2, strings.Replace(m3, `"generation":3`, `"generation":"3"`, 1), "malformed")
	add("gen/generation repeated", at2, strings.Replace(m3, `"generation":3`, `"generation":3,"generation":3`, 1), "malformed")
	add("gen/short sealed_dek_gen", at2, replaceMember(t, m3, "sealed_dek_gen", "AAAA"), "malformed")
	return f
}

func member(t testing.TB, msg, name string) string {
	var m map[string]any
	if err := json.Unmarshal([]byte(msg), &m); err != nil {
		t.Fatal(err)
	}
	return m[name].(string)
}

// replaceMember swaps a string member's value in place (order kept).
func replaceMember(t testing.TB, msg, name, value string) string {
	old := `"` + name + `":"` + member(t, msg, name) + `"`
	return strings.Replace(msg, old, `"`+name+`":"`+value+`"`, 1)
}

func removeMember(t testing.TB, msg, name string) string {
	old := `,"` + name + `":"` + member(t, msg, name) + `"`
	return strings.Replace(msg, old, "", 1)
}

func encodePublished(t testing.TB, f pubFile) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(f); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestPublishedVectors: docs/vectors/rekey-v1.json is exactly what this
// code makes (go test ./internal/rekey -run TestPublishedVectors -update
// rewrites it), and every case decides as it says.
func TestPublishedVectors(t *testing.T) {
	want := encodePublished(t, publishedCases(t))
	if *update {
		if err := os.WriteFile(publishedPath, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(publishedPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s drifted from the cases made by this test; rerun with -update and review the diff", publishedPath)
	}
	var f pubFile
	if err := json.Unmarshal(got, &f); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, c := range f.Cases {
		t.Run(c.Name, func(t *testing.T) {
			tk, err := rekey.Take([]byte(c.Message), keyring{t, c.Device})
			if got := rekey.Outcome(tk, err); got != c.Expect {
				t.Fatalf("decided %s (%v), want %s", got, err, c.Expect)
			}
			seen[c.Expect]++
			if c.Expect == "installed" && hex.EncodeToString(tk.DEK) != c.NewDEKHex {
				t.Fatal("wrong DEK")
			}
			if c.AADHex != "" && hex.EncodeToString(tk.AAD()) != c.AADHex {
				t.Fatalf("AAD %x, want %s", tk.AAD(), c.AADHex)
			}
		})
	}
	for _, o := range []string{"installed", "repeat", "malformed", "not_for_device", "rollback", "unknown_wrap_key", "auth_failed"} {
		if seen[o] == 0 {
			t.Errorf("no case decides %s", o)
		}
	}
}
