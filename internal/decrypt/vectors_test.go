package decrypt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/testutil/vectors"
)

// TestVectors runs the public vectors, in order, through one Decryptor as
// their notes ask: the registry holds their keys, the clock-skew check is
// off, the replay window is on.
func TestVectors(t *testing.T) {
	v := vectors.Load(t)
	d, err := New(vectorKeys(t, v), Options{})
	if err != nil {
		t.Fatal(err)
	}
	received := time.Date(2026, 11, 25, 20, 16, 1, 123456789, time.UTC)
	for _, c := range v.Cases {
		// Subtests run in order on the one Decryptor: the duplicate and
		// replay cases depend on the cases before them.
		t.Run(c.Name, func(t *testing.T) {
			rec, err := d.Open(context.Background(), Message{Topic: c.Topic, Payload: []byte(c.Message), ReceivedAt: received})
			if !c.Expect.OK {
				if err == nil {
					t.Fatalf("got a record, want reason %q duplicate %v", c.Expect.Reason, c.Expect.Duplicate)
				}
				if errors.Is(err, ErrDuplicate) != c.Expect.Duplicate {
					t.Fatalf("%v: duplicate %v, want %v", err, !c.Expect.Duplicate, c.Expect.Duplicate)
				}
				if got := Reason(err); got != c.Expect.Reason {
					t.Fatalf("reason %q (%v), want %q", got, err, c.Expect.Reason)
				}
				if !reflect.DeepEqual(rec, Record{}) {
					t.Fatal("a record came out with the failure")
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			out := rec.AppendJSON(nil)
			vectors.CheckRecord(t, out, c.Expect)
			var got map[string]json.RawMessage
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("record is not JSON: %v\n%s", err, out)
			}
			if string(got["topic"]) != `"`+c.Topic+`"` {
				t.Errorf("topic = %s", got["topic"])
			}
			if string(got["received_at"]) != `"2026-11-25T20:16:01.123456789Z"` {
				t.Errorf("received_at = %s", got["received_at"])
			}
			_, hasMeta := got["metadata"]
			if isShapeA := bytes.Contains([]byte(c.Message), []byte(`"encrypted_data"`)); hasMeta != isShapeA {
				t.Errorf("metadata present = %v, want %v (shape A only)", hasMeta, isShapeA)
			}
		})
	}
}
