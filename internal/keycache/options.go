package keycache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// EntrySource reads one DEK version from the registry. registry.Store
// satisfies it. Get returns registry.ErrNotFound for a version it does not
// have; any other error is taken as "registry unreachable" (transient).
type EntrySource interface {
	Get(ctx context.Context, keyID, version string) (registry.Entry, error)
}

// ChangeFeed streams registry changes. registry.Store satisfies it. Run
// consumes it; without it revocations only take effect when an entry is
// next reloaded.
type ChangeFeed interface {
	Watch(ctx context.Context) (<-chan registry.Change, error)
}

// Unwrapper opens a wrapped DEK. kms.Provider satisfies it. Errors are
// classified with kms.ErrTransient and kms.ErrRootRevoked; the returned
// slice belongs to the caller, which wipes it.
type Unwrapper interface {
	Unwrap(ctx context.Context, w kms.Wrapped, aad []string) ([]byte, error)
}

// UnwrapResult is the outcome of one KMS unwrap, a small fixed set used both
// as the audit result and as the metric label.
type UnwrapResult string

const (
	UnwrapOK        UnwrapResult = "ok"
	UnwrapTransient UnwrapResult = "transient"
	UnwrapRevoked   UnwrapResult = "revoked"
	UnwrapError     UnwrapResult = "error"
)

// UnwrapEvent is the audit record of one KMS unwrap. It names the key and
// what happened, never key material.
type UnwrapEvent struct {
	Time           time.Time
	KeyID          string
	Version        string
	RootKeyID      string
	RootKeyVersion string
	// Trigger is "miss" when a lookup waited for the unwrap, "refresh" when it
	// ran in the background ahead of expiry or while serving stale.
	Trigger string
	// DeviceID is the device whose lookup caused a "miss" unwrap (the first
	// of concurrent lookups); empty for a refresh.
	DeviceID string
	Result   UnwrapResult
	Duration time.Duration
}

// AuditRecorder receives one event per KMS unwrap. Record is called on the
// load path (never on a cache hit) and should not block for long.
type AuditRecorder interface {
	Record(ctx context.Context, ev UnwrapEvent)
}

// AuditFunc adapts a function to AuditRecorder.
type AuditFunc func(ctx context.Context, ev UnwrapEvent)

// Record calls f.
func (f AuditFunc) Record(ctx context.Context, ev UnwrapEvent) { f(ctx, ev) }

// Options configure a Cache. Registry and KMS are required; zero durations
// and counts take the defaults shown.
type Options struct {
	Registry EntrySource // required
	KMS      Unwrapper   // required
	// Changes feeds Run. Nil: Run fails, and revocations are only seen when
	// an entry is reloaded (at the latest after TTL).
	Changes ChangeFeed
	// Audit receives one event per unwrap. Nil discards them; the daemon
	// must wire one, since every key access is to be accounted for.
	Audit      AuditRecorder
	Registerer prometheus.Registerer // nil: metrics are kept but not exported
	Logger     *zap.Logger           // nil: no logging

	// Now is the clock. Only differences between its readings are used, so
	// a fake clock may start anywhere. Default: the monotonic clock, read by
	// a ticker every 50ms so a hit does not pay for reading the time.
	Now func() time.Time
	// Rand returns a number in [0, 1) for the lifetime jitter (default
	// math/rand/v2.Float64).
	Rand func() float64

	// TTL is an entry's lifetime, counted from its load (default 1h).
	TTL time.Duration
	// Jitter spreads lifetimes by ±Jitter×TTL so entries loaded together do
	// not expire together (default 0.1; negative for none; at most 0.5).
	Jitter float64
	// RefreshAhead is the window before expiry in which a hit starts one
	// background refresh (default 5m). Must be shorter than the shortest
	// jittered TTL.
	RefreshAhead time.Duration
	// StaleLimit is how long past its lifetime an entry keeps serving while
	// the KMS or the registry cannot be reached (default 6h).
	StaleLimit time.Duration
	// StaleRetry is the pause between background refresh attempts of an
	// entry whose last refresh failed transiently (default 30s).
	StaleRetry time.Duration
	// StaleWait is how long a lookup of an entry that expired while idle
	// waits for its reload before it is served stale, should the KMS be
	// slow or down (default 1s). Within the stale limit only.
	StaleWait time.Duration
	// NegativeTTL is how long "the registry has no such version" (and a
	// permanent KMS refusal) is remembered (default 30s).
	NegativeTTL time.Duration
	// MaxEntries bounds the number of cached entries, negative ones
	// included (default 100000).
	MaxEntries int
	// MaxConcurrentUnwraps caps KMS calls in flight across all keys
	// (default 16).
	MaxConcurrentUnwraps int
	// UnwrapTimeout bounds each KMS call, the wait for a KMS slot, and each
	// registry read (default 10s).
	UnwrapTimeout time.Duration
	// RevalidateWorkers is how many registry reads run at once when the
	// change feed resets and every cached entry is re-checked (default 8).
	RevalidateWorkers int
}

