package sink

import (
	"context"
	"time"
)

// SetHTTPSleep replaces the wait between attempts, so tests can see the
// waits without spending them.
func SetHTTPSleep(s *HTTP, f func(ctx context.Context, d time.Duration) error) { s.sleep = f }

// ParseRetryAfter exposes parseRetryAfter to the tests.
func ParseRetryAfter(v string, now time.Time) time.Duration { return parseRetryAfter(v, now) }

// WithScheme exposes withScheme to the tests.
func WithScheme(scheme, secret string) string { return withScheme(scheme, secret) }

// LinesOK exposes linesOK to the tests.
func LinesOK(buf []byte, batch []Record) bool { return linesOK(buf, batch) }
