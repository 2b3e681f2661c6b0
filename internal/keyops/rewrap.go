package keyops

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// RewrapProgress is told how far a rewrap got: done of total entries to
// rewrap, failed of them failed. It is called from one goroutine at a time.
type RewrapProgress func(done, total, failed int)

// RewrapFailure names one entry that could not be rewrapped.
type RewrapFailure struct {
	Ref dek.Ref
	Err error
}

// RewrapResult counts what Rewrap did.
type RewrapResult struct {
	Entries   int // non-shredded entries in the registry
	Todo      int // of them, under an older root version
	Rewrapped int
	// Changed counts entries changed by someone else while being rewrapped
	// (left as they are; a rerun looks at them again).
	Changed  int
	Failures []RewrapFailure
}

// errChanged aborts an Update whose entry moved under us.
var errChanged = errors.New("entry changed during rewrap")

// Rewrap moves every non-shredded entry whose wrapped DEK is under an older
// root key version to the newest one (kms.Provider.Rewrap), after a root
// rotation. Each entry is updated on its own, atomically and only if it did
// not change meanwhile, so an interrupted or partly failed rewrap is resumed
// by running it again: what is done is no longer "older". Failures are
// counted, recorded in the audit log and returned in the result; the error
// is non-nil when any entry failed. Needs KMS, Registry, Audit; Roots is used
// to learn each root's newest version (without it, every entry is sent to
// the KMS, which leaves those already newest as they are).
func (op *Ops) Rewrap(ctx context.Context, progress RewrapProgress) (RewrapResult, error) {
	var res RewrapResult
	if err := op.needKMS(); err != nil {
		return res, err
	}
	all, err := op.o.Registry.List(ctx)
	if err != nil {
		return res, fmt.Errorf("list registry: %w", err)
	}
	newest, err := op.newestRootVersions(ctx, all)
	if err != nil {
		return res, err
	}
	var todo []registry.Entry
	for _, e := range all {
		if e.State == dek.StateShredded || e.Wrapped.IsZero() {
			continue
		}
		res.Entries++
		if v, known := newest[e.Wrapped.RootKeyID]; known && v == e.Wrapped.RootKeyVersion {
			continue
		}
		todo = append(todo, e)
	}
	res.Todo = len(todo)
	return op.rewrapEntries(ctx, op.o.KMS, todo, res, progress)
}

// rewrapEntries rewraps todo with p, RewrapWorkers at a time, counting into
// res (whose Entries and Todo the caller set).
func (op *Ops) rewrapEntries(ctx context.Context, p kms.Provider, todo []registry.Entry, res RewrapResult, progress RewrapProgress) (RewrapResult, error) {
	if progress == nil {
		progress = func(int, int, int) {}
	}
	progress(0, len(todo), 0)

	var (
		mu   sync.Mutex
		done int
		wg   sync.WaitGroup
		next = make(chan registry.Entry)
	)
	for range min(op.o.RewrapWorkers, max(len(todo), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range next {
				changed, rewrapped, err := op.rewrapOne(ctx, p, e)
				mu.Lock()
				done++
				switch {
				case err != nil:
					res.Failures = append(res.Failures, RewrapFailure{Ref: e.Ref(), Err: err})
				case changed:
					res.Changed++
				case rewrapped:
					res.Rewrapped++
				}
				progress(done, len(todo), len(res.Failures))
				mu.Unlock()
			}
		}()
	}
feed:
	for _, e := range todo {
		select {
		case next <- e:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("rewrap interrupted after %d of %d (run it again to finish): %w", done, len(todo), err)
	}
	if n := len(res.Failures); n > 0 {
		return res, fmt.Errorf("rewrap: %d of %d failed (first: %s: %w)", n, len(todo), res.Failures[0].Ref, res.Failures[0].Err)
	}
	return res, nil
}

// newestRootVersions maps each root key id the entries use to its newest
// version, as far as Roots can tell; ids it cannot describe are left out.
func (op *Ops) newestRootVersions(ctx context.Context, es []registry.Entry) (map[string]string, error) {
	out := map[string]string{}
	if op.o.Roots == nil {
		return out, nil
	}
	ids := map[string]bool{}
	for _, e := range es {
		if e.State != dek.StateShredded && e.Wrapped.RootKeyID != "" {
			ids[e.Wrapped.RootKeyID] = true
		}
	}
	if len(ids) == 0 {
		return out, nil
	}
	if d := kms.CapabilitiesOf(op.o.Roots).Describe; d != nil { // cheaper: one root key at a time
		for id := range ids {
			rk, err := d.DescribeRoot(ctx, id)
			if err != nil {
				return nil, fmt.Errorf("describe root key %s: %w", id, err)
			}
			if len(rk.Versions) > 0 {
				out[id] = rk.Versions[len(rk.Versions)-1]
			}
		}
		return out, nil
	}
	roots, err := op.o.Roots.ListRoots(ctx)
	if err != nil {
		return nil, fmt.Errorf("list root keys: %w", err)
	}
	for _, rk := range roots {
		if len(rk.Versions) > 0 {
			out[rk.ID] = rk.Versions[len(rk.Versions)-1]
		}
	}
	return out, nil
}

// rewrapOne rewraps e's DEK outside any registry lock (a KMS call may be
// slow), then stores the result only if the entry still holds what was
// rewrapped.
func (op *Ops) rewrapOne(ctx context.Context, p kms.Provider, e registry.Entry) (changed, rewrapped bool, err error) {
	ref := e.Ref()
	start := op.o.Now()
	nw, err := p.Rewrap(ctx, e.Wrapped, kms.DEKAAD(ref))
	if err != nil {
		aerr := op.record(ctx, audit.ActionRewrap, ref, e.Wrapped, start, err, "from root version "+e.Wrapped.RootKeyVersion)
		return false, false, joinAudit(err, aerr)
	}
	if nw.RootKeyID == e.Wrapped.RootKeyID && nw.RootKeyVersion == e.Wrapped.RootKeyVersion {
		return false, false, nil // already under the newest version
	}
	_, err = op.o.Registry.Update(ctx, ref.KeyID, ref.Version, func(cur *registry.Entry) error {
		if cur.State == dek.StateShredded || cur.Wrapped.RootKeyID != e.Wrapped.RootKeyID ||
			cur.Wrapped.RootKeyVersion != e.Wrapped.RootKeyVersion || !bytes.Equal(cur.Wrapped.Ciphertext, e.Wrapped.Ciphertext) {
			return errChanged
		}
		cur.Wrapped = nw
		return nil
	})
	if errors.Is(err, errChanged) || errors.Is(err, registry.ErrShredded) || errors.Is(err, registry.ErrNotFound) {
		return true, false, nil
	}
	aerr := op.record(ctx, audit.ActionRewrap, ref, nw, start, err, "from root version "+e.Wrapped.RootKeyVersion)
	if err := joinAudit(err, aerr); err != nil {
		return false, false, err
	}
	return false, true, nil
}
