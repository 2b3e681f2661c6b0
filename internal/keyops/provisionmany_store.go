package keyops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

func (op *Ops) makeKeys(ctx context.Context, create []*newVersion, made map[dek.Ref]*newVersion, rep *reporter) error {
	var todo []*newVersion
	for _, v := range create {
		if old := made[v.ref]; old != nil {
			v.key, v.wrapped, v.start = old.key, old.wrapped, old.start
			rep.add(len(v.reqs))
			continue
		}
		v.key = make([]byte, DEKSize)
		if _, err := io.ReadFull(op.o.Rand, v.key); err != nil {
			clear(v.key)
			return fmt.Errorf("new DEK for %s: random: %w", v.ref, err)
		}
		made[v.ref] = v
		todo = append(todo, v)
	}
	var (
		mu     sync.Mutex
		failed []audit.Event
	)
	err := op.parallel(ctx, len(todo), func(ctx context.Context, i int) error {
		v := todo[i]
		v.start = op.o.Now()
		w, err := op.o.KMS.Wrap(ctx, v.key, kms.DEKAAD(v.ref))
		if err != nil {
			mu.Lock()
			failed = append(failed, op.newEvent(audit.ActionProvision, v.ref, kms.Wrapped{}, v.start, err, provisionWhy(v)))
			mu.Unlock()
			return fmt.Errorf("wrap new DEK %s: %w", v.ref, err)
		}
		v.wrapped = w
		rep.add(len(v.reqs))
		return nil
	})
	if err != nil {
		for _, v := range todo {
			delete(made, v.ref)
			clear(v.key)
		}
		return joinAudit(err, op.appendEvents(ctx, failed))
	}
	return nil
}

// storeVersions creates the entries of create, in one CreateMany when the
// registry has it, and records one provision event each. errRetry, unless
// lastTry, when a name was taken meanwhile (nothing was created, nothing is
// recorded: the next try records its outcome).
func (op *Ops) storeVersions(ctx context.Context, create []*newVersion, lastTry bool) error {
	if len(create) == 0 {
		return nil
	}
	entries := make([]registry.Entry, len(create))
	for i, v := range create {
		entries[i] = registry.Entry{KeyID: v.ref.KeyID, Version: v.ref.Version, State: dek.StateActive,
			Wrapped: v.wrapped, Devices: v.devices, CreatedAt: op.o.Now()}
	}
	events := make([]audit.Event, len(create))
	if bc, ok := op.o.Registry.(registry.BulkCreator); ok {
		err := bc.CreateMany(ctx, entries)
		if errors.Is(err, registry.ErrExists) && !lastTry {
			return errRetry{fmt.Errorf("store %d new key versions: %w", len(entries), err)}
		}
		for i, v := range create {
			events[i] = op.newEvent(audit.ActionProvision, v.ref, v.wrapped, v.start, err, provisionWhy(v))
		}
		aerr := op.appendEvents(ctx, events)
		if err != nil {
			return joinAudit(fmt.Errorf("store %d new key versions: %w", len(entries), err), aerr)
		}
		return aerr
	}
	var (
		mu   sync.Mutex
		done []audit.Event
	)
	err := op.parallel(ctx, len(create), func(ctx context.Context, i int) error {
		v := create[i]
		err := op.o.Registry.Create(ctx, entries[i])
		ev := op.newEvent(audit.ActionProvision, v.ref, v.wrapped, v.start, err, provisionWhy(v))
		mu.Lock()
		done = append(done, ev)
		mu.Unlock()
		if err != nil {
			return fmt.Errorf("store %s: %w", v.ref, err)
		}
		return nil
	})
	return joinAudit(err, op.appendEvents(ctx, done))
}

