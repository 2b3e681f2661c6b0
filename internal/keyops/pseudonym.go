package keyops

import (
	"context"

	"github.com/decryptd/decryptd/internal/registry"
)

// pseudonymKeyPrefix is pseudonym.KeyIDPrefix (package pseudonym imports
// keycache; keyops stays below it).
const pseudonymKeyPrefix = "pseudonym/"

// RotatePseudonymKey creates the next version of the pseudonymization key
// pseudonym/<name> (v1 when it has none), active, and moves the versions
// that were active to decrypt_only: every daemon then pseudonymizes under
// the new version (package pseudonym follows the change feed). The key is
// made, wrapped and wiped like a DEK; no device may use it. Needs KMS,
// Registry, Audit.
func (op *Ops) RotatePseudonymKey(ctx context.Context, name string) (registry.Entry, error) {
	keyID := pseudonymKeyPrefix + name
	if name == "" || !registry.ValidKeyID(keyID) {
		return registry.Entry{}, invalid("pseudonymization key name %q: want A-Z a-z 0-9 . _ -", clip(name))
	}
	if err := op.needKMS(); err != nil {
		return registry.Entry{}, err
	}
	e, key, err := op.createNext(ctx, keyID, nil, "pseudonymization key "+name)
	clear(key)
	if err != nil {
		return registry.Entry{}, err
	}
	if err := op.demoteOthers(ctx, keyID, e.Version); err != nil {
		return registry.Entry{}, err
	}
	return e, nil
}
