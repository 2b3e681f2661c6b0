package decrypt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/testutil/vectors"
)

// FuzzOpen feeds arbitrary messages to Open with the vectors' keys: no
// panic, every input ends in exactly one record or one reason, a record is
// valid JSON, and the same input gives the same outcome again (a duplicate
// when it was accepted under a key, with or without DUP; a replay on
// another topic).
func FuzzOpen(f *testing.F) {
	v := vectors.Load(f)
	keys := vectorKeys(f, v)
	for _, c := range v.Cases {
		f.Add(c.Topic, []byte(c.Message), false)
	}
	f.Add("iot-2/type/t/id/d/evt/e/fmt/f", []byte(`{"device_id":"d","timestamp":0,"k":[{"a":"ENC:AES256:AAAA"}]}`), true)
	f.Add("x", []byte(`{"device_id":"d","timestamp":1,"a":{"b":[1,2,{"c":null}]},"\u00e9":"\ud83d\ude00"}`), false)
	received := time.Unix(1634567890, 0)
	f.Fuzz(func(t *testing.T, topic string, payload []byte, dup bool) {
		d, err := New(keys, Options{MaxMessageBytes: 64 << 10, ClockSkew: 10 * 365 * 24 * time.Hour, Now: func() time.Time { return received }})
		if err != nil {
			t.Fatal(err)
		}
		m := Message{Topic: topic, Payload: payload, Redelivered: dup, ReceivedAt: received}
		rec, err := d.Open(context.Background(), m)
		if err != nil {
			if Reason(err) == "" {
				t.Fatalf("error without a reason: %v", err)
			}
			if !reflect.DeepEqual(rec, Record{}) {
				t.Fatal("record returned with an error")
			}
			rec2, err2 := d.Open(context.Background(), m)
			if Reason(err2) != Reason(err) || !reflect.DeepEqual(rec2, Record{}) {
				t.Fatalf("second Open: %v, first %v", err2, err)
			}
			return
		}
		checkRecord(t, &rec)
		if !json.Valid(payload) {
			t.Fatal("accepted a payload encoding/json calls invalid")
		}
		m.Redelivered = true
		rec2, err := d.Open(context.Background(), m)
		switch {
		case rec.KeyVersion != "" && !errors.Is(err, ErrDuplicate):
			t.Fatalf("redelivery of an accepted message: %v, want duplicate", err)
		case rec.KeyVersion == "" && (err != nil || rec2.ID != rec.ID || !bytes.Equal(rec2.Data, rec.Data)):
			t.Fatalf("unencrypted message opened differently twice: %v", err)
		}
		if rec.KeyVersion == "" {
			return
		}
		// Amendment 1: an exact repeat is a duplicate without DUP too; the
		// same bytes on another topic are not an exact repeat.
		m.Redelivered = false
		if _, err := d.Open(context.Background(), m); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("exact repeat of an accepted message: %v, want duplicate", err)
		}
		m.Topic += "/moved"
		if _, err := d.Open(context.Background(), m); Reason(err) != "replay" && Reason(err) != "topic_mismatch" {
			t.Fatalf("accepted bytes on another topic: %v, want replay", err)
		}
	})
}

func checkRecord(t *testing.T, rec *Record) {
	t.Helper()
	if len(rec.ID) != 64 || strings.Trim(rec.ID, "0123456789abcdef") != "" {
		t.Fatalf("id %q", rec.ID)
	}
	if !json.Valid(rec.Data) || rec.Data[0] != '{' {
		t.Fatalf("data not a JSON object: %q", rec.Data)
	}
	if rec.Metadata != nil && (!json.Valid(rec.Metadata) || rec.Metadata[0] != '{') {
		t.Fatalf("metadata not a JSON object: %q", rec.Metadata)
	}
	if out := rec.AppendJSON(nil); !json.Valid(out) {
		t.Fatalf("record JSON invalid: %q", out)
	}
}

// FuzzShapeBWalk checks the shape B walker against encoding/json as an
// oracle: every sealed string it finds is where its pointer says, and the
// record data it rebuilds is the message less its envelope members, with
// each sealed string replaced by the value given for it.
func FuzzShapeBWalk(f *testing.F) {
	v := vectors.Load(f)
	for _, c := range v.Cases {
		if !strings.Contains(c.Message, `"encrypted_data"`) {
			f.Add([]byte(c.Message))
		}
	}
	f.Add([]byte(`{"device_id":"d","timestamp":1,"a/b":{"~":["ENC:AES256:x",{"":"ENC:AES256:y"}]},"key_id":"ENC:AES256:z"}`))
	f.Add([]byte(`{"\u0045NC":"\u0045NC:AES256:w","n":"ENC:AES25","e":"ENC:AES256:"}`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		var st state
		if _, _, err := st.msg.document(msg, true); err != nil {
			return
		}
		if !json.Valid(msg) {
			t.Fatal("walker accepted what encoding/json rejects")
		}
		var doc map[string]any
		dec := json.NewDecoder(bytes.NewReader(msg))
		dec.UseNumber()
		if err := dec.Decode(&doc); err != nil {
			t.Fatal(err)
		}
		s := &st.msg
		env := envelope{}
		for _, r := range s.sealed {
			got, ok := resolvePointer(doc, string(r.ptr))
			if !ok {
				t.Fatalf("pointer %q does not resolve", r.ptr)
			}
			if str, _ := got.(string); str != sealedPrefix+string(r.text) {
				t.Fatalf("pointer %q: %v, walker saw %q", r.ptr, got, r.text)
			}
			if !isEnvelopeName(s.name(s.top[r.top].name)) {
				env.sealed = append(env.sealed, r)
			}
		}
		// Identity replacement: each sealed string stands for itself.
		st.bin = bytes.Clone(msg)
		st.pts = st.pts[:0]
		for _, r := range env.sealed {
			st.pts = append(st.pts, r.raw)
		}
		out := st.appendShapeBData(nil, env)
		var got map[string]any
		dec = json.NewDecoder(bytes.NewReader(out))
		dec.UseNumber()
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("rebuilt data is not JSON: %v\n%s", err, out)
		}
		for _, name := range []string{"device_id", "timestamp", "key_version", "key_id"} {
			delete(doc, name)
		}
		if !reflect.DeepEqual(got, doc) {
			t.Fatalf("rebuilt data differs\n got %s\nfrom %s", out, msg)
		}
		// Every sealed string replaced by null.
		st.bin = []byte("null")
		for i := range st.pts {
			st.pts[i] = span{0, 4}
		}
		if out := st.appendShapeBData(nil, env); !json.Valid(out) {
			t.Fatalf("data with replaced values is not JSON: %s", out)
		}
	})
}

// resolvePointer is an independent RFC 6901 resolver over encoding/json's
// tree.
func resolvePointer(doc any, ptr string) (any, bool) {
	if ptr == "" {
		return doc, true
	}
	if ptr[0] != '/' {
		return nil, false
	}
	cur := doc
	for _, tok := range strings.Split(ptr[1:], "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[tok]
			if !ok {
				return nil, false
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(c) || strconv.Itoa(i) != tok {
				return nil, false
			}
			cur = c[i]
		default:
			return nil, false
		}
	}
	return cur, true
}
