package keyops

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/registry"
)

type vectorFile struct {
	Keys []struct {
		KeyID   string   `json:"key_id"`
		Version string   `json:"key_version"`
		DEKHex  string   `json:"dek_hex"`
		State   string   `json:"state"`
		Devices []string `json:"devices"`
	} `json:"keys"`
	Cases []struct {
		Name    string `json:"name"`
		Topic   string `json:"topic"`
		Message string `json:"message"`
		Expect  struct {
			OK     bool                       `json:"ok"`
			Reason string                     `json:"reason"`
			Record map[string]json.RawMessage `json:"record"`
		} `json:"expect"`
	} `json:"cases"`
}

const vectorPath = "../../testdata/envelope-v1.json"

func loadVectors(t *testing.T) ([]byte, vectorFile) {
	t.Helper()
	data, err := os.ReadFile(vectorPath)
	if err != nil {
		t.Fatal(err)
	}
	var v vectorFile
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	return data, v
}

// importVectors imports the vector file's keys (given whole, as dekctl
// import accepts it) into e.
func importVectors(t *testing.T, e *testEnv) vectorFile {
	t.Helper()
	data, v := loadVectors(t)
	keys, err := ParseImport(data)
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.ops.Import(context.Background(), keys, false)
	if err != nil || res.Imported != len(v.Keys) {
		t.Fatalf("import: %+v %v", res, err)
	}
	for _, k := range keys {
		if !bytes.Equal(k.DEK, make([]byte, 32)) {
			t.Fatalf("%s: DEK not wiped after import", k.Ref)
		}
	}
	return v
}

func TestImportVectorKeys(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	v := importVectors(t, e)
	for _, k := range v.Keys {
		ent, err := e.store.Get(ctx, k.KeyID, k.Version)
		if err != nil {
			t.Fatal(err)
		}
		want := k.State
		if want == "" {
			want = "active"
		}
		if string(ent.State) != want || strings.Join(ent.Devices, ",") != strings.Join(k.Devices, ",") {
			t.Errorf("%s: state %s devices %v", ent.Ref(), ent.State, ent.Devices)
		}
		if got := hex.EncodeToString(e.unwrap(t, k.KeyID, k.Version)); got != k.DEKHex {
			t.Errorf("%s: unwraps to another DEK", ent.Ref())
		}
	}
	// Again: refused as a whole, then skipped with skipExisting.
	data, _ := loadVectors(t)
	keys, _ := ParseImport(data)
	if _, err := e.ops.Import(ctx, keys, false); !errors.Is(err, registry.ErrExists) || !strings.Contains(err.Error(), "device/sensor-001@v1") {
		t.Fatalf("re-import: %v", err)
	}
	keys, _ = ParseImport(data)
	res, err := e.ops.Import(ctx, keys, true)
	if err != nil || res.Imported != 0 || len(res.Skipped) != len(v.Keys) {
		t.Fatalf("re-import skipping: %+v %v", res, err)
	}
	var imports int
	for _, ev := range e.events(t) {
		if ev.Action == "import" && ev.Result == "ok" {
			imports++
		}
	}
	if imports != len(v.Keys) {
		t.Fatalf("%d import events, want %d", imports, len(v.Keys))
	}
}

