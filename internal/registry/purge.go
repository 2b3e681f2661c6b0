package registry

import "context"

// Purger is a Store whose storage keeps old row versions after an update
// (PostgreSQL's dead tuples), so a shredded entry's destroyed wrapped DEK
// may linger in its files until they are rewritten. PurgeDestroyed rewrites
// them, so that no live page of the store holds bytes of a destroyed
// wrapped DEK, and says in a few words what it did. It may block other
// writers and readers of the store while it runs.
//
// A store that replaces its whole file on every write (filestore) has
// nothing to purge and does not implement it. Copies outside the store's
// live files (write-ahead log, backups, replicas, freed disk blocks) are
// beyond it: docs/crypto-shredding.md says what remains and for how long,
// and why retiring the root version makes them useless.
type Purger interface {
	PurgeDestroyed(ctx context.Context) (string, error)
}
