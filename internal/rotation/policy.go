package rotation

import (
	"errors"
	"fmt"
	"time"
)

// Policy is the rotation policy (config: rotation).
type Policy struct {
	// MaxAge: a DEK version older than this is rotated (default 30 days).
	MaxAge time.Duration
	// GracePeriod: how long a superseded version keeps decrypting after its
	// successor's adoption (default 72h).
	GracePeriod time.Duration
	// SharePerWindow: the share of the fleet's keys whose rotation may start
	// per ShareWindow (default 0.10 per 24h). Rotations forced by an
	// operator or by the message limit are not counted against it.
	SharePerWindow float64
	ShareWindow    time.Duration
	// RetryInterval: a pending rotation's rekey is sent again this long
	// after the last attempt (default 1h); a device still not adopting after
	// the first retry is a straggler.
	RetryInterval time.Duration
	// MessageLimit: a version under which this many messages were decrypted
	// is rotated early (default 2^31).
	MessageLimit uint64
	// PauseThreshold: the rollout pauses (no new rotations start) while the
	// share of pending rotations that are stragglers or whose last delivery
	// failed is above it (default 0.2), once at least PauseMinSample
	// rotations are pending (default 20).
	PauseThreshold float64
	PauseMinSample int
	// RootMaxAge: the root key is rotated, and every DEK rewrapped, this
	// long after its last rotation (default 365 days; 0 with
	// RootRotationOff to disable).
	RootMaxAge      time.Duration
	RootRotationOff bool
	// Tick is how often the controller looks at the registry (default 10s).
	Tick time.Duration
}

// Defaults.
const (
	DefaultMaxAge         = 30 * 24 * time.Hour
	DefaultGracePeriod    = 72 * time.Hour
	DefaultSharePerWindow = 0.10
	DefaultShareWindow    = 24 * time.Hour
	DefaultRetryInterval  = time.Hour
	DefaultMessageLimit   = uint64(1) << 31
	DefaultPauseThreshold = 0.2
	DefaultPauseMinSample = 20
	DefaultRootMaxAge     = 365 * 24 * time.Hour
	DefaultTick           = 10 * time.Second
)

// WithDefaults fills zero fields and checks the result.
func (p Policy) WithDefaults() (Policy, error) {
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	set(&p.MaxAge, DefaultMaxAge)
	set(&p.GracePeriod, DefaultGracePeriod)
	set(&p.ShareWindow, DefaultShareWindow)
	set(&p.RetryInterval, DefaultRetryInterval)
	set(&p.RootMaxAge, DefaultRootMaxAge)
	set(&p.Tick, DefaultTick)
	if p.SharePerWindow == 0 {
		p.SharePerWindow = DefaultSharePerWindow
	}
	if p.MessageLimit == 0 {
		p.MessageLimit = DefaultMessageLimit
	}
	if p.PauseThreshold == 0 {
		p.PauseThreshold = DefaultPauseThreshold
	}
	if p.PauseMinSample == 0 {
		p.PauseMinSample = DefaultPauseMinSample
	}
	switch {
	case p.MaxAge < 0 || p.GracePeriod < 0 || p.ShareWindow < 0 || p.RetryInterval < 0 || p.RootMaxAge < 0 || p.Tick < 0:
		return p, errors.New("rotation policy: durations must not be negative")
	case p.SharePerWindow < 0 || p.SharePerWindow > 1:
		return p, fmt.Errorf("rotation policy: share %g: want 0 to 1", p.SharePerWindow)
	case p.PauseThreshold < 0 || p.PauseThreshold > 1:
		return p, fmt.Errorf("rotation policy: pause threshold %g: want 0 to 1", p.PauseThreshold)
	case p.MessageLimit > uint64(1)<<32:
		return p, fmt.Errorf("rotation policy: message limit %d is over 2^32 (NIST SP 800-38D, random nonces)", p.MessageLimit)
	}
	return p, nil
}
