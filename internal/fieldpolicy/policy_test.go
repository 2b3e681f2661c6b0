package fieldpolicy

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/sink/sinktest"
)

// fakePseudo is HMAC-SHA-256 under a fixed key, version "v9".
type fakePseudo struct{ fail bool }

func (f fakePseudo) Pseudonymize(_ context.Context, v []byte) (string, error) {
	if f.fail {
		return "", errors.New("key unavailable")
	}
	m := hmac.New(sha256.New, []byte("k"))
	m.Write(v)
	return "pn:v9:" + hex.EncodeToString(m.Sum(nil))[:8], nil
}

func pn(v string) string {
	tok, _ := fakePseudo{}.Pseudonymize(context.Background(), []byte(v))
	return tok
}

const rec = `{"id":"r1","device_id":"sensor-001","timestamp":1700000000,"key_id":"device/sensor-001","key_version":"v1",` +
	`"data":{"patient_id":"P-4711","heart_rate":72.50,"note":"feels dizzy","vitals":{"spo2":97,"bp":"120/80"},` +
	`"readings":[{"t":1,"note":"a","v":1},{"t":2,"note":"b","v":2}],"tags":["x","y"]}}`

func TestApplyTable(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    Config
		sealed []string
		want   string // the data member after the policy
		dev    string // the record's DeviceID after it ("" means unchanged)
	}{
		{"no rules keeps all", Config{}, nil,
			`{"patient_id":"P-4711","heart_rate":72.50,"note":"feels dizzy","vitals":{"spo2":97,"bp":"120/80"},"readings":[{"t":1,"note":"a","v":1},{"t":2,"note":"b","v":2}],"tags":["x","y"]}`, ""},
		{"drop, mask, pseudonymize top level",
			Config{PseudonymKey: "a", Rules: []Rule{{"/data/note", Drop}, {"/data/heart_rate", Mask}, {"/data/patient_id", Pseudonymize}}}, nil,
			`{"patient_id":"` + pn("sP-4711") + `","heart_rate":"***","vitals":{"spo2":97,"bp":"120/80"},"readings":[{"t":1,"note":"a","v":1},{"t":2,"note":"b","v":2}],"tags":["x","y"]}`, ""},
		{"nested pointer", Config{Rules: []Rule{{"/data/vitals/bp", Drop}}}, nil,
			`{"patient_id":"P-4711","heart_rate":72.50,"note":"feels dizzy","vitals":{"spo2":97},"readings":[{"t":1,"note":"a","v":1},{"t":2,"note":"b","v":2}],"tags":["x","y"]}`, ""},
		{"array wildcard", Config{Rules: []Rule{{"/data/readings/*/note", Drop}, {"/data/tags/*", Mask}}}, nil,
			`{"patient_id":"P-4711","heart_rate":72.50,"note":"feels dizzy","vitals":{"spo2":97,"bp":"120/80"},"readings":[{"t":1,"v":1},{"t":2,"v":2}],"tags":["***","***"]}`, ""},
		{"literal index beats wildcard", Config{Rules: []Rule{{"/data/readings/*", Drop}, {"/data/readings/1", Keep}}}, nil,
			`{"patient_id":"P-4711","heart_rate":72.50,"note":"feels dizzy","vitals":{"spo2":97,"bp":"120/80"},"readings":[{"t":2,"note":"b","v":2}],"tags":["x","y"]}`, ""},
		{"deeper rule overrides ancestor", Config{Rules: []Rule{{"/data/vitals", Drop}, {"/data/vitals/spo2", Keep}}}, nil,
			`{"patient_id":"P-4711","heart_rate":72.50,"note":"feels dizzy","vitals":{"spo2":97},"readings":[{"t":1,"note":"a","v":1},{"t":2,"note":"b","v":2}],"tags":["x","y"]}`, ""},
		{"pseudonymize a whole object", Config{PseudonymKey: "a", Rules: []Rule{{"/data/vitals", Pseudonymize}}}, nil,
			`{"patient_id":"P-4711","heart_rate":72.50,"note":"feels dizzy","vitals":"` + pn(`j{"spo2":97,"bp":"120/80"}`) + `","readings":[{"t":1,"note":"a","v":1},{"t":2,"note":"b","v":2}],"tags":["x","y"]}`, ""},
		{"encrypted default drops sealed shape B fields unless listed",
			Config{Encrypted: Drop, Rules: []Rule{{"/data/note", Keep}, {"/data", Keep}}}, []string{"/patient_id", "/note", "/vitals/bp"},
			`{"heart_rate":72.50,"note":"feels dizzy","vitals":{"spo2":97},"readings":[{"t":1,"note":"a","v":1},{"t":2,"note":"b","v":2}],"tags":["x","y"]}`, ""},
		{"encrypted default on shape A: all of data sealed, listed fields kept",
			Config{Encrypted: Drop, Rules: []Rule{{"/data/heart_rate", Keep}, {"/data/vitals/spo2", Keep}}}, []string{""},
			`{"heart_rate":72.50,"vitals":{"spo2":97}}`, ""},
		{"encrypted default pseudonymize, a listed sealed field masked",
			Config{Encrypted: Pseudonymize, PseudonymKey: "a", Rules: []Rule{{"/data/note", Mask}}}, []string{"/patient_id", "/note"},
			`{"patient_id":"` + pn("sP-4711") + `","heart_rate":72.50,"note":"***","vitals":{"spo2":97,"bp":"120/80"},"readings":[{"t":1,"note":"a","v":1},{"t":2,"note":"b","v":2}],"tags":["x","y"]}`, ""},
		{"sealed array element", Config{Encrypted: Mask}, []string{"/readings/0/note"},
			`{"patient_id":"P-4711","heart_rate":72.50,"note":"feels dizzy","vitals":{"spo2":97,"bp":"120/80"},"readings":[{"t":1,"note":"***","v":1},{"t":2,"note":"b","v":2}],"tags":["x","y"]}`, ""},
		{"device id pseudonymized: the record's key follows",
			Config{PseudonymKey: "a", Rules: []Rule{{"/device_id", Pseudonymize}}}, nil,
			`{"patient_id":"P-4711","heart_rate":72.50,"note":"feels dizzy","vitals":{"spo2":97,"bp":"120/80"},"readings":[{"t":1,"note":"a","v":1},{"t":2,"note":"b","v":2}],"tags":["x","y"]}`,
			pn("ssensor-001")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.cfg, fakePseudo{})
			if err != nil {
				t.Fatal(err)
			}
			in := sink.Record{ID: "r1", DeviceID: "sensor-001", KeyID: "device/sensor-001", KeyVersion: "v1", JSON: []byte(rec), Sealed: tc.sealed}
			out, err := p.Apply(t.Context(), in)
			if err != nil {
				t.Fatal(err)
			}
			if string(in.JSON) != rec {
				t.Fatal("Apply modified its input")
			}
			i := bytes.Index(out.JSON, []byte(`"data":`))
			if i < 0 || !bytes.HasPrefix(out.JSON, []byte(`{"id":"r1",`)) {
				t.Fatalf("record lost its id or data: %s", out.JSON)
			}
			if got := string(out.JSON[i+len(`"data":`) : len(out.JSON)-1]); got != tc.want {
				t.Fatalf("data:\n got %s\nwant %s", got, tc.want)
			}
			wantDev := tc.dev
			if wantDev == "" {
				wantDev = "sensor-001"
			}
			if out.DeviceID != wantDev || out.ID != "r1" {
				t.Fatalf("DeviceID %q ID %q, want %q", out.DeviceID, out.ID, wantDev)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		field string
		cfg   Config
	}{
		{"rules[0].pointer", Config{Rules: []Rule{{"data/x", Drop}}}},
		{"rules[0].pointer", Config{Rules: []Rule{{"/data/~2", Drop}}}},
		{"rules[0].pointer", Config{Rules: []Rule{{"", Drop}}}},
		{"rules[0].pointer", Config{Rules: []Rule{{"/id", Mask}}}},
		{"rules[0].action", Config{Rules: []Rule{{"/data/x", "redact"}}}},
		{"rules[1].pointer", Config{Rules: []Rule{{"/data/x", Drop}, {"/data/x", Keep}}}},
		{"encrypted", Config{Encrypted: "hide"}},
		{"pseudonym_key", Config{Rules: []Rule{{"/data/x", Pseudonymize}}}},
		{"pseudonym_key", Config{Encrypted: Pseudonymize}},
		{"pseudonym_key", Config{Encrypted: Drop, PseudonymKey: "a/b"}},
	} {
		err := tc.cfg.Validate()
		if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), tc.field+":") {
			t.Errorf("%s: got %v", tc.field, err)
		}
	}
	ok := Config{Encrypted: Drop, PseudonymKey: "analytics", Rules: []Rule{{"/data/patient_id", Pseudonymize}, {"/data/readings/*/note", Drop}}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	if d := ok.Describe(); d != `{"rules":[{"pointer":"/data/patient_id","action":"pseudonymize"},{"pointer":"/data/readings/*/note","action":"drop"}],"encrypted":"drop","pseudonym_key":"analytics"}` {
		t.Fatalf("Describe: %s", d)
	}
	if _, err := New(ok, nil); err == nil {
		t.Fatal("New without a pseudonymizer succeeded")
	}
}

