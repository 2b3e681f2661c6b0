package keys_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/decrypt"
)

// vectorsPath is the repository's copy of the public vectors.
const vectorsPath = "../../../testdata/envelope-v1.json"

type vectorKey struct {
	KeyID      string   `json:"key_id"`
	KeyVersion string   `json:"key_version"`
	DEKHex     string   `json:"dek_hex"`
	State      string   `json:"state"`
	Devices    []string `json:"devices"`
}

type vectorCase struct {
	Name    string `json:"name"`
	Topic   string `json:"topic"`
	Message string `json:"message"`
	Expect  struct {
		OK     bool                       `json:"ok"`
		Reason string                     `json:"reason"`
		Record map[string]json.RawMessage `json:"record"`
	} `json:"expect"`
}

type vectorFile struct {
	Spec  string       `json:"spec"`
	Keys  []vectorKey  `json:"keys"`
	Cases []vectorCase `json:"cases"`
}

func loadVectors(t *testing.T) vectorFile {
	t.Helper()
	raw, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatalf("read vectors: %v", err)
	}
	var v vectorFile
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("parse vectors: %v", err)
	}
	if v.Spec != "envelope-v1" || len(v.Keys) == 0 || len(v.Cases) == 0 {
		t.Fatalf("vectors: unexpected content (spec %q, %d keys, %d cases)", v.Spec, len(v.Keys), len(v.Cases))
	}
	return v
}

// runVectors opens every case in order on its topic through one Decryptor
// over keys, with the notes' settings (replay window on, clock-skew check
// off), and compares each outcome with the expected one.
func runVectors(t *testing.T, v vectorFile, keys decrypt.KeyResolver) {
	t.Helper()
	d, err := decrypt.New(keys, decrypt.Options{ClockSkew: 0})
	if err != nil {
		t.Fatal(err)
	}
	received := time.Date(2026, 11, 25, 20, 16, 1, 0, time.UTC)
	for _, c := range v.Cases {
		// In order, on the one Decryptor: the replay case depends on the
		// case before it.
		t.Run(c.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			rec, err := d.Open(ctx, decrypt.Message{Topic: c.Topic, Payload: []byte(c.Message), ReceivedAt: received})
			if !c.Expect.OK {
				if err == nil {
					t.Fatalf("got a record, want reason %s", c.Expect.Reason)
				}
				if got := decrypt.Reason(err); got != c.Expect.Reason {
					t.Fatalf("reason %q (%v), want %q", got, err, c.Expect.Reason)
				}
				if !reflect.DeepEqual(rec, decrypt.Record{}) {
					t.Fatal("a record came out with the failure")
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v (reason %q)", err, decrypt.Reason(err))
			}
			out := rec.AppendJSON(nil)
			var got map[string]json.RawMessage
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("record is not JSON: %v\n%s", err, out)
			}
			for name, want := range c.Expect.Record {
				switch name {
				case "data":
					if !jsonEqual(t, got["data"], want) {
						t.Errorf("data = %s, want %s", got["data"], want)
					}
				case "data_text":
					var text string
					if err := json.Unmarshal(want, &text); err != nil {
						t.Fatal(err)
					}
					if g, w := compact(t, got["data"]), compact(t, []byte(text)); !bytes.Equal(g, w) {
						t.Errorf("data text = %s, want %s", g, w)
					}
				default:
					g, ok := got[name]
					if !ok {
						t.Errorf("record lacks %s (want %s)", name, want)
					} else if !jsonEqual(t, g, want) {
						t.Errorf("%s = %s, want %s", name, g, want)
					}
				}
			}
		})
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Errorf("not JSON: %s: %v", a, err)
		return false
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("not JSON: %s: %v", b, err)
	}
	return reflect.DeepEqual(x, y)
}

// compact removes insignificant whitespace; numbers keep their text.
func compact(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Errorf("compact %s: %v", b, err)
		return nil
	}
	return buf.Bytes()
}
