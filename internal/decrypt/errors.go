package decrypt

import "errors"

// Failure reasons of the spec, in the spec's order. Open wraps exactly one
// of them (with %w and a detail that never holds plaintext or key material)
// when a message cannot be decrypted; the caller counts it under Reason(err)
// and dead-letters the message as received.
var (
	ErrMalformed     = errors.New("malformed")
	ErrTopicMismatch = errors.New("topic_mismatch")
	ErrStale         = errors.New("stale")
	ErrUnknownKey    = errors.New("unknown_key")
	ErrKeyRevoked    = errors.New("key_revoked")
	ErrAuthFailed    = errors.New("auth_failed")
	ErrBadPlaintext  = errors.New("bad_plaintext")
	ErrReplay        = errors.New("replay")
)

// Outcomes that are not reasons.
var (
	// ErrDuplicate: a broker redelivery (DUP flag set) of a message this
	// Decryptor already accepted. Not dead-lettered: the caller acknowledges
	// it again and counts it as a duplicate.
	ErrDuplicate = errors.New("duplicate delivery")
	// ErrTransient: the key could not be resolved for now (it wraps
	// dek.ErrUnavailable, or the resolver's unclassified error). The caller
	// retries the message later and never dead-letters it.
	ErrTransient = errors.New("transient")
	// ErrWouldBlock: TryOpen could not decide without waiting (the key is
	// not cached, or the resolver cannot answer without waiting). Nothing
	// was recorded; Open decides.
	ErrWouldBlock = errors.New("would block")
)

// reasonOrder pairs each reason sentinel with its name, in the spec's
// order. A function, not a package variable, so nothing can mutate it.
func reasonOrder() [8]struct {
	err  error
	name string
} {
	return [8]struct {
		err  error
		name string
	}{
		{ErrMalformed, "malformed"},
		{ErrTopicMismatch, "topic_mismatch"},
		{ErrStale, "stale"},
		{ErrUnknownKey, "unknown_key"},
		{ErrKeyRevoked, "key_revoked"},
		{ErrAuthFailed, "auth_failed"},
		{ErrBadPlaintext, "bad_plaintext"},
		{ErrReplay, "replay"},
	}
}

// Reason returns the spec's name of the failure reason err carries
// ("malformed" ... "replay"), or "" when err is nil, a duplicate, transient
// or anything else that is not a reason.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	for _, r := range reasonOrder() {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return ""
}

// Reasons returns every reason name in the spec's order, as a fresh slice
// (for pre-registering metric labels).
func Reasons() []string {
	order := reasonOrder()
	out := make([]string, len(order))
	for i, r := range order {
		out[i] = r.name
	}
	return out
}
