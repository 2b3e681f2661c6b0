package keyops

import (
	"context"
	"errors"
	"fmt"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
)

func (op *Ops) needRoots() error {
	if op.o.Roots == nil {
		return errors.New("keyops: no root key manager configured")
	}
	return nil
}

func lastVersion(rk kms.RootKey) string {
	if len(rk.Versions) == 0 {
		return ""
	}
	return rk.Versions[len(rk.Versions)-1]
}

// RootCreate creates a root key named name. Needs Roots, Audit.
func (op *Ops) RootCreate(ctx context.Context, name string) (kms.RootKey, error) {
	if err := op.needRoots(); err != nil {
		return kms.RootKey{}, err
	}
	if name == "" || len(name) > 90 {
		return kms.RootKey{}, invalid("root key name: want 1-90 characters")
	}
	start := op.o.Now()
	rk, err := op.o.Roots.CreateRoot(ctx, name)
	aerr := op.record(ctx, audit.ActionRootCreate, dek.Ref{}, kms.Wrapped{RootKeyID: rk.ID, RootKeyVersion: lastVersion(rk)}, start, err, "name "+name)
	if err != nil {
		return kms.RootKey{}, joinAudit(fmt.Errorf("create root key %q: %w", name, err), aerr)
	}
	return rk, aerr
}

// RootRotate adds a version to root key id (empty: the only root key there
// is) and makes it the wrapping one; run Rewrap next to move existing DEKs
// onto it. Needs Roots, Audit.
func (op *Ops) RootRotate(ctx context.Context, id string) (kms.RootKey, error) {
	if err := op.needRoots(); err != nil {
		return kms.RootKey{}, err
	}
	if id == "" {
		roots, err := op.o.Roots.ListRoots(ctx)
		if err != nil {
			return kms.RootKey{}, fmt.Errorf("list root keys: %w", err)
		}
		switch len(roots) {
		case 0:
			return kms.RootKey{}, fmt.Errorf("%w: no root key to rotate (dekctl root create)", ErrNotFound)
		case 1:
			id = roots[0].ID
		default:
			return kms.RootKey{}, invalid("%d root keys: name the one to rotate", len(roots))
		}
	}
	start := op.o.Now()
	rk, err := op.o.Roots.RotateRoot(ctx, id)
	if err != nil {
		rk.ID = id
	}
	aerr := op.record(ctx, audit.ActionRootRotate, dek.Ref{}, kms.Wrapped{RootKeyID: rk.ID, RootKeyVersion: lastVersion(rk)}, start, err, "")
	if err != nil {
		return kms.RootKey{}, joinAudit(fmt.Errorf("rotate root key %s: %w", id, err), aerr)
	}
	return rk, aerr
}

// RootList lists the root keys (never their material). Needs Roots.
func (op *Ops) RootList(ctx context.Context) ([]kms.RootKey, error) {
	if err := op.needRoots(); err != nil {
		return nil, err
	}
	roots, err := op.o.Roots.ListRoots(ctx)
	if err != nil {
		return nil, fmt.Errorf("list root keys: %w", err)
	}
	return roots, nil
}