// demoteSuperseded moves the versions that were active before each new
// device version to decrypt_only, recording one rotate event each: in one
// UpdateMany when the registry is a registry.BulkUpdater (all or none),
// else one Update each.
func (op *Ops) demoteSuperseded(ctx context.Context, create []*newVersion) error {
	type demotion struct {
		e    registry.Entry
		keep string
	}
	var todo []demotion
	for _, v := range create {
		for _, e := range v.demote {
			todo = append(todo, demotion{e, v.ref.Version})
		}
	}
	demoteFn := func(cur *registry.Entry) error {
		if cur.State == dek.StateActive {
			cur.State = dek.StateDecryptOnly
		}
		return nil
	}
	if bu, ok := op.o.Registry.(registry.BulkUpdater); ok && len(todo) > 0 {
		refs := make([]dek.Ref, len(todo))
		for i, d := range todo {
			refs[i] = d.e.Ref()
		}
		start := op.o.Now()
		got, err := bu.UpdateMany(ctx, refs, demoteFn)
		events := make([]audit.Event, len(todo))
		for i, d := range todo {
			w := d.e.Wrapped
			if err == nil {
				w = got[i].Wrapped
			}
			events[i] = op.newEvent(audit.ActionRotate, d.e.Ref(), w, start, err, "active -> decrypt_only, superseded by "+d.keep)
		}
		if err != nil {
			err = fmt.Errorf("demote %d superseded versions: %w", len(todo), err)
		}
		return joinAudit(err, op.appendEvents(ctx, events))
	}
	var (
		mu     sync.Mutex
		events []audit.Event
		errs   []error
	)
	// Every demotion is tried, as Provision's demoteOthers does.
	_ = op.parallel(ctx, len(todo), func(ctx context.Context, i int) error {
		d := todo[i]
		start := op.o.Now()
		got, err := op.o.Registry.Update(ctx, d.e.KeyID, d.e.Version, demoteFn)
		if err != nil {
			got = d.e
		}
		ev := op.newEvent(audit.ActionRotate, d.e.Ref(), got.Wrapped, start, err, "active -> decrypt_only, superseded by "+d.keep)
		mu.Lock()
		events = append(events, ev)
		if err != nil {
			errs = append(errs, fmt.Errorf("demote %s: %w", d.e.Ref(), err))
		}
		mu.Unlock()
		return nil
	})
	return joinAudit(errors.Join(errs...), op.appendEvents(ctx, events))
}

// joinGroups adds the requesting devices to each group version and unwraps
// its DEK for their credentials: one devices and one unwrap event a group.
func (op *Ops) joinGroups(ctx context.Context, joins []*groupJoin) error {
	var (
		mu     sync.Mutex
		events []audit.Event
	)
	note := func(evs ...audit.Event) {
		mu.Lock()
		events = append(events, evs...)
		mu.Unlock()
	}
	err := op.parallel(ctx, len(joins), func(ctx context.Context, i int) error {
		j := joins[i]
		ref := j.active.Ref()
		if len(j.add) > 0 {
			start := op.o.Now()
			got, err := op.o.Registry.Update(ctx, ref.KeyID, ref.Version, func(cur *registry.Entry) error {
				if cur.State != dek.StateActive {
					return fmt.Errorf("%s is no longer active (%s); run provision again", ref, cur.State)
				}
				for _, d := range j.add {
					if !slices.Contains(cur.Devices, d) {
						cur.Devices = append(cur.Devices, d)
					}
				}
				return nil
			})
			if err != nil {
				got = j.active
			}
			note(op.newEvent(audit.ActionDevices, ref, got.Wrapped, start, err, devicesWhy(j.add)))
			if err != nil {
				return fmt.Errorf("add %s to %s: %w", countOf(len(j.add), "device"), ref, err)
			}
			j.active = got
		}
		start := op.o.Now()
		key, err := op.o.KMS.Unwrap(ctx, j.active.Wrapped, kms.DEKAAD(ref))
		note(op.newEvent(audit.ActionUnwrap, ref, j.active.Wrapped, start, err, exportWhy(j)))
		if err != nil {
			return fmt.Errorf("unwrap %s: %w", ref, err)
		}
		j.key = key
		if len(key) != DEKSize {
			return fmt.Errorf("unwrap %s: DEK is %d bytes, want %d", ref, len(key), DEKSize)
		}
		return nil
	})
	return joinAudit(err, op.appendEvents(ctx, events))
}