func TestPseudonymFailureFailsWrite(t *testing.T) {
	inner := newFile(t)
	p, err := New(Config{PseudonymKey: "a", Rules: []Rule{{"/data/note", Pseudonymize}}}, fakePseudo{fail: true})
	if err != nil {
		t.Fatal(err)
	}
	s := Wrap(inner, p)
	if err := s.Write(t.Context(), sinktest.Records("x", 2)); err == nil {
		t.Fatal("Write succeeded without a pseudonymization key")
	}
	if b, _ := os.ReadFile(filepath.Join(filepath.Dir(inner.path), "records.jsonl")); len(b) != 0 {
		t.Fatalf("something reached the sink: %q", b)
	}
}

type fileSink struct {
	*sink.File
	path string
}

func newFile(t *testing.T) fileSink {
	t.Helper()
	path := filepath.Join(t.TempDir(), "records.jsonl")
	f, err := sink.NewFile(sink.FileOptions{Name: "analytics", Path: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close(context.Background()) })
	return fileSink{f, path}
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if len(l) > 0 {
			out = append(out, l)
		}
	}
	return out
}

// TestContract: a policy in front of a sink keeps the sink contract (a
// policy that changes nothing in sinktest's records gives them byte for
// byte).
func TestContract(t *testing.T) {
	sinktest.Run(t, func(t *testing.T) sinktest.Subject {
		f := newFile(t)
		p, err := New(Config{Encrypted: Drop, Rules: []Rule{{"/data/absent", Drop}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return sinktest.Subject{Sink: Wrap(f, p), Read: func(t *testing.T) [][]byte { return readLines(t, f.path) }}
	})
}

// TestDroppedNeverWritten is a property test: for random records whose
// dropped fields (named by rules, or sealed under encrypted: drop) hold
// random secrets, including the device id and key id, no byte sequence of
// a secret appears anywhere in the sink's bytes: a file's contents, or
// every key, value and header of a Kafka topic.
func TestDroppedNeverWritten(t *testing.T) {
	for _, medium := range []string{"file", "kafka"} {
		t.Run(medium, func(t *testing.T) {
			var inner sink.Sink
			var read func() []byte
			switch medium {
			case "file":
				f := newFile(t)
				inner, read = f, func() []byte {
					b, err := os.ReadFile(f.path)
					if err != nil {
						t.Fatal(err)
					}
					return b
				}
			case "kafka":
				inner, read = newKafka(t)
			}
			droppedNeverWritten(t, inner, read)
		})
	}
}

func droppedNeverWritten(t *testing.T, inner sink.Sink, read func() []byte) {
	rng := rand.New(rand.NewPCG(1, 2))
	secret := func() string { return fmt.Sprintf("S%016x%016x", rng.Uint64(), rng.Uint64()) }
	p, err := New(Config{Encrypted: Drop, Rules: []Rule{
		{"/data/note", Drop}, {"/data/readings/*/free_text", Drop}, {"/metadata/address", Drop}, {"/data/keep_me", Keep},
		{"/device_id", Drop}, {"/key_id", Drop},
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := Wrap(inner, p)
	var secrets []string
	for round := range 50 {
		var batch []sink.Record
		for i := range 20 {
			note, addr, sealedV, dev := secret(), secret(), secret(), secret()
			secrets = append(secrets, note, addr, sealedV, dev)
			var readings []string
			for j := range rng.IntN(4) {
				ft := secret()
				secrets = append(secrets, ft)
				readings = append(readings, fmt.Sprintf(`{"i":%d,"free_text":%q}`, j, ft))
			}
			// The sealed field sits at a random place: top level or nested.
			sealedPtr, sealedJSON := "/sealed", fmt.Sprintf(`"sealed":%q`, sealedV)
			if rng.IntN(2) == 0 {
				sealedPtr, sealedJSON = "/deep/x/sealed", fmt.Sprintf(`"deep":{"x":{"sealed":%q,"ok":1}}`, sealedV)
			}
			id := fmt.Sprintf("r%d-%d", round, i)
			js := fmt.Sprintf(`{"id":%q,"device_id":%q,"timestamp":1,"key_id":"device/%s","key_version":"v1","metadata":{"address":%q,"site":"w"},"data":{"note":%q,"keep_me":"k","readings":[%s],%s}}`,
				id, dev, dev, addr, note, strings.Join(readings, ","), sealedJSON)
			batch = append(batch, sink.Record{ID: id, DeviceID: dev, KeyID: "device/" + dev, KeyVersion: "v1", JSON: []byte(js), Sealed: []string{sealedPtr}})
		}
		if err := s.Write(t.Context(), batch); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	all := read()
	if n := bytes.Count(all, []byte(`"keep_me":"k"`)); n != 1000 {
		t.Fatalf("the sink holds the kept field of %d records, want 1000", n)
	}
	for _, sec := range secrets {
		if bytes.Contains(all, []byte(sec)) || bytes.Contains(all, []byte(sec[1:9])) {
			t.Fatalf("dropped value %s appears in the sink's bytes", sec)
		}
	}
}

func FuzzApply(f *testing.F) {
	f.Add([]byte(rec), "/data/note")
	f.Add([]byte(`{"id":"x","data":[1,{"a":"b"}]}`), "/data/*/a")
	f.Fuzz(func(t *testing.T, js []byte, ptr string) {
		p, err := New(Config{Encrypted: Drop, Rules: []Rule{{ptr, Drop}}}, nil)
		if err != nil {
			return
		}
		out, err := p.Apply(context.Background(), sink.Record{ID: "x", JSON: js, Sealed: []string{"/a"}})
		if err != nil {
			return
		}
		if !bytes.HasPrefix(out.JSON, []byte("{")) || bytes.ContainsAny(out.JSON, "\n\r") || !json.Valid(out.JSON) {
			t.Fatalf("output not one valid JSON object on one line: %q", out.JSON)
		}
		if !json.Valid(js) {
			t.Fatalf("invalid input %q accepted", js)
		}
	})
}
