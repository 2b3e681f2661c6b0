package registry

import (
	"context"
	"fmt"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
)

// BulkCreator is the optional bulk path of a Store: provisioning a fleet of
// 100,000 devices must not cost 100,000 writes (the file store rewrites its
// whole file per write). Both backends implement it; callers check for it
// with a type assertion and fall back to Create.
type BulkCreator interface {
	// CreateMany adds every entry or none. It fails with ErrInvalid if any
	// entry breaks an invariant, and with ErrExists, naming the entry, if any
	// is already stored or listed twice. Each created entry reaches watchers
	// as a ChangeCreated, or is covered by a ChangeReset (a backend may
	// collapse a large batch; see its documentation).
	CreateMany(ctx context.Context, es []Entry) error
}

// PrepareCreateMany is the shared half of BulkCreator.CreateMany:
// PrepareCreate on every entry (the same now for all), and a check that no
// entry is listed twice. It stops at the first failure, naming the entry by
// its index and name.
func PrepareCreateMany(es []Entry, now time.Time) ([]Entry, error) {
	out := make([]Entry, len(es))
	seen := make(map[dek.Ref]int, len(es))
	for i, e := range es {
		p, err := PrepareCreate(e, now)
		if err != nil {
			return nil, fmt.Errorf("entries[%d]: %w", i, err)
		}
		if j, dup := seen[p.Ref()]; dup {
			return nil, fmt.Errorf("entries[%d]: %s: %w (also entries[%d])", i, p.Ref(), ErrExists, j)
		}
		seen[p.Ref()] = i
		out[i] = p
	}
	return out, nil
}

// BulkUpdater is the optional bulk path of Store.Update: re-provisioning a
// fleet demotes every device's previous version, which one Update each
// would make a whole-file rewrite per device on the file store.
type BulkUpdater interface {
	// UpdateMany applies fn to each named entry as Update does (the same
	// rules, timestamps and no-op detection), all in one atomic step: every
	// changed entry is saved, or none. It fails with ErrNotFound naming an
	// entry that does not exist, with ErrInvalid if refs names one twice,
	// and with fn's error, unwrapped, if fn fails for any entry. It returns
	// the entries as stored, in the order of refs. Each changed entry
	// reaches watchers as a ChangeUpdated, or is covered by a ChangeReset.
	UpdateMany(ctx context.Context, refs []dek.Ref, fn func(*Entry) error) ([]Entry, error)
}

// CheckRefs is the shared argument check of BulkUpdater.UpdateMany: every
// ref named once.
func CheckRefs(refs []dek.Ref) error {
	seen := make(map[dek.Ref]int, len(refs))
	for i, r := range refs {
		if j, dup := seen[r]; dup {
			return fmt.Errorf("%w: refs[%d]: %s also refs[%d]", ErrInvalid, i, r, j)
		}
		seen[r] = i
	}
	return nil
}
