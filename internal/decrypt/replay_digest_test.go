package decrypt

import (
	"testing"
	"time"
	"unsafe"
)

// TestDigest: the same topic and payload give the same digest; any change
// of either, including moving bytes between them (no separator is hashed),
// gives another.
func TestDigest(t *testing.T) {
	w := newWindow(16, time.Hour)
	base := w.dg.digest("devices/a/evt", []byte(`{"x":1}`))
	if again := w.dg.digest("devices/a/evt", []byte(`{"x":1}`)); again != base {
		t.Fatal("same message, different digests")
	}
	for _, tc := range []struct {
		name, topic, payload string
	}{
		{"other payload", "devices/a/evt", `{"x":2}`},
		{"other topic", "devices/b/evt", `{"x":1}`},
		{"byte moved from payload to topic", "devices/a/evt{", `"x":1}`},
		{"byte moved from topic to payload", "devices/a/ev", `t{"x":1}`},
		{"empty topic", "", `devices/a/evt{"x":1}`},
	} {
		if d := w.dg.digest(tc.topic, []byte(tc.payload)); d == base {
			t.Errorf("%s: same digest", tc.name)
		}
	}
	// Another window has its own seeds.
	if other := newWindow(16, time.Hour); other.dg.digest("devices/a/evt", []byte(`{"x":1}`)) == base {
		t.Error("two windows share their digest seeds")
	}
}

// TestWindowEntrySize: bytes counts entries at wentrySize, which must be
// what an entry takes (two to a cache line).
func TestWindowEntrySize(t *testing.T) {
	if got := unsafe.Sizeof(wentry{}); got != wentrySize {
		t.Fatalf("wentry is %d bytes, wentrySize says %d", got, wentrySize)
	}
}
