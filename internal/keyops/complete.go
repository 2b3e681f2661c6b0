package keyops

import (
	"context"
	"fmt"
	"slices"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// CompleteResult says what ShredComplete did, step by step.
type CompleteResult struct {
	Shredded []Outcome
	// Doomed are the root versions the shredded DEKs were wrapped under.
	Doomed []kms.RootVersion
	// Rotated names the root keys rotated so that no doomed version wraps
	// (local provider).
	Rotated []kms.RootKey
	// Replacement is, where versions cannot be retired one by one (Key
	// Protect), the root key the other DEKs were moved to; the
	// configuration's root key id must name it from now on.
	Replacement string
	Rewrap      RewrapResult
	// Retired lists every root version destroyed by this run.
	Retired []kms.RootVersion
	// Purged says what the registry did to drop dead copies ("" when the
	// store has nothing to purge).
	Purged string
}

// ShredComplete crypto-shreds the selected versions (Shred) and then makes
// every earlier copy of them useless: the root versions they were wrapped
// under are retired, after every other DEK has been moved off them. So a
// registry backup taken before the shred, restored later, no longer yields
// these DEKs under the current root key material.
//
// Steps, each audited on its own, and a final shred_complete event:
//
//  1. Shred the selection (versions already shredded are kept as they are).
//  2. Where a root version can be retired alone (local): rotate each root
//     key whose newest version is doomed, then Rewrap every DEK under an
//     older version. Where it cannot (Key Protect, kms.RootReplacer): create
//     a replacement root key (named "decryptd-replaces-<old id>", reused by
//     a rerun) and move every DEK under the old key onto it.
//  3. Retire every doomed version still present (RootRetire, which refuses
//     while a DEK is still wrapped under it).
//  4. Purge the registry's dead copies when it is a registry.Purger
//     (PostgreSQL: VACUUM FULL).
//
// It is resumable: the shredded tombstones keep the root version they were
// wrapped under, so a rerun after an interruption or failure finds the
// doomed versions again and does what is left. progress follows the
// rewrap. Needs KMS, Roots (a kms.RootRetirer), Registry, Audit.
func (op *Ops) ShredComplete(ctx context.Context, sel Selector, progress RewrapProgress) (CompleteResult, error) {
	var res CompleteResult
	if err := op.needKMS(); err != nil {
		return res, err
	}
	if err := op.needRoots(); err != nil {
		return res, err
	}
	if _, err := op.retirer(); err != nil {
		return res, err // before shredding anything
	}
	var err error
	res.Shredded, err = op.Shred(ctx, sel)
	if err != nil {
		return res, err
	}
	es, err := op.selectEntries(ctx, sel)
	if err != nil {
		return res, err
	}
	res.Doomed = doomedVersions(es)

	present, err := op.presentRoots(ctx)
	if err != nil {
		return res, err
	}
	var live []kms.RootVersion // doomed versions the KMS still holds
	for _, v := range res.Doomed {
		if rk, ok := findRootOf(present, v); ok && slices.Contains(rk.Versions, v.Version) {
			live = append(live, kms.RootVersion{RootKeyID: rk.ID, Version: v.Version})
		}
	}

	retirer, err := op.retirer()
	if err != nil {
		return res, err
	}
	if replacer := kms.CapabilitiesOf(op.o.KMS).Replace; replacer != nil {
		var moved kms.Provider
		moved, err = op.moveToReplacement(ctx, replacer, present, live, &res, progress)
		if r := kms.CapabilitiesOf(moved).Retire; r != nil {
			retirer = r // it wraps under the replacement, so the old key may go
		}
	} else {
		err = op.rotateAndRewrap(ctx, present, live, &res, progress)
	}
	if err != nil {
		return res, err
	}

	gone := map[kms.RootVersion]bool{}
	for _, v := range live {
		if gone[v] {
			continue // destroyed with an earlier one (a whole Key Protect key)
		}
		rr, err := op.rootRetire(ctx, retirer, v.RootKeyID, v.Version)
		if err != nil {
			return res, err
		}
		for _, d := range rr.Destroyed {
			gone[d] = true
			res.Retired = append(res.Retired, d)
		}
	}

	if p, ok := op.o.Registry.(registry.Purger); ok {
		start := op.o.Now()
		res.Purged, err = p.PurgeDestroyed(ctx)
		if err != nil {
			aerr := op.record(ctx, ActionShredComplete, dek.Ref{}, kms.Wrapped{}, start, err, "purge: "+sel.String())
			return res, joinAudit(fmt.Errorf("purge the registry (rerun to finish): %w", err), aerr)
		}
	}
	detail := fmt.Sprintf("%s: %s retired", sel, countOf(len(res.Retired), "root version"))
	if res.Replacement != "" {
		detail += "; replacement root key " + res.Replacement
	}
	if res.Purged != "" {
		detail += "; registry purged"
	}
	return res, op.record(ctx, ActionShredComplete, dek.Ref{}, kms.Wrapped{}, op.o.Now(), nil, detail)
}

// doomedVersions lists the distinct root versions es were wrapped under.
func doomedVersions(es []registry.Entry) []kms.RootVersion {
	var out []kms.RootVersion
	for _, e := range es {
		v := kms.RootVersion{RootKeyID: e.Wrapped.RootKeyID, Version: e.Wrapped.RootKeyVersion}
		if v.Version != "" && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// presentRoots lists the KMS's root keys.
func (op *Ops) presentRoots(ctx context.Context) ([]kms.RootKey, error) {
	roots, err := op.o.Roots.ListRoots(ctx)
	if err != nil {
		return nil, fmt.Errorf("list root keys: %w", err)
	}
	return roots, nil
}

// findRootOf finds the root key holding v: by id, or (an entry naming its
// root by an alias) by the version id.
func findRootOf(roots []kms.RootKey, v kms.RootVersion) (kms.RootKey, bool) {
	for _, rk := range roots {
		if rk.ID == v.RootKeyID || rk.Name == v.RootKeyID {
			return rk, true
		}
	}
	for _, rk := range roots {
		if slices.Contains(rk.Versions, v.Version) {
			return rk, true
		}
	}
	return kms.RootKey{}, false
}

// rotateAndRewrap: each root whose newest version is doomed gets a new one;
// then every DEK moves to its root's newest version.
func (op *Ops) rotateAndRewrap(ctx context.Context, roots []kms.RootKey, live []kms.RootVersion, res *CompleteResult, progress RewrapProgress) error {
	for _, rk := range roots {
		if len(rk.Versions) == 0 || !slices.Contains(live, kms.RootVersion{RootKeyID: rk.ID, Version: lastVersion(rk)}) {
			continue
		}
		got, err := op.RootRotate(ctx, rk.ID)
		if err != nil {
			return err
		}
		res.Rotated = append(res.Rotated, got)
	}
	if len(live) == 0 {
		return nil
	}
	var err error
	res.Rewrap, err = op.Rewrap(ctx, progress)
	return err
}

// replacementName names the root key that replaces id.
func replacementName(id string) string { return "decryptd-replaces-" + id }

// moveToReplacement moves every DEK under a root key holding a doomed
// version to that key's replacement (created once, found again by name).
func (op *Ops) moveToReplacement(ctx context.Context, replacer kms.RootReplacer, roots []kms.RootKey, live []kms.RootVersion, res *CompleteResult, progress RewrapProgress) (kms.Provider, error) {
	var old []string
	for _, v := range live {
		if !slices.Contains(old, v.RootKeyID) {
			old = append(old, v.RootKeyID)
		}
	}
	if len(old) > 1 {
		return nil, invalid("the shredded versions were wrapped under %d root keys; shred them one root key at a time", len(old))
	}
	if len(old) == 0 {
		return nil, nil
	}
	oldID := old[0]
	var target kms.RootKey
	for _, rk := range roots {
		if rk.Name == replacementName(oldID) {
			target = rk
		}
	}
	if target.ID == "" {
		var err error
		if target, err = op.RootCreate(ctx, replacementName(oldID)); err != nil {
			return nil, err
		}
	}
	res.Replacement = target.ID
	var versions map[string]bool
	for _, rk := range roots {
		if rk.ID == oldID {
			versions = make(map[string]bool, len(rk.Versions))
			for _, v := range rk.Versions {
				versions[v] = true
			}
		}
	}
	all, err := op.o.Registry.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list registry: %w", err)
	}
	todo := entriesUnder(all, versions)
	for _, e := range all {
		if e.State != dek.StateShredded && !e.Wrapped.IsZero() {
			res.Rewrap.Entries++
		}
	}
	res.Rewrap.Todo = len(todo)
	moved := replacer.WithRootKey(target.ID)
	res.Rewrap, err = op.rewrapEntries(ctx, moved, todo, res.Rewrap, progress)
	return moved, err
}
