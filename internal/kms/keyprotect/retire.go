package keyprotect

import (
	"context"
	"fmt"
	"slices"

	kp "github.com/IBM/keyprotect-go-client"

	"github.com/decryptd/decryptd/internal/kms"
)

// Key Protect keeps every version of a root key until the key itself is
// deleted: rotation adds a version, older ones keep unwrapping, and there is
// no call that deletes one version (the API's key versions are list-only:
// GET keys/{id}/versions). Deleting the key destroys all its versions at
// once: the key goes to the Destroyed state (restorable for 30 days), can be
// purged by hand 4 hours after the deletion, and is purged automatically
// after 90 days. Sources (IBM Cloud docs): key-protect-key-rotation,
// key-protect-view-key-versions, key-protect-delete-purge-keys,
// key-protect-restore-keys; see docs/crypto-shredding.md.
//
// So the equivalent of retiring a version is: move every DEK under the key
// to another root key (WithRootKey + Rewrap), then delete the old key.

var (
	_ kms.RootRetirer  = (*Provider)(nil)
	_ kms.RootReplacer = (*Provider)(nil)
)

// WithRootKey returns a provider like p (same client, call slots and
// deadline) that wraps and rewraps under root key id instead of the
// configured one; Rewrap through it moves a DEK from any root key to id.
func (p *Provider) WithRootKey(id string) kms.Provider {
	q := *p // every field shared (the client, the call slots), but the root
	q.rootID = id
	return &q
}

// RetireScope is every version of the key holding version: Key Protect
// deletes whole keys only. It is kms.ErrRetireWrapping when that key is
// the one this provider wraps under.
func (p *Provider) RetireScope(ctx context.Context, rootKeyID, version string) ([]kms.RootVersion, error) {
	rk, err := p.DescribeRoot(ctx, rootKeyID)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(rk.Versions, version) {
		return nil, &Error{Op: "retire", RootKeyID: rootKeyID, Msg: fmt.Sprintf("root key has no version %q", version), kind: ErrNotFound}
	}
	if p.rootID != "" && (p.rootID == rk.ID || p.rootID == rootKeyID || p.rootID == rk.Name) {
		return nil, fmt.Errorf("keyprotect retire %s version %s: %w: Key Protect cannot delete one version of a key, only the whole key, and this key wraps new DEKs; move the DEKs to another root key first (dekctl shred --complete does)",
			rk.ID, version, kms.ErrRetireWrapping)
	}
	out := make([]kms.RootVersion, len(rk.Versions))
	for i, v := range rk.Versions {
		out[i] = kms.RootVersion{RootKeyID: rk.ID, Version: v}
	}
	return out, nil
}

// RetireRootVersion deletes the whole key holding version (DeleteKey): it
// goes to the Destroyed state at once (no wrap or unwrap under any of its
// versions succeeds from then on, 410), is restorable for 30 days, and is
// purged after 90 (or by hand from 4 hours after the deletion).
func (p *Provider) RetireRootVersion(ctx context.Context, rootKeyID, version string) error {
	scope, err := p.RetireScope(ctx, rootKeyID, version)
	if err != nil {
		return err
	}
	id := scope[0].RootKeyID
	_, err = call(ctx, p, "delete", id, func(ctx context.Context) (*kp.Key, error) {
		return p.client.DeleteKey(ctx, id, kp.ReturnMinimal)
	}, nil)
	return err
}