// Defaults of Options.
const (
	DefaultTTL                  = time.Hour
	DefaultJitter               = 0.1
	DefaultRefreshAhead         = 5 * time.Minute
	DefaultStaleLimit           = 6 * time.Hour
	DefaultStaleRetry           = 30 * time.Second
	DefaultStaleWait            = time.Second
	DefaultNegativeTTL          = 30 * time.Second
	DefaultMaxEntries           = 100_000
	DefaultMaxConcurrentUnwraps = 16
	DefaultUnwrapTimeout        = 10 * time.Second
	DefaultRevalidateWorkers    = 8
)

// withDefaults fills zero fields and validates the result, naming the field
// at fault.
func (o Options) withDefaults() (Options, error) {
	if o.Registry == nil {
		return o, errors.New("keycache: Options.Registry is required")
	}
	if o.KMS == nil {
		return o, errors.New("keycache: Options.KMS is required")
	}
	if o.Audit == nil {
		o.Audit = AuditFunc(func(context.Context, UnwrapEvent) {})
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	setDur := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	setDur(&o.TTL, DefaultTTL)
	setDur(&o.RefreshAhead, DefaultRefreshAhead)
	setDur(&o.StaleLimit, DefaultStaleLimit)
	setDur(&o.StaleRetry, DefaultStaleRetry)
	setDur(&o.StaleWait, DefaultStaleWait)
	setDur(&o.NegativeTTL, DefaultNegativeTTL)
	setDur(&o.UnwrapTimeout, DefaultUnwrapTimeout)
	switch {
	case o.Jitter == 0:
		o.Jitter = DefaultJitter
	case o.Jitter < 0:
		o.Jitter = 0
	}
	if o.MaxEntries == 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if o.MaxConcurrentUnwraps == 0 {
		o.MaxConcurrentUnwraps = DefaultMaxConcurrentUnwraps
	}
	if o.RevalidateWorkers == 0 {
		o.RevalidateWorkers = DefaultRevalidateWorkers
	}

	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"TTL", o.TTL}, {"RefreshAhead", o.RefreshAhead}, {"StaleLimit", o.StaleLimit},
		{"StaleRetry", o.StaleRetry}, {"StaleWait", o.StaleWait}, {"NegativeTTL", o.NegativeTTL}, {"UnwrapTimeout", o.UnwrapTimeout},
	} {
		if d.v < 0 {
			return o, fmt.Errorf("keycache: Options.%s: must not be negative, got %s", d.name, d.v)
		}
	}
	if o.Jitter > 0.5 {
		return o, fmt.Errorf("keycache: Options.Jitter: must be at most 0.5, got %g", o.Jitter)
	}
	if minTTL := time.Duration(float64(o.TTL) * (1 - o.Jitter)); o.RefreshAhead >= minTTL {
		return o, fmt.Errorf("keycache: Options.RefreshAhead: must be shorter than the shortest lifetime %s, got %s", minTTL, o.RefreshAhead)
	}
	if o.MaxEntries < 1 {
		return o, fmt.Errorf("keycache: Options.MaxEntries: must be positive, got %d", o.MaxEntries)
	}
	if o.MaxConcurrentUnwraps < 1 {
		return o, fmt.Errorf("keycache: Options.MaxConcurrentUnwraps: must be positive, got %d", o.MaxConcurrentUnwraps)
	}
	if o.RevalidateWorkers < 1 {
		return o, fmt.Errorf("keycache: Options.RevalidateWorkers: must be positive, got %d", o.RevalidateWorkers)
	}
	return o, nil
}
