package keycache

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"slices"
	"sync/atomic"

	"github.com/decryptd/decryptd/internal/dek"
)

// kind says what a cache entry remembers. It never changes for an entry: a
// key that gets revoked has its entry replaced, not mutated.
type kind uint8

const (
	kindKey      kind = iota // a ready cipher
	kindNotFound             // the registry has no such version (unknown_key)
	kindRevoked              // revoked, shredded, or its root key is (key_revoked)
	kindFailed               // the KMS refused the unwrap for good (transient to callers)
)

// entry is one cached answer for one DEK version.
type entry struct {
	ref  dek.Ref
	kind kind
	// until and err are the cached answer of the negative kinds.
	until int64
	err   error

	// v is the loaded cipher and its validity (kindKey only). A refresh
	// swaps in a new value; readers never see a half-updated one.
	v atomic.Pointer[value]
	// lastUsed drives the approximate LRU. It is only written when it moved
	// by touchEvery, so a hot key's hits do not all write one cache line.
	lastUsed atomic.Int64
	// refreshing: a background refresh runs (one per key at most).
	refreshing atomic.Bool
	// failing: the last refresh failed transiently, so the entry may be
	// served stale up to its staleUntil; retryAt paces new attempts.
	failing atomic.Bool
	retryAt atomic.Int64
}

// value is a loaded DEK version: the cipher, who may use it, and when it
// must be refreshed. Immutable once published.
type value struct {
	aead       cipher.AEAD
	devices    deviceSet
	refreshAt  int64 // a hit from here on starts a background refresh
	expiresAt  int64 // lifetime ends: reload, or serve stale if failing
	staleUntil int64 // never served past this
}

// smallGroup is the size up to which a linear scan beats a map lookup.
const smallGroup = 8

// deviceSet is the set of devices allowed to use a group key, as the
// registry listed them when the entry was loaded.
type deviceSet struct {
	list []string            // groups of up to smallGroup devices
	set  map[string]struct{} // larger groups
}

func newDeviceSet(devices []string) deviceSet {
	if len(devices) <= smallGroup {
		// Copied: the registry's slice may be shared with its own state.
		return deviceSet{list: slices.Clone(devices)}
	}
	m := make(map[string]struct{}, len(devices))
	for _, d := range devices {
		m[d] = struct{}{}
	}
	return deviceSet{set: m}
}

func (d *deviceSet) has(id string) bool {
	if d.set != nil {
		_, ok := d.set[id]
		return ok
	}
	for _, x := range d.list {
		if x == id {
			return true
		}
	}
	return false
}

// allows is registry.Entry.AllowsDevice over the cached device set.
func (v *value) allows(keyID, deviceID string) bool {
	if dek.IsDeviceKeyIDOf(keyID, deviceID) {
		return true
	}
	return v.devices.has(deviceID)
}

// errKeySize: the KMS returned something that is not an AES-256 key.
var errKeySize = errors.New("unwrapped DEK is not 32 bytes")

// newAEAD builds the AES-256-GCM cipher and wipes key, whatever happens.
// Only our copy can be wiped: the cipher keeps its own expanded key
// schedule, and the intermediate cipher.Block that crypto/aes built is left
// to the garbage collector (neither can be zeroed through the public API).
func newAEAD(key []byte) (cipher.AEAD, error) {
	defer clear(key)
	if len(key) != 32 {
		return nil, errKeySize
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
