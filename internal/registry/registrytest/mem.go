package registrytest

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
)

// Mem is an in-memory registry for other packages' tests, with the stores'
// semantics (registry.PrepareCreate, ApplyUpdate, copies out) but without
// Watch or a bulk path: fast enough for thousands of single calls. List
// returns entries in creation order, not by key id as the stores do, so
// that a caller listing after each of n creates does not sort n times.
// The zero value is ready to use.
type Mem struct {
	mu    sync.Mutex
	m     map[dek.Ref]registry.Entry
	order []dek.Ref
}

// Len is the number of entries held.
func (r *Mem) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}

// Get returns a copy of the entry, or registry.ErrNotFound.
func (r *Mem) Get(_ context.Context, keyID, version string) (registry.Entry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.m[dek.Ref{KeyID: keyID, Version: version}]
	if !ok {
		return registry.Entry{}, registry.ErrNotFound
	}
	return e.Clone(), nil
}

// Create stores a new entry, or fails with registry.ErrExists.
func (r *Mem) Create(_ context.Context, e registry.Entry) error {
	e, err := registry.PrepareCreate(e, time.Now())
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.m[e.Ref()]; ok {
		return fmt.Errorf("%s: %w", e.Ref(), registry.ErrExists)
	}
	r.put(e)
	return nil
}

func (r *Mem) put(e registry.Entry) {
	if r.m == nil {
		r.m = map[dek.Ref]registry.Entry{}
	}
	r.m[e.Ref()] = e
	r.order = append(r.order, e.Ref())
}

// Update applies fn to the entry under registry.ApplyUpdate's rules.
func (r *Mem) Update(_ context.Context, keyID, version string, fn func(*registry.Entry) error) (registry.Entry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ref := dek.Ref{KeyID: keyID, Version: version}
	old, ok := r.m[ref]
	if !ok {
		return registry.Entry{}, registry.ErrNotFound
	}
	next, changed, err := registry.ApplyUpdate(old, time.Now(), fn)
	if err != nil {
		return registry.Entry{}, err
	}
	if changed {
		r.m[ref] = next
	}
	return next.Clone(), nil
}

// List returns copies of every entry, in creation order.
func (r *Mem) List(context.Context) ([]registry.Entry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]registry.Entry, 0, len(r.m))
	for _, ref := range r.order {
		out = append(out, r.m[ref].Clone())
	}
	return out, nil
}

// BulkMem is Mem with the bulk paths (registry.BulkCreator and
// BulkUpdater), all or nothing as the stores promise, counting its calls.
type BulkMem struct {
	Mem
	// CreateManyCalls and UpdateManyCalls count the bulk calls made.
	CreateManyCalls, UpdateManyCalls int
	// Before, when set, runs at the start of each CreateMany (call counts
	// from 1): a test's concurrent writer.
	Before func(call int, es []registry.Entry)
}

// CreateMany stores every entry, or none when one is invalid or exists.
func (r *BulkMem) CreateMany(_ context.Context, es []registry.Entry) error {
	r.CreateManyCalls++
	if r.Before != nil {
		r.Before(r.CreateManyCalls, es)
	}
	prepared, err := registry.PrepareCreateMany(es, time.Now())
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, e := range prepared {
		if _, ok := r.m[e.Ref()]; ok {
			return fmt.Errorf("entries[%d]: %s: %w", i, e.Ref(), registry.ErrExists)
		}
	}
	for _, e := range prepared {
		r.put(e)
	}
	return nil
}

// UpdateMany applies fn to every entry named, or to none when one is
// missing or fn refuses one.
func (r *BulkMem) UpdateMany(_ context.Context, refs []dek.Ref, fn func(*registry.Entry) error) ([]registry.Entry, error) {
	if err := registry.CheckRefs(refs); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]registry.Entry, len(refs))
	next := make(map[dek.Ref]registry.Entry, len(refs))
	for i, ref := range refs {
		old, ok := r.m[ref]
		if !ok {
			return nil, fmt.Errorf("%s: %w", ref, registry.ErrNotFound)
		}
		e, changed, err := registry.ApplyUpdate(old, time.Now(), fn)
		if err != nil {
			return nil, err
		}
		out[i] = e
		if changed {
			next[ref] = e
		}
	}
	maps.Copy(r.m, next)
	r.UpdateManyCalls++
	return out, nil
}

var (
	_ registry.BulkCreator = (*BulkMem)(nil)
	_ registry.BulkUpdater = (*BulkMem)(nil)
)
