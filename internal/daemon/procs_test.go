package daemon

import (
	"runtime"
	"testing"
)

// Not parallel: it changes the process's GOMAXPROCS and restores it.
func TestRaiseProcs(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(orig) })
	noEnv := func(string) (string, bool) { return "", false }
	explicit := func(k string) (string, bool) { return "1", k == "GOMAXPROCS" }

	for _, c := range []struct {
		name       string
		start      int
		env        func(string) (string, bool)
		wantBefore int
		wantAfter  int
	}{
		{"one P, not set: raised", 1, noEnv, 1, MinProcs},
		{"one P, set explicitly: kept", 1, explicit, 1, 1},
		{"enough Ps: kept", MinProcs + 2, noEnv, MinProcs + 2, MinProcs + 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			runtime.GOMAXPROCS(c.start)
			before, after := RaiseProcs(c.env)
			if before != c.wantBefore || after != c.wantAfter {
				t.Fatalf("RaiseProcs = %d, %d; want %d, %d", before, after, c.wantBefore, c.wantAfter)
			}
			if got := runtime.GOMAXPROCS(0); got != c.wantAfter {
				t.Fatalf("GOMAXPROCS is %d afterwards, want %d", got, c.wantAfter)
			}
		})
	}
}
