package filestore

import (
	"context"
	"fmt"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
)

var _ registry.BulkCreator = (*Store)(nil)

// CreateMany adds every entry or none, in one locked rewrite of the file
// (one fsync, one rename), where Create would rewrite it once per entry.
// Every entry is validated before the lock is taken; ErrExists names the
// first entry already in the file (or listed twice). This handle's watchers
// get one ChangeCreated per entry; a watcher's queue holds at most
// feed.DefaultQueue changes, so a large batch reaches a watcher that has
// not kept up as one ChangeReset, which covers it. Other handles see the
// batch in their next reload, diffed into the same changes.
func (s *Store) CreateMany(ctx context.Context, es []registry.Entry) error {
	if s.closed.Load() {
		return registry.ErrClosed
	}
	if len(es) == 0 {
		return nil
	}
	prepared, err := registry.PrepareCreateMany(es, s.opt.clock())
	if err != nil {
		return err
	}
	_, err = s.write(ctx, func(index map[dek.Ref]registry.Entry) (registry.Entry, []registry.Change, error) {
		for i, e := range prepared {
			if _, ok := index[e.Ref()]; ok {
				return registry.Entry{}, nil, fmt.Errorf("entries[%d]: %s: %w", i, e.Ref(), registry.ErrExists)
			}
		}
		changes := make([]registry.Change, len(prepared))
		for i, e := range prepared {
			index[e.Ref()] = e
			changes[i] = registry.Change{Kind: registry.ChangeCreated, KeyID: e.KeyID, Version: e.Version, State: e.State}
		}
		return registry.Entry{}, changes, nil
	})
	return err
}

var _ registry.BulkUpdater = (*Store)(nil)

// UpdateMany applies fn to every entry of refs in one locked rewrite of the
// file, on the file as it is now, all or nothing; see registry.BulkUpdater.
// Watchers get a ChangeUpdated per changed entry (or a ChangeReset, as for
// CreateMany).
func (s *Store) UpdateMany(ctx context.Context, refs []dek.Ref, fn func(*registry.Entry) error) ([]registry.Entry, error) {
	if s.closed.Load() {
		return nil, registry.ErrClosed
	}
	if err := registry.CheckRefs(refs); err != nil {
		return nil, err
	}
	if len(refs) == 0 {
		return nil, nil
	}
	out := make([]registry.Entry, len(refs))
	_, err := s.write(ctx, func(index map[dek.Ref]registry.Entry) (registry.Entry, []registry.Change, error) {
		now := s.opt.clock()
		var changes []registry.Change
		for i, ref := range refs {
			old, ok := index[ref]
			if !ok {
				return registry.Entry{}, nil, fmt.Errorf("refs[%d]: %s: %w", i, ref, registry.ErrNotFound)
			}
			next, changed, err := registry.ApplyUpdate(old, now, fn)
			if err != nil {
				return registry.Entry{}, nil, err
			}
			out[i] = next
			if changed {
				index[ref] = next
				changes = append(changes, registry.Change{Kind: registry.ChangeUpdated, KeyID: ref.KeyID, Version: ref.Version, State: next.State})
			}
		}
		return registry.Entry{}, changes, nil
	})
	if err != nil {
		return nil, err
	}
	for i := range out {
		out[i] = out[i].Clone()
	}
	return out, nil
}
