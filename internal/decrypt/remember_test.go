package decrypt

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/testutil/vectors"
)

// TestRemember: a message remembered (as a Kafka input rebuilding its
// window does) makes its exact repeat a duplicate and a reuse of its
// nonce a replay in a Decryptor that never delivered it; a message that
// fails says so and is not remembered; a key fault is retryable.
func TestRemember(t *testing.T) {
	v := vectors.Load(t)
	keys := vectorKeys(t, v)
	ctx := context.Background()
	received := time.Date(2026, 11, 25, 20, 16, 1, 0, time.UTC)
	var ok, failing *vectors.Case
	for i := range v.Cases {
		c := &v.Cases[i]
		switch {
		case c.Expect.OK && ok == nil && c.Expect.Record["id"] != nil:
			ok = c
		case !c.Expect.OK && !c.Expect.Duplicate && c.Expect.Reason == "auth_failed" && failing == nil:
			failing = c
		}
	}
	if ok == nil || failing == nil {
		t.Fatal("vectors lack an accepted case or an auth_failed case")
	}
	d, err := New(keys, Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := Message{Topic: ok.Topic, Payload: []byte(ok.Message), ReceivedAt: received}
	if err := d.Remember(ctx, m); err != nil {
		t.Fatalf("Remember: %v", err)
	}
	if _, err := d.Open(ctx, m); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("Open after Remember: %v, want ErrDuplicate", err)
	}
	if err := d.Remember(ctx, m); !errors.Is(err, ErrDuplicate) || IsRetryable(err) {
		t.Fatalf("Remember twice: %v", err)
	}
	f := Message{Topic: failing.Topic, Payload: []byte(failing.Message), ReceivedAt: received}
	if err := d.Remember(ctx, f); Reason(err) != "auth_failed" || IsRetryable(err) {
		t.Fatalf("Remember of a forgery: %v", err)
	}

	d2, _ := New(keys, Options{})
	keys.failWith(errors.New("kms down"))
	if err := d2.Remember(ctx, m); !IsRetryable(err) {
		t.Fatalf("Remember during a key fault: %v, want retryable", err)
	}
	keys.failWith(nil)
}
