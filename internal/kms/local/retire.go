package local

import (
	"context"
	"fmt"

	"github.com/decryptd/decryptd/internal/kms"
)

var _ kms.RootRetirer = (*Provider)(nil)

// RetireScope is version alone: the file holds each version separately.
func (p *Provider) RetireScope(ctx context.Context, rootKeyID, version string) ([]kms.RootVersion, error) {
	if err := p.refreshIfChanged(); err != nil {
		return nil, fmt.Errorf("local retire: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.retireScopeLocked(rootKeyID, version)
}

func (p *Provider) retireScopeLocked(rootKeyID, version string) ([]kms.RootVersion, error) {
	if rootKeyID != p.id {
		return nil, fmt.Errorf("local retire: %w: asked for %q, %s holds %q", ErrWrongRoot, rootKeyID, p.path, p.id)
	}
	for i, v := range p.versions {
		if v.id != version {
			continue
		}
		if i == len(p.versions)-1 {
			return nil, fmt.Errorf("local retire %s version %s: %w (it is the newest; rotate first)", rootKeyID, version, kms.ErrRetireWrapping)
		}
		return []kms.RootVersion{{RootKeyID: p.id, Version: version}}, nil
	}
	return nil, fmt.Errorf("local retire: %w: %q (root key %s)", ErrUnknownVersion, version, p.id)
}

// RetireRootVersion removes version from the root key file: the file is
// re-read, the version dropped and the file replaced atomically (mode
// 0600), as Rotate does, and the provider reloads it. The key material of
// the version is gone from the file; the blocks of the replaced file are
// freed by the file system, not overwritten (see docs/crypto-shredding.md).
// Other processes holding the file open notice the change before their
// next Wrap, Rewrap or Unwrap (see lookup).
func (p *Provider) RetireRootVersion(ctx context.Context, rootKeyID, version string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("local retire: %w: %w", kms.ErrTransient, err)
	}
	p.rotMu.Lock()
	defer p.rotMu.Unlock()
	if err := p.reload(); err != nil {
		return fmt.Errorf("local retire: %w", err)
	}
	p.mu.Lock()
	_, err := p.retireScopeLocked(rootKeyID, version)
	p.mu.Unlock()
	if err != nil {
		return err
	}
	kf, _, err := readFile(p.path)
	if err != nil {
		return fmt.Errorf("local retire: %w", err)
	}
	defer kf.wipe()
	kept := kf.Versions[:0:0]
	for _, v := range kf.Versions {
		if v.Version == version {
			clear(v.Key)
			continue
		}
		kept = append(kept, v)
	}
	if len(kept) == len(kf.Versions) || len(kept) == 0 {
		return fmt.Errorf("local retire: %w: %q (root key %s)", ErrUnknownVersion, version, rootKeyID)
	}
	if kept[len(kept)-1].Version != kf.Versions[len(kf.Versions)-1].Version {
		return fmt.Errorf("local retire %s version %s: %w (rotated meanwhile?)", rootKeyID, version, kms.ErrRetireWrapping)
	}
	kf.Versions = kept
	if err := writeFile(p.path, kf, true); err != nil {
		return fmt.Errorf("local retire %s: %w", p.path, err)
	}
	if err := p.reload(); err != nil {
		return fmt.Errorf("local retire: %w", err)
	}
	return nil
}
