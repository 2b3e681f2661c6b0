package keyprotect

import (
	"context"
	"slices"
	"time"

	kp "github.com/IBM/keyprotect-go-client"

	"github.com/decryptd/decryptd/internal/kms"
)

// stateName maps Key Protect's numeric states onto kms.RootKey.State.
func stateName(s int) string {
	switch kp.KeyState(s) {
	case kp.Active:
		return "active"
	case kp.Suspended:
		return "suspended"
	case kp.Deactivated:
		return "deactivated"
	case kp.Destroyed:
		return "destroyed"
	}
	return "unknown"
}

// maxVersions is the largest page Key Protect serves; a root key with more
// versions than that is not a case this tool handles.
const maxVersions = 5000

// CreateRoot creates a generated (non-extractable) root key named name.
// Note the client retries a create on 5xx, which may leave a duplicate key.
func (p *Provider) CreateRoot(ctx context.Context, name string) (kms.RootKey, error) {
	k, err := call(ctx, p, "create", "", func(ctx context.Context) (*kp.Key, error) {
		return p.client.CreateRootKey(ctx, name, nil)
	}, nil)
	if err != nil {
		return kms.RootKey{}, err
	}
	rk := kms.RootKey{ID: k.ID, Name: k.Name, State: stateName(k.State)}
	if k.KeyVersion != nil && k.KeyVersion.ID != "" {
		rk.Versions = []string{k.KeyVersion.ID}
		return rk, nil
	}
	rk.Versions, err = p.versions(ctx, k.ID)
	return rk, err
}

// RotateRoot adds a version to root key id; new wraps use it. The client
// retries a rotate on 5xx, so a rotation can happen twice (the second is
// refused within the hour with KEY_ROTATION_NOT_PERMITTED).
func (p *Provider) RotateRoot(ctx context.Context, id string) (kms.RootKey, error) {
	_, err := call(ctx, p, "rotate", id, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, p.client.Rotate(ctx, id, "")
	}, nil)
	if err != nil {
		return kms.RootKey{}, err
	}
	return p.DescribeRoot(ctx, id)
}

// DescribeRoot returns root key id (or alias) with its versions.
func (p *Provider) DescribeRoot(ctx context.Context, id string) (kms.RootKey, error) {
	k, err := call(ctx, p, "describe", id, func(ctx context.Context) (*kp.Key, error) {
		return p.client.GetKeyMetadata(ctx, id)
	}, nil)
	if err != nil {
		return kms.RootKey{}, err
	}
	vs, err := p.versions(ctx, k.ID)
	if err != nil {
		return kms.RootKey{}, err
	}
	return kms.RootKey{ID: k.ID, Name: k.Name, State: stateName(k.State), Versions: vs}, nil
}

// versions lists a key's versions oldest first (Key Protect: newest first).
func (p *Provider) versions(ctx context.Context, id string) ([]string, error) {
	limit, all := uint32(maxVersions), true
	kv, err := call(ctx, p, "versions", id, func(ctx context.Context) (*kp.KeyVersions, error) {
		return p.client.ListKeyVersions(ctx, id, &kp.ListKeyVersionsOptions{Limit: &limit, AllKeyStates: &all})
	}, nil)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(kv.KeyVersion))
	for _, v := range kv.KeyVersion {
		out = append(out, v.ID)
	}
	slices.Reverse(out)
	return out, nil
}

// ListRoots returns the instance's root keys (not standard keys, not
// deleted ones) with their versions. Each request has its own deadline.
func (p *Provider) ListRoots(ctx context.Context) ([]kms.RootKey, error) {
	const page = 200
	var out []kms.RootKey
	for offset := 0; ; offset += page {
		ks, err := call(ctx, p, "list", "", func(ctx context.Context) (*kp.Keys, error) {
			return p.client.GetKeys(ctx, page, offset)
		}, nil)
		if err != nil {
			return nil, err
		}
		for _, k := range ks.Keys {
			if k.Extractable {
				continue
			}
			vs, err := p.versions(ctx, k.ID)
			if err != nil {
				return nil, err
			}
			out = append(out, kms.RootKey{ID: k.ID, Name: k.Name, State: stateName(k.State), Versions: vs})
		}
		if len(ks.Keys) < page {
			return out, nil
		}
	}
}

// NewestRootVersion names the configured root key's newest version and
// when it was made (its last rotation, or its creation), for the root key
// schedule of fleet rotation (kms.RootClock).
func (p *Provider) NewestRootVersion(ctx context.Context) (rootKeyID, version string, created time.Time, err error) {
	id := p.rootID
	k, err := call(ctx, p, "describe", id, func(ctx context.Context) (*kp.Key, error) {
		return p.client.GetKeyMetadata(ctx, id)
	}, nil)
	if err != nil {
		return "", "", time.Time{}, err
	}
	vs, err := p.versions(ctx, k.ID)
	if err != nil {
		return "", "", time.Time{}, err
	}
	if len(vs) > 0 {
		version = vs[len(vs)-1]
	}
	switch {
	case k.LastRotateDate != nil:
		created = *k.LastRotateDate
	case k.CreationDate != nil:
		created = *k.CreationDate
	}
	// Wrap names the root as configured (id or alias): so does this.
	return id, version, created, nil
}
