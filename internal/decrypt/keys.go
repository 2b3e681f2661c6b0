package decrypt

import (
	"context"
	"crypto/cipher"
)

// KeyResolver finds the ready AES-256-GCM cipher for one DEK version, as the
// given device may use it. The key cache implements it; tests use a fake.
//
// Errors, matched with errors.Is:
//   - dek.ErrUnknownKey: no such version, or a key id the device may not use
//     (reason unknown_key);
//   - dek.ErrRevoked: the version is revoked or shredded, or its root key is
//     (reason key_revoked);
//   - dek.ErrUnavailable: the KMS cannot be reached and the key is not
//     cached; transient, the caller retries and never dead-letters.
//
// ResolveKey must be cheap on a hit: it runs once per message.
type KeyResolver interface {
	ResolveKey(ctx context.Context, keyID, keyVersion, deviceID string) (cipher.AEAD, error)
}

// CachedKeyResolver is a KeyResolver that can also answer without waiting
// (the key cache implements it). ResolveCachedKey returns what ResolveKey
// would, or an error wrapping dek.ErrWouldWait when ResolveKey would wait
// for a load; PrefetchKey then starts that load without waiting for it.
// TryOpen needs it.
type CachedKeyResolver interface {
	KeyResolver
	ResolveCachedKey(keyID, keyVersion, deviceID string) (cipher.AEAD, error)
	PrefetchKey(keyID, keyVersion, deviceID string)
}
