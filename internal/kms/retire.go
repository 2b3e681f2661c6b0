package kms

import (
	"context"
	"errors"
)

// RootVersion names one version of one root key.
type RootVersion struct {
	RootKeyID string `json:"root_key_id"`
	Version   string `json:"root_key_version"`
}

// RootRetirer destroys old root key versions, so that every DEK ever
// wrapped under them, in any copy of the registry (backups included),
// becomes undecryptable. dekctl root retire and dekctl shred --complete use
// it; the daemon never does.
//
// What one retirement destroys depends on the service: the local provider
// removes exactly the version from its file; Key Protect cannot delete a
// single version of a key, only the whole key, so there retiring a version
// deletes its key with every version. RetireScope says which versions go,
// so the caller can first check that no DEK it still needs is wrapped under
// any of them.
type RootRetirer interface {
	// RetireScope returns the root versions that retiring version of
	// rootKeyID would destroy. ErrRetireWrapping when that includes the
	// version that wraps new DEKs; a not-found error when there is no such
	// version.
	RetireScope(ctx context.Context, rootKeyID, version string) ([]RootVersion, error)
	// RetireRootVersion destroys what RetireScope names. It does not look
	// at the registry: the caller checks that nothing needed is wrapped
	// under the scope first.
	RetireRootVersion(ctx context.Context, rootKeyID, version string) error
}

// RootReplacer is a provider whose versions cannot be retired one at a time
// (Key Protect). Retiring a version of its wrapping root key then means
// moving every DEK under that key to another root key first: WithRootKey
// returns a provider like this one that wraps and rewraps under id instead.
type RootReplacer interface {
	WithRootKey(id string) Provider
}

// ErrRetireWrapping: the retirement would destroy the root version that
// wraps new DEKs (rotate first, or, where a version cannot be retired
// alone, move to another root key first).
var ErrRetireWrapping = errors.New("root version still wraps new DEKs")
