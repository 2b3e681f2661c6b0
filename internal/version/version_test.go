package version

import (
	"runtime"
	"strings"
	"testing"
)

func TestLine(t *testing.T) {
	l := Line("dekctl")
	if !strings.HasPrefix(l, "dekctl ") || !strings.HasSuffix(l, "("+runtime.Version()+")") || String() == "" {
		t.Fatalf("Line = %q", l)
	}
}
