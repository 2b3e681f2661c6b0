package vectors

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	f := Load(t)
	if !filepath.IsAbs(f.Path) || !strings.HasSuffix(filepath.ToSlash(f.Path), "/"+RelPath) {
		t.Errorf("Path %q", f.Path)
	}
	if f.Notes == "" {
		t.Error("notes not read")
	}
	for _, k := range f.Keys {
		b := k.DEK()
		if len(b) != 32 {
			t.Fatalf("%s: DEK %d bytes", k.Ref(), len(b))
		}
		clear(b)
		if bytes.Equal(k.DEK(), b) {
			t.Fatalf("%s: DEK shares its bytes with the caller", k.Ref())
		}
	}
	raw := f.Bytes()
	clear(raw)
	if !json.Valid(f.Bytes()) {
		t.Fatal("Bytes shares its bytes with the caller")
	}
}

func TestParseRejects(t *testing.T) {
	const key = `{"key_id":"k","key_version":"v1","dek_hex":"` +
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff" + `","state":"active"}`
	const okCase = `{"name":"a","topic":"t","message":"m","expect":{"ok":true,"record":{"id":"x"}}}`
	for _, tc := range []struct{ name, file string }{
		{"not json", `{`},
		{"other spec", `{"spec":"envelope-v2","keys":[` + key + `],"cases":[` + okCase + `]}`},
		{"no keys", `{"spec":"envelope-v1","keys":[],"cases":[` + okCase + `]}`},
		{"no cases", `{"spec":"envelope-v1","keys":[` + key + `],"cases":[]}`},
		{"short dek", `{"spec":"envelope-v1","keys":[{"key_id":"k","key_version":"v1","dek_hex":"0011","state":"active"}],"cases":[` + okCase + `]}`},
		{"bad state", `{"spec":"envelope-v1","keys":[` + strings.Replace(key, "active", "gone", 1) + `],"cases":[` + okCase + `]}`},
		{"repeated key", `{"spec":"envelope-v1","keys":[` + key + `,` + key + `],"cases":[` + okCase + `]}`},
		{"repeated case", `{"spec":"envelope-v1","keys":[` + key + `],"cases":[` + okCase + `,` + okCase + `]}`},
		{"ok without record", `{"spec":"envelope-v1","keys":[` + key + `],"cases":[{"name":"a","expect":{"ok":true}}]}`},
		{"failure without reason", `{"spec":"envelope-v1","keys":[` + key + `],"cases":[{"name":"a","expect":{"ok":false}}]}`},
		{"reason and duplicate", `{"spec":"envelope-v1","keys":[` + key + `],"cases":[{"name":"a","expect":{"ok":false,"reason":"replay","duplicate":true}}]}`},
		{"ok and duplicate", `{"spec":"envelope-v1","keys":[` + key + `],"cases":[{"name":"a","expect":{"ok":true,"duplicate":true,"record":{"id":"x"}}}]}`},
		{"data_text not JSON", `{"spec":"envelope-v1","keys":[` + key + `],"cases":[{"name":"a","expect":{"ok":true,"record":{"data_text":"{"}}}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parse([]byte(tc.file)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestDiff(t *testing.T) {
	want := Expect{OK: true, Record: map[string]json.RawMessage{
		"id":        json.RawMessage(`"abc"`),
		"timestamp": json.RawMessage(`1634567890`),
		"data":      json.RawMessage(`{"a":1,"b":[true,null]}`),
	}}
	text := func(s string) Expect {
		b, _ := json.Marshal(s)
		return Expect{OK: true, Record: map[string]json.RawMessage{"data_text": b}}
	}
	for _, tc := range []struct {
		name   string
		record string
		want   Expect
		ok     bool
	}{
		{"equal", `{"id":"abc","timestamp":1634567890,"data":{"a":1,"b":[true,null]}}`, want, true},
		{"extra members and order", `{"topic":"t","data":{"b":[true,null],"a":1.0},"timestamp":1.63456789e9,"id":"abc"}`, want, true},
		{"member missing", `{"id":"abc","data":{"a":1,"b":[true,null]}}`, want, false},
		{"member differs", `{"id":"abd","timestamp":1634567890,"data":{"a":1,"b":[true,null]}}`, want, false},
		{"null is not absent", `{"id":"abc","timestamp":null,"data":{"a":1,"b":[true,null]}}`, want, false},
		{"data differs", `{"id":"abc","timestamp":1634567890,"data":{"a":1,"b":[true]}}`, want, false},
		{"not JSON", `{"id":"abc"`, want, false},
		{"not an object", `[]`, want, false},
		{"failure expected", `{}`, Expect{Reason: "auth"}, false},
		{"duplicate expected", `{}`, Expect{Duplicate: true}, false},
		{"data_text whitespace", `{"data":{ "t" : 1.50 ,"u":[ ] }}`, text(`{"t":1.50,"u":[]}`), true},
		{"data_text number text", `{"data":{"t":1.5}}`, text(`{"t":1.50}`), false},
		{"data_text member order", `{"data":{"u":2,"t":1}}`, text(`{"t":1,"u":2}`), false},
		{"data_text string escape", `{"data":{"t":"\u00e9"}}`, text(`{"t":"é"}`), false},
		{"data_text without data", `{"id":"abc"}`, text(`{}`), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Diff([]byte(tc.record), tc.want)
			if (err == nil) != tc.ok {
				t.Fatalf("Diff = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

// TestDiffVectors: a record built from each expectation (data_text written
// out as the data's text) meets it, and one lacking any member does not.
func TestDiffVectors(t *testing.T) {
	for _, c := range Load(t).Cases {
		if !c.Expect.OK {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			rec := func(skip string) []byte {
				var b bytes.Buffer
				b.WriteByte('{')
				sep := ""
				for name, v := range c.Expect.Record {
					if name == skip {
						continue
					}
					if name == "data_text" {
						var s string
						if err := json.Unmarshal(v, &s); err != nil {
							t.Fatal(err)
						}
						name, v = "data", json.RawMessage(s)
					}
					b.WriteString(sep + `"` + name + `":`)
					b.Write(v)
					sep = ","
				}
				b.WriteString(`,"topic":"` + c.Topic + `"}`)
				return b.Bytes()
			}
			CheckRecord(t, rec(""), c.Expect)
			for name := range c.Expect.Record {
				if Diff(rec(name), c.Expect) == nil {
					t.Errorf("a record without %s passes", name)
				}
			}
		})
	}
}

// FuzzDiff: any record bytes give an answer without panicking, and a
// record that passes is a JSON object.
func FuzzDiff(f *testing.F) {
	v := Load(f)
	for _, c := range v.Cases {
		f.Add([]byte(c.Message), len(v.Cases))
	}
	f.Add([]byte(`{"data":{"t":1}}`), 0)
	f.Fuzz(func(t *testing.T, record []byte, i int) {
		if i < 0 {
			i = -i
		}
		want := v.Cases[i%len(v.Cases)].Expect
		if Diff(record, want) == nil && (!json.Valid(record) || !want.OK) {
			t.Fatalf("passed: %q", record)
		}
	})
}

// TestPublishedCopy: the vectors published for device makers beside the
// spec are byte for byte the copy the tests run, and the published spec
// says where they are.
func TestPublishedCopy(t *testing.T) {
	_, pub := ReadRel(t, PublishedRelPath)
	_, own := ReadRel(t, RelPath)
	if !bytes.Equal(pub, own) {
		t.Fatalf("%s differs from %s: copy the amended vectors to both", PublishedRelPath, RelPath)
	}
	_, spec := ReadRel(t, "docs/envelope-v1.md")
	if !bytes.Contains(spec, []byte("(vectors/envelope-v1.json)")) {
		t.Error("docs/envelope-v1.md does not link its published vectors, vectors/envelope-v1.json")
	}
}

// TestDuplicateCase: the vectors hold amendment 1's exact repeat, right
// after the message it repeats (same topic, same bytes).
func TestDuplicateCase(t *testing.T) {
	f := Load(t)
	n := 0
	for i, c := range f.Cases {
		if !c.Expect.Duplicate {
			continue
		}
		n++
		if i == 0 || f.Cases[i-1].Message != c.Message || f.Cases[i-1].Topic != c.Topic || !f.Cases[i-1].Expect.OK {
			t.Errorf("case %s: not an exact repeat of the accepted case before it", c.Name)
		}
	}
	if n == 0 {
		t.Error("no duplicate case")
	}
}
