package keyops

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// Audit actions of root version retirement and of a complete shred (audit
// accepts any short lower-case action name).
const (
	ActionRootRetire    audit.Action = "root_retire"
	ActionShredComplete audit.Action = "shred_complete"
)

// ErrInUse: a root version cannot be retired while a DEK in the registry
// is still wrapped under it (run dekctl rewrap first).
var ErrInUse = errors.New("root version still wraps DEKs in the registry")

// RetireResult says what RootRetire destroyed.
type RetireResult struct {
	RootKeyID string
	Version   string
	// Destroyed is every root version the retirement removed: the version
	// alone, or (Key Protect) every version of its key.
	Destroyed []kms.RootVersion
}

// retirer is the provider's kms.RootRetirer, or an error naming why not.
func (op *Ops) retirer() (kms.RootRetirer, error) {
	if r := kms.CapabilitiesOf(op.o.Roots).Retire; r != nil {
		return r, nil
	}
	if r := kms.CapabilitiesOf(op.o.KMS).Retire; r != nil {
		return r, nil
	}
	return nil, errors.New("keyops: the configured KMS cannot retire root key versions")
}

// onlyRoot returns the id of the only root key, for commands that may omit it.
func (op *Ops) onlyRoot(ctx context.Context) (string, error) {
	roots, err := op.o.Roots.ListRoots(ctx)
	if err != nil {
		return "", fmt.Errorf("list root keys: %w", err)
	}
	switch len(roots) {
	case 0:
		return "", fmt.Errorf("%w: no root key (dekctl root create)", ErrNotFound)
	case 1:
		return roots[0].ID, nil
	}
	return "", invalid("%d root keys: name the one meant", len(roots))
}

// RootRetire destroys root key version of rootKeyID (empty: the only root
// key) for good, so that every DEK wrapped under it, in the registry or in
// any copy of it, can never be unwrapped again. It is refused (ErrInUse)
// while any DEK in the registry that is not shredded is wrapped under a
// version the retirement would destroy (kms.RootRetirer.RetireScope), and
// (kms.ErrRetireWrapping) when that includes the version wrapping new DEKs.
// Refusals and the retirement itself are audited. Needs Roots (a
// kms.RootRetirer), Registry, Audit.
func (op *Ops) RootRetire(ctx context.Context, rootKeyID, version string) (RetireResult, error) {
	res := RetireResult{RootKeyID: rootKeyID, Version: version}
	if err := op.needRegistry(); err != nil {
		return res, err
	}
	if err := op.needRoots(); err != nil {
		return res, err
	}
	if version == "" {
		return res, invalid("give the root key version to retire")
	}
	r, err := op.retirer()
	if err != nil {
		return res, err
	}
	if rootKeyID == "" {
		if rootKeyID, err = op.onlyRoot(ctx); err != nil {
			return res, err
		}
	}
	return op.rootRetire(ctx, r, rootKeyID, version)
}

// rootRetire is RootRetire through r.
func (op *Ops) rootRetire(ctx context.Context, r kms.RootRetirer, rootKeyID, version string) (RetireResult, error) {
	res := RetireResult{RootKeyID: rootKeyID, Version: version}
	start := op.o.Now()
	at := kms.Wrapped{RootKeyID: rootKeyID, RootKeyVersion: version}
	fail := func(err error, detail string) (RetireResult, error) {
		aerr := op.record(ctx, ActionRootRetire, dek.Ref{}, at, start, err, detail)
		return res, joinAudit(fmt.Errorf("retire root key %s version %s: %w", rootKeyID, version, err), aerr)
	}
	scope, err := r.RetireScope(ctx, rootKeyID, version)
	if err != nil {
		return fail(err, "refused")
	}
	users, err := op.wrappedUnder(ctx, scope)
	if err != nil {
		return fail(err, "refused")
	}
	if len(users) > 0 {
		return fail(fmt.Errorf("%w: %d, e.g. %s (run dekctl rewrap first)", ErrInUse, len(users), users[0]), "refused: "+countOf(len(users), "DEK")+" still wrapped")
	}
	if err := r.RetireRootVersion(ctx, rootKeyID, version); err != nil {
		return fail(err, "destroys "+scopeText(scope))
	}
	res.Destroyed = scope
	// A DEK wrapped under the scope between the check and the retirement
	// (a daemon wrapping under a key it still thinks current) is lost with
	// it; say so loudly, while Key Protect can still restore the key.
	late, lerr := op.wrappedUnder(ctx, scope)
	if lerr == nil && len(late) > 0 {
		err := fmt.Errorf("%w: %d DEKs were wrapped under it while it was retired, e.g. %s: they no longer unwrap (Key Protect: restore the key within 30 days, then rerun)", ErrInUse, len(late), late[0])
		aerr := op.record(ctx, ActionRootRetire, dek.Ref{}, at, start, err, "destroyed "+scopeText(scope)+"; "+countOf(len(late), "DEK")+" wrapped under it meanwhile")
		return res, joinAudit(err, aerr)
	}
	aerr := op.record(ctx, ActionRootRetire, dek.Ref{}, at, start, nil, "destroyed "+scopeText(scope))
	return res, aerr
}

// wrappedUnder lists the non-shredded entries wrapped under any version in
// scope. It matches on the version alone (not the root key id), which can
// only refuse more: an entry may name its root by an alias (Key Protect).
func (op *Ops) wrappedUnder(ctx context.Context, scope []kms.RootVersion) ([]dek.Ref, error) {
	versions := make(map[string]bool, len(scope))
	for _, v := range scope {
		versions[v.Version] = true
	}
	all, err := op.o.Registry.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list registry: %w", err)
	}
	var out []dek.Ref
	for _, e := range all {
		if e.State == dek.StateShredded || e.Wrapped.IsZero() {
			continue
		}
		if versions[e.Wrapped.RootKeyVersion] {
			out = append(out, e.Ref())
		}
	}
	return out, nil
}

// scopeText names the destroyed versions for an audit detail (bounded).
func scopeText(scope []kms.RootVersion) string {
	const most = 4
	parts := make([]string, 0, most)
	for _, v := range scope[:min(len(scope), most)] {
		parts = append(parts, v.RootKeyID+"/"+v.Version)
	}
	out := "root versions " + strings.Join(parts, ",")
	if len(scope) > most {
		out += fmt.Sprintf(" and %d more", len(scope)-most)
	}
	return out
}

// entriesUnder returns the non-shredded entries whose root version is one of
// versions.
func entriesUnder(all []registry.Entry, versions map[string]bool) []registry.Entry {
	var out []registry.Entry
	for _, e := range all {
		if e.State != dek.StateShredded && !e.Wrapped.IsZero() && versions[e.Wrapped.RootKeyVersion] {
			out = append(out, e)
		}
	}
	return out
}
