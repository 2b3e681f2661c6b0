package dek

import (
	"errors"
	"fmt"
)

// State is the lifecycle state of one DEK version.
type State string

const (
	// StateActive: devices seal with it and the backend opens with it.
	StateActive State = "active"
	// StateDecryptOnly: superseded by a newer version; messages still in
	// flight or buffered under it keep decrypting until the grace period ends.
	StateDecryptOnly State = "decrypt_only"
	// StateRevoked: messages under it fail with key_revoked. The wrapped DEK
	// is kept, so an operator can undo a mistaken revoke.
	StateRevoked State = "revoked"
	// StateShredded: the wrapped DEK is destroyed (crypto-shredding); only a
	// tombstone remains. There is no way back.
	StateShredded State = "shredded"
)

// Valid reports whether s is one of the four states.
func (s State) Valid() bool {
	switch s {
	case StateActive, StateDecryptOnly, StateRevoked, StateShredded:
		return true
	}
	return false
}

// CanDecrypt reports whether messages under a version in state s may be opened.
func (s State) CanDecrypt() bool { return s == StateActive || s == StateDecryptOnly }

// Ref names one DEK version.
type Ref struct {
	KeyID   string `json:"key_id"`
	Version string `json:"key_version"`
}

func (r Ref) String() string { return r.KeyID + "@" + r.Version }

// Errors of a key lookup. Callers switch on them with errors.Is; the
// decryption core maps the first two to the spec's reasons unknown_key and
// key_revoked, and treats ErrUnavailable as transient (retry, never a reason).
var (
	ErrUnknownKey  = errors.New("unknown key")
	ErrRevoked     = errors.New("key revoked")
	ErrUnavailable = errors.New("key temporarily unavailable")
	// ErrWouldWait: a lookup asked not to wait found no usable cached
	// answer; the same lookup allowed to wait would load the key (and may
	// then succeed). Not a verdict on the key.
	ErrWouldWait = errors.New("key not cached; resolving it would wait")
)

// ParseState turns the text form back into a State, refusing anything else.
func ParseState(s string) (State, error) {
	st := State(s)
	if !st.Valid() {
		return "", fmt.Errorf("unknown key state %q (want active, decrypt_only, revoked or shredded)", s)
	}
	return st, nil
}
