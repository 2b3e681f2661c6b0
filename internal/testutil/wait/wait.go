// Package wait polls a condition in tests, written once: For and Within
// call cond until it holds, sleeping a little more each time (1 ms up to
// 20 ms, so a quick condition is seen at once and a slow one does not spin),
// and fail the test, naming what was awaited, when the limit passes.
// Detail does the same for a condition that says why it does not hold yet:
// the reason is logged every few seconds and named in the failure, and it
// polls every 100 ms (such conditions tend to query a database, and the
// tests using it assert on state written just after what they await).
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

// DetailEvery is how often Detail calls its condition.
const DetailEvery = 100 * time.Millisecond

// ProgressEvery is how often Detail logs why it is still waiting.
const ProgressEvery = 5 * time.Second

// Detail waits up to limit for cond, which returns whether it holds and,
// when not, why; the reason is logged every ProgressEvery and named in the
// failure past the limit.
func Detail(tb testing.TB, limit time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(limit)
	logged := time.Now()
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Since(logged) > ProgressEvery {
			tb.Logf("waiting for %s: %s", what, detail)
			logged = time.Now()
		}
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s: %s", limit, what, detail)
		}
		time.Sleep(DetailEvery)
	}
}
