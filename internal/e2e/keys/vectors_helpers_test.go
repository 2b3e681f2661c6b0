package keys_test

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/testutil/vectors"
)

// runVectors opens every case in order on its topic through one Decryptor
// over keys, with the notes' settings (replay window on, clock-skew check
// off), and compares each outcome with the expected one.
func runVectors(t *testing.T, v vectors.File, keys decrypt.KeyResolver) {
	t.Helper()
	d, err := decrypt.New(keys, decrypt.Options{ClockSkew: 0})
	if err != nil {
		t.Fatal(err)
	}
	received := time.Date(2026, 11, 25, 20, 16, 1, 0, time.UTC)
	for _, c := range v.Cases {
		// In order, on the one Decryptor: the duplicate and replay cases
		// depend on the cases before them.
		t.Run(c.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			rec, err := d.Open(ctx, decrypt.Message{Topic: c.Topic, Payload: []byte(c.Message), ReceivedAt: received})
			if !c.Expect.OK {
				if err == nil {
					t.Fatalf("got a record, want reason %q duplicate %v", c.Expect.Reason, c.Expect.Duplicate)
				}
				if errors.Is(err, decrypt.ErrDuplicate) != c.Expect.Duplicate {
					t.Fatalf("%v: want duplicate %v", err, c.Expect.Duplicate)
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
			vectors.CheckRecord(t, rec.AppendJSON(nil), c.Expect)
		})
	}
}
