package daemontest

import (
	"context"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// ReadyLimit is how long Start waits for /readyz.
const ReadyLimit = 15 * time.Second

// StopLimit is how long stop waits for Run to return.
const StopLimit = 30 * time.Second

// Start builds the daemon from opts under a context derived from ctx, runs
// it and waits until it is ready. stop cancels it and waits for Run; it is
// also deferred to the end of the test, where a second call does nothing.
func Start(ctx context.Context, t testing.TB, opts daemon.Options) (d *daemon.Daemon, stop func()) {
	t.Helper()
	dctx, cancel := context.WithCancel(ctx)
	d, err := daemon.New(dctx, opts)
	if err != nil {
		cancel()
		t.Fatalf("daemon.New: %v", err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(dctx) }()
	stopped := false
	stop = func() {
		t.Helper()
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-runErr:
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
		case <-time.After(StopLimit):
			t.Fatalf("daemon did not stop within %s", StopLimit)
		}
	}
	t.Cleanup(stop)
	wait.Within(t, ReadyLimit, "/readyz", d.Ready)
	return d, stop
}
