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