// The acceptance test: `dekctl import` of the spec vectors' keys,
// then decrypting the vectors through the real key cache (unwrapping from
// the registry by the KMS) gives the vectors' expected results.
func TestImportThenDecryptVectors(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := newEnv(t)
	v := importVectors(t, e)
	cache, err := keycache.New(keycache.Options{Registry: e.store, KMS: e.kms, Changes: e.store})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	go cache.Run(ctx)
	d, err := decrypt.New(cache, decrypt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	received := time.Date(2026, 11, 25, 20, 16, 1, 0, time.UTC)
	for _, c := range v.Cases {
		t.Run(c.Name, func(t *testing.T) {
			rec, err := d.Open(ctx, decrypt.Message{Topic: c.Topic, Payload: []byte(c.Message), ReceivedAt: received})
			if !c.Expect.OK {
				if err == nil {
					t.Fatalf("got a record, want reason %s", c.Expect.Reason)
				}
				if got := decrypt.Reason(err); got != c.Expect.Reason {
					t.Fatalf("reason %q (%v), want %q", got, err, c.Expect.Reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			var got map[string]json.RawMessage
			if err := json.Unmarshal(rec.AppendJSON(nil), &got); err != nil {
				t.Fatal(err)
			}
			for name, want := range c.Expect.Record {
				switch name {
				case "data_text":
					var text string
					if err := json.Unmarshal(want, &text); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(compact(t, got["data"]), compact(t, []byte(text))) {
						t.Errorf("data = %s, want %s", got["data"], text)
					}
				case "data":
					if !jsonEqual(t, got["data"], want) {
						t.Errorf("data = %s, want %s", got["data"], want)
					}
				default:
					if !jsonEqual(t, got[name], want) {
						t.Errorf("%s = %s, want %s", name, got[name], want)
					}
				}
			}
		})
	}
}

func compact(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatalf("compact %s: %v", b, err)
	}
	return buf.Bytes()
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		return false
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("not JSON: %s", b)
	}
	return reflect.DeepEqual(x, y)
}

func TestParseImport(t *testing.T) {
	const k32hex = "39a930cded9445d7d30117ae74e9b8f77356ee98caaab5307538797833551f66"
	const k32b64 = "Oakwze2URdfTAReudOm493NW7pjKqrUwdTh5eDNVH2Y="
	okCases := []struct {
		name, in string
		want     []dek.Ref
	}{
		{"array hex", `[{"key_id":"device/a","key_version":"v1","dek_hex":"` + k32hex + `"}]`, []dek.Ref{{KeyID: "device/a", Version: "v1"}}},
		{"array b64", `[{"key_id":"group/g","key_version":"2026-q4","dek_b64":"` + k32b64 + `","state":"decrypt_only","devices":["x","y:z"]}]`, []dek.Ref{{KeyID: "group/g", Version: "2026-q4"}}},
		{"b64 unpadded url", `[{"key_id":"k","key_version":"v1","dek_b64":"` + strings.NewReplacer("+", "-", "/", "_", "=", "").Replace(k32b64) + `"}]`, []dek.Ref{{KeyID: "k", Version: "v1"}}},
		{"object with keys", `{"spec":"x","cases":[1],"keys":[{"key_id":"k","key_version":"v1","dek_hex":"` + k32hex + `","state":"revoked"}]}`, []dek.Ref{{KeyID: "k", Version: "v1"}}},
	}
	for _, tc := range okCases {
		t.Run(tc.name, func(t *testing.T) {
			ks, err := ParseImport([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if len(ks) != len(tc.want) || ks[0].Ref != tc.want[0] || hex.EncodeToString(ks[0].DEK) != k32hex {
				t.Fatalf("got %v", ks)
			}
		})
	}
	bad := []struct{ name, in, want string }{
		{"empty", ``, "empty"},
		{"not json", `nope`, "want a JSON array"},
		{"syntax", `[{"key_id":`, "truncated JSON"},
		{"syntax mid", `[{"key_id" 1}]`, "invalid JSON at byte 12"},
		{"no keys member", `{"cases":[]}`, `without a "keys" array`},
		{"empty array", `[]`, "no keys"},
		{"unknown member", `[{"key_id":"k","key_version":"v1","dek_hex":"` + k32hex + `","dek":"x"}]`, `unknown member "dek"`},
		{"bad key id", `[{"key_id":"k k","key_version":"v1","dek_hex":"` + k32hex + `"}]`, "keys[0].key_id"},
		{"bad version", `[{"key_id":"k","key_version":"v/1","dek_hex":"` + k32hex + `"}]`, "keys[0].key_version"},
		{"short hex", `[{"key_id":"k","key_version":"v1","dek_hex":"abcd"}]`, "keys[0].dek_hex: want 64 hex digits (32 bytes), got 4"},
		{"not hex", `[{"key_id":"k","key_version":"v1","dek_hex":"` + strings.Repeat("zz", 32) + `"}]`, "keys[0].dek_hex: not hex"},
		{"hex number", `[{"key_id":"k","key_version":"v1","dek_hex":12}]`, "keys[0].dek_hex: want a string"},
		{"short b64", `[{"key_id":"k","key_version":"v1","dek_b64":"AAAA"}]`, "keys[0].dek_b64: want base64 of 32 bytes"},
		{"both", `[{"key_id":"k","key_version":"v1","dek_hex":"` + k32hex + `","dek_b64":"` + k32b64 + `"}]`, "keys[0]: give dek_hex or dek_b64, not both"},
		{"none", `[{"key_id":"k","key_version":"v1"}]`, "keys[0]: dek_hex or dek_b64 required"},
		{"bad state", `[{"key_id":"k","key_version":"v1","dek_hex":"` + k32hex + `","state":"gone"}]`, "keys[0].state"},
		{"shredded", `[{"key_id":"k","key_version":"v1","dek_hex":"` + k32hex + `","state":"shredded"}]`, "keys[0].state: a shredded key has no DEK"},
		{"bad device", `[{"key_id":"k","key_version":"v1","dek_hex":"` + k32hex + `","devices":["a/b"]}]`, "keys[0].devices[0]"},
		{"dup device", `[{"key_id":"k","key_version":"v1","dek_hex":"` + k32hex + `","devices":["a","a"]}]`, `keys[0].devices[1]: "a" listed twice`},
		{"dup version", `[{"key_id":"k","key_version":"v1","dek_hex":"` + k32hex + `"},{"key_id":"k","key_version":"v1","dek_b64":"` + k32b64 + `"}]`, "keys[1]: k@v1 already listed as keys[0]"},
		{"trailing", `[{"key_id":"k","key_version":"v1","dek_hex":"` + k32hex + `"}] []`, "data after"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseImport([]byte(tc.in))
			if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), k32hex[:16]) || strings.Contains(err.Error(), k32b64[:16]) {
				t.Fatalf("error quotes key material: %v", err)
			}
		})
	}
}

func FuzzParseImport(f *testing.F) {
	// Small seeds only: the fuzzer minimises every new input it finds, and
	// minimising a copy of the whole vector file (15 KB) stalls short runs.
	f.Add([]byte(`{"spec":"envelope-v1","keys":[{"key_id":"group/icu-monitors","key_version":"2026-q4","dek_hex":"74afdc3d3c95215ff2e096a7e7debc6bc4589e4a3d99debd0aa65b4211ab710e","state":"revoked","devices":["sensor-002","gw:ward-7.bed_12"]}],"cases":[]}`))
	f.Add([]byte(`[{"key_id":"k","key_version":"v1","dek_b64":"Oakwze2URdfTAReudOm493NW7pjKqrUwdTh5eDNVH2Y=","devices":["a"]}]`))
	f.Add([]byte(`{"keys":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ks, err := ParseImport(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("error without ErrInvalidArgument: %v", err)
			}
			return
		}
		for _, k := range ks {
			if len(k.DEK) != DEKSize || !registry.ValidKeyID(k.Ref.KeyID) || !registry.ValidKeyVersion(k.Ref.Version) || !k.State.CanDecrypt() && k.State != dek.StateRevoked {
				t.Fatalf("accepted an invalid key %v", k)
			}
		}
		WipeKeys(ks)
	})
}
