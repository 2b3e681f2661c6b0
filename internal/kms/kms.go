package kms

import (
	"context"
	"errors"

	"github.com/decryptd/decryptd/internal/dek"
)

// Wrapped is a DEK as the backend stores it: ciphertext made by a root key
// that never leaves the KMS. RootKeyVersion names the root version that
// wrapped it, so a rewrap after a root rotation can find what is left to do.
type Wrapped struct {
	RootKeyID      string `json:"root_key_id"`
	RootKeyVersion string `json:"root_key_version"`
	Ciphertext     []byte `json:"ciphertext"`
}

// IsZero reports whether w holds no ciphertext (for example once shredded).
func (w Wrapped) IsZero() bool { return len(w.Ciphertext) == 0 }

// Provider wraps and unwraps DEKs under a root key. Implementations are safe
// for concurrent use and honour the context's deadline on every call.
//
// Errors are classified with the sentinels below (errors.Is): ErrTransient
// (retry later: network, 5xx, 429, timeout), ErrRootRevoked (the root key is
// disabled or destroyed: every DEK under it is unusable, reason key_revoked)
// and anything else permanent (wrong ciphertext or AAD, unknown root key).
type Provider interface {
	// Wrap seals dek (32 bytes) under the newest root key version, binding aad.
	Wrap(ctx context.Context, dek []byte, aad []string) (Wrapped, error)
	// Unwrap returns the DEK; aad must be what Wrap was given. The caller
	// owns the returned slice and wipes it once used.
	Unwrap(ctx context.Context, w Wrapped, aad []string) ([]byte, error)
	// Rewrap re-seals w under the newest root key version (a no-op copy when
	// it already is), for the rewrap that follows a root rotation.
	Rewrap(ctx context.Context, w Wrapped, aad []string) (Wrapped, error)
}

// Sentinel errors that callers switch on.
var (
	ErrTransient   = errors.New("kms temporarily unavailable")
	ErrRootRevoked = errors.New("root key disabled or destroyed")
)

// DEKAAD is the additional data that binds a wrapped DEK to its name, so a
// wrapped DEK copied onto another key id or version fails to unwrap.
func DEKAAD(ref dek.Ref) []string {
	return []string{"decryptd-dek-v1", ref.KeyID, ref.Version}
}
