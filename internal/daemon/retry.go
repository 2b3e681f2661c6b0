package daemon

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/health"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/keyprotect"
	"github.com/decryptd/decryptd/internal/redact"
)

// Start-up backoff for a dependency that is down (PostgreSQL, the KMS):
// the first retry after startRetryMin, doubling up to startRetryMax.
const (
	startRetryMin = 500 * time.Millisecond
	startRetryMax = 30 * time.Second
)

// ErrStartCanceled is returned by New (and Run) when the context ended
// while the start waited for a dependency (SIGTERM during the wait): a
// clean stop, not a failure.
var ErrStartCanceled = errors.New("daemon: stopped while waiting to start")

// retryStart calls open until it succeeds or ctx ends, waiting with
// exponential backoff between attempts and logging each failure, so that a
// dependency down at start (PostgreSQL restarting with the pods, the KMS
// unreachable) delays the daemon instead of ending it. Meanwhile cause is
// degraded in h ("unreachable at start"), /healthz and /metrics are served
// and /readyz says what the start waits for. permanent reports errors no
// retry can fix (a DSN that does not parse, credentials refused); they end
// the start at once. A ctx that ends makes the error wrap
// ErrStartCanceled.
func retryStart[T any](ctx context.Context, log *zap.Logger, h *health.Tracker, cause health.Cause, what string, open func(context.Context) (T, error), permanent func(error) bool) (T, error) {
	wait := startRetryMin
	for attempt := 1; ; attempt++ {
		v, err := open(ctx)
		if err == nil {
			h.Set(cause, "", false, "")
			if attempt > 1 {
				log.Info(what+" reachable; starting", zap.Int("attempts", attempt))
			}
			return v, nil
		}
		if ctx.Err() != nil {
			h.Set(cause, "", false, "")
			return v, fmt.Errorf("%w (%w): %s: %w", ErrStartCanceled, ctx.Err(), what, redact.Error(err))
		}
		if permanent != nil && permanent(err) {
			h.Set(cause, "", false, "")
			return v, err
		}
		h.Set(cause, "", true, "unreachable at start")
		log.Warn(what+" unreachable at start; retrying (not ready meanwhile)",
			zap.Int("attempt", attempt), zap.Stringer("retry_in", wait), zap.Error(redact.Error(err)))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			h.Set(cause, "", false, "")
			return v, fmt.Errorf("%w after %d attempts (%w): %s: %w", ErrStartCanceled, attempt, ctx.Err(), what, redact.Error(err))
		case <-t.C:
		}
		wait = min(wait*2, startRetryMax)
	}
}

// pgAuthState matches the SQLSTATEs no retry fixes, as pgstore writes
// them ("postgres 28P01: ..."): class 28 (invalid authorization: a wrong
// password, no pg_hba entry), 3D000 (no such database), 42501 (no
// privilege).
var pgAuthState = regexp.MustCompile(`postgres (28[0-9A-Z]{3}|3D000|42501):`)

// pgPermanent: a DSN that does not parse (pgstore's error names no more,
// so that it cannot quote a password), or a server that refuses the
// credentials or the database, is not retried.
func pgPermanent(err error) bool {
	s := err.Error()
	return strings.Contains(s, "cannot parse the DSN") || pgAuthState.MatchString(s)
}

// kmsPermanent: Key Protect refused the credentials (IAM or Key Protect
// 401; a 403 may be a role that may unwrap but not read the root key's
// metadata, so it is not taken as fatal) or does not know the root key.
func kmsPermanent(err error) bool {
	if errors.Is(err, kms.ErrTransient) {
		return false
	}
	if errors.Is(err, keyprotect.ErrNotFound) {
		return true
	}
	var ke *keyprotect.Error
	return errors.Is(err, keyprotect.ErrUnauthorized) && errors.As(err, &ke) && ke.Status != 403
}
