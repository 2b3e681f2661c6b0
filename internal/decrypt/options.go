package decrypt

import (
	"errors"
	"fmt"
	"time"
)

// Defaults of Options.
const (
	DefaultMaxMessageBytes = 256 << 10
	// DefaultTopicPattern is Watson IoT's device event topic.
	DefaultTopicPattern  = "iot-2/type/+/id/{device_id}/evt/+/fmt/+"
	DefaultReplayEntries = 1_000_000
	DefaultReplayMaxAge  = 24 * time.Hour
)

// maxMessageLimit bounds MaxMessageBytes: the scanner keeps 32-bit offsets.
const maxMessageLimit = 1 << 30

// maxReplayEntries bounds ReplayEntries: the window's table has 32-bit
// indices and at least twice as many slots as entries.
const maxReplayEntries = 1 << 28

// Options tunes a Decryptor. The zero value means every default.
type Options struct {
	// MaxMessageBytes: a larger payload is malformed, refused before it is
	// parsed. 0 means DefaultMaxMessageBytes.
	MaxMessageBytes int

	// TopicPattern says where a topic carries the device id: MQTT-style
	// levels separated by '/', where a level is a literal, '+' (any one
	// level), '#' (any remaining levels, last only) or "{device_id}" (any one
	// level, the device id; exactly once). A topic the pattern does not
	// match carries no device id and skips the topic check. "" means
	// DefaultTopicPattern. It applies only to a Message whose input set no
	// DeviceID (a replayed dead letter): an input that determines the
	// device id (the MQTT input, from its own pattern) sets it.
	TopicPattern string

	// ReplayEntries and ReplayMaxAge bound the replay window: at least the
	// last ReplayEntries accepted (key id, key version, nonce) triples are
	// remembered (at most 1/16 more), none for longer than ReplayMaxAge; the
	// oldest are forgotten first. 0 means the default (1,000,000 and 24 h).
	// Memory is about 40 to 49 bytes per entry (42.4 MB at the default
	// bound), grown on demand; see doc.go for the layout.
	ReplayEntries int
	ReplayMaxAge  time.Duration
	// ReplayDisabled turns the replay window off: no replay and no duplicate
	// is ever reported.
	ReplayDisabled bool

	// ClockSkew, when positive, is the stale check's window: a message whose
	// timestamp is further than this from its receive time is stale. 0 turns
	// the check off (the default: devices that buffer offline send old
	// readings).
	ClockSkew time.Duration

	// Now is the clock (replay window ages, receive time when a Message has
	// none). nil means time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() (Options, error) {
	var errs []error
	if o.MaxMessageBytes < 0 || o.MaxMessageBytes > maxMessageLimit {
		errs = append(errs, fmt.Errorf("MaxMessageBytes: must be between 0 and %d", maxMessageLimit))
	} else if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if o.TopicPattern == "" {
		o.TopicPattern = DefaultTopicPattern
	}
	if o.ReplayEntries < 0 || o.ReplayEntries > maxReplayEntries {
		errs = append(errs, fmt.Errorf("ReplayEntries: must be between 0 and %d", maxReplayEntries))
	} else if o.ReplayEntries == 0 {
		o.ReplayEntries = DefaultReplayEntries
	}
	if o.ReplayMaxAge < 0 {
		errs = append(errs, errors.New("ReplayMaxAge: must not be negative"))
	} else if o.ReplayMaxAge == 0 {
		o.ReplayMaxAge = DefaultReplayMaxAge
	}
	if o.ClockSkew < 0 {
		errs = append(errs, errors.New("ClockSkew: must not be negative (0 turns the check off)"))
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, errors.Join(errs...)
}
