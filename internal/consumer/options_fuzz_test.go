package consumer

import (
	"strings"
	"testing"
)

// FuzzValidFilter: the validator never panics, and whatever it accepts
// follows MQTT 3.1.1 §4.7.1: non-empty, no NUL, wildcards only as whole
// levels, '#' only last.
func FuzzValidFilter(f *testing.F) {
	for _, s := range []string{"a/+/b", "#", "a/#", "+", "a/#/b", "a+", "", "/", "iot-2/type/+/id/+/evt/+/fmt/+", "a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if validFilter(s) != nil {
			return
		}
		if s == "" || strings.ContainsRune(s, 0) {
			t.Fatalf("accepted %q", s)
		}
		levels := strings.Split(s, "/")
		for i, l := range levels {
			if strings.ContainsAny(l, "+#") && len(l) != 1 {
				t.Fatalf("accepted %q: wildcard inside level %q", s, l)
			}
			if l == "#" && i != len(levels)-1 {
				t.Fatalf("accepted %q: '#' not last", s)
			}
		}
	})
}
