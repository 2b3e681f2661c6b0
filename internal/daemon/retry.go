package daemon

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Start-up backoff for a dependency that is down (PostgreSQL): the first
// retry after startRetryMin, doubling up to startRetryMax.
const (
	startRetryMin = 500 * time.Millisecond
	startRetryMax = 30 * time.Second
)

// retryStart calls open until it succeeds or ctx ends, waiting with
// exponential backoff between attempts and logging each failure, so that a
// dependency down at start (PostgreSQL restarting with the pods) delays the
// daemon instead of ending it: until open succeeds nothing serves, so the
// pod is not ready. permanent reports errors no retry can fix (a DSN that
// does not parse); they end the start at once.
func retryStart[T any](ctx context.Context, log *zap.Logger, what string, open func(context.Context) (T, error), permanent func(error) bool) (T, error) {
	wait := startRetryMin
	for attempt := 1; ; attempt++ {
		v, err := open(ctx)
		if err == nil {
			if attempt > 1 {
				log.Info(what+" reachable; starting", zap.Int("attempts", attempt))
			}
			return v, nil
		}
		if permanent != nil && permanent(err) {
			return v, err
		}
		log.Warn(what+" unreachable at start; retrying (not ready meanwhile)",
			zap.Int("attempt", attempt), zap.Stringer("retry_in", wait), zap.Error(err))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, fmt.Errorf("%w (gave up after %d attempts: %w)", err, attempt, ctx.Err())
		case <-t.C:
		}
		wait = min(wait*2, startRetryMax)
	}
}

// pgPermanent: a DSN that does not parse is not retried (pgstore's error
// names no more, so that it cannot quote a password).
func pgPermanent(err error) bool { return strings.Contains(err.Error(), "cannot parse the DSN") }
