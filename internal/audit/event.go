package audit

import (
	"context"
	"errors"
	"math"
	"time"
	"unicode/utf8"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// Action says what was done to a key.
type Action string

// The actions decryptd and dekctl record. Other short lower-case names
// ([a-z0-9_]) are accepted too.
const (
	ActionUnwrap     Action = "unwrap"      // a DEK unwrapped by the KMS (cache miss)
	ActionWrap       Action = "wrap"        // a new DEK wrapped
	ActionRewrap     Action = "rewrap"      // a wrapped DEK moved to the newest root version
	ActionProvision  Action = "provision"   // a DEK version created for a device or group
	ActionImport     Action = "import"      // a wrapped DEK imported from elsewhere
	ActionRotate     Action = "rotate"      // a new DEK version made active, the old one decrypt-only
	ActionRevoke     Action = "revoke"      // a DEK version revoked
	ActionRestore    Action = "restore"     // a revocation undone
	ActionShred      Action = "shred"       // a wrapped DEK destroyed
	ActionDevices    Action = "devices"     // a group key's device list changed
	ActionRootCreate Action = "root_create" // a root key created
	ActionRootRotate Action = "root_rotate" // a root key rotated
)

// Results: "ok" or a short, bounded error class (ResultOf).
const (
	ResultOK         = "ok"
	ResultTransient  = "transient"
	ResultRevoked    = "revoked"
	ResultUnknownKey = "unknown_key"
	ResultShredded   = "shredded"
	ResultCanceled   = "canceled"
	ResultError      = "error"
)

// ResultOf classifies err into one of the Result values. Never the error's
// text: that may carry detail no audit reader needs, and is unbounded.
func ResultOf(err error) string {
	switch {
	case err == nil:
		return ResultOK
	case errors.Is(err, registry.ErrShredded):
		return ResultShredded
	case errors.Is(err, dek.ErrRevoked), errors.Is(err, kms.ErrRootRevoked):
		return ResultRevoked
	case errors.Is(err, dek.ErrUnknownKey), errors.Is(err, registry.ErrNotFound):
		return ResultUnknownKey
	case errors.Is(err, dek.ErrUnavailable), errors.Is(err, kms.ErrTransient), errors.Is(err, context.DeadlineExceeded):
		return ResultTransient
	case errors.Is(err, context.Canceled):
		return ResultCanceled
	}
	return ResultError
}

// Millis converts a duration to the float milliseconds of DurationMS.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Event is one line of the audit log. Append fills Seq, Prev, Hash, and Time
// and Actor when left zero.
type Event struct {
	Seq            uint64    `json:"seq"`
	Time           time.Time `json:"time"`
	Actor          string    `json:"actor"`
	Action         Action    `json:"action"`
	KeyID          string    `json:"key_id,omitempty"`
	KeyVersion     string    `json:"key_version,omitempty"`
	RootKeyID      string    `json:"root_key_id,omitempty"`
	RootKeyVersion string    `json:"root_key_version,omitempty"`
	Result         string    `json:"result"`
	DurationMS     float64   `json:"duration_ms"`
	// Detail is short operator text ("grace 24h", "3 devices added"); never
	// key material, never a payload.
	Detail string `json:"detail,omitempty"`
	Prev   string `json:"prev"`
	// Hash is this line's own hash (written last on the line, see doc.go).
	Hash string `json:"-"`
}

// Field bounds keep every line well under maxLine, whatever a caller passes:
// key ids come from device messages and may be hostile.
const (
	maxNameLen   = 256
	maxDetailLen = 512
	maxLine      = 8 << 10
)

// ErrInvalidEvent: an event without actor, action or result, or with one of
// them outside [a-z0-9_.-]{1,32}.
var ErrInvalidEvent = errors.New("audit: invalid event")

func validToken(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// clip truncates s to at most n bytes on a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// normalise bounds the free fields and checks the fixed ones.
func (e *Event) normalise() error {
	e.Time = e.Time.UTC()
	e.KeyID = clip(e.KeyID, maxNameLen)
	e.KeyVersion = clip(e.KeyVersion, maxNameLen)
	e.RootKeyID = clip(e.RootKeyID, maxNameLen)
	e.RootKeyVersion = clip(e.RootKeyVersion, maxNameLen)
	e.Detail = clip(e.Detail, maxDetailLen)
	if math.IsNaN(e.DurationMS) || math.IsInf(e.DurationMS, 0) || e.DurationMS < 0 {
		e.DurationMS = 0
	}
	if !validToken(e.Actor) || !validToken(string(e.Action)) || !validToken(e.Result) {
		return ErrInvalidEvent
	}
	return nil
}
