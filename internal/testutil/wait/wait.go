// Package wait polls a condition in tests, written once: For and Within
// call cond until it holds, sleeping a little more each time (1 ms up to
// 20 ms, so a quick condition is seen at once and a slow one does not spin),
// and fail the test, naming what was awaited, when the limit passes.
package wait

import (
	"testing"
	"time"
)

// DefaultLimit is For's limit: generous, since a loaded CI machine is slow,
// and a passing test never waits it out.
const DefaultLimit = 20 * time.Second

// For waits up to DefaultLimit for cond.
func For(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	Within(tb, DefaultLimit, what, cond)
}

// Within waits up to limit for cond; past it, the test fails with what.
func Within(tb testing.TB, limit time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(limit)
	pause := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(pause)
		pause = min(2*pause, 20*time.Millisecond)
	}
}
