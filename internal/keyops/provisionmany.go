package keyops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// BatchAuditor is an Auditor that can also append many events at once (one
// fsync for the lot); *audit.Writer is one. ProvisionMany uses it when the
// Auditor has it.
type BatchAuditor interface {
	AppendMany(ctx context.Context, es []audit.Event) ([]audit.Event, error)
}

// defaultProvisionWorkers bounds ProvisionMany's concurrent KMS calls when
// Options.ProvisionWorkers is not set: enough to hide a remote KMS's
// round trip, few enough not to trip its rate limits.
const defaultProvisionWorkers = 16

// newVersion is one key version ProvisionMany creates.
type newVersion struct {
	ref     dek.Ref
	devices []string // a group's members; nil for a device key
	reqs    []int    // the requests it serves
	demote  []registry.Entry
	key     []byte
	wrapped kms.Wrapped
	start   time.Time
}

// groupJoin is an existing active group version ProvisionMany adds devices to.
type groupJoin struct {
	active    registry.Entry
	add       []string // devices not yet listed
	requested []string // every requesting device
	key       []byte
}

// ProvisionMany makes the credentials of reqs, in their order, with the
// rules of Provision: a device without a group gets the next version of
// device/<id> (one more than the highest vN it ever had), active, and its
// versions that were active become decrypt_only; a device with a group
// joins the group key's newest active version, or the group key is created
// (its next version) with every requesting member. Requests must name
// distinct devices (ErrInvalidArgument otherwise).
//
// Unlike a Provision per device, it lists the registry once, wraps the new
// DEKs Options.ProvisionWorkers at a time, stores them in one CreateMany
// when the registry is a registry.BulkCreator (else one Create each,
// ProvisionWorkers at a time), demotes the superseded versions in one
// UpdateMany when it is a registry.BulkUpdater, and appends the audit
// events with one AppendMany per step when the Auditor is a BatchAuditor. If another writer
// takes one of the picked version names meanwhile, CreateMany fails as a
// whole and ProvisionMany plans again from a fresh listing, as Provision
// does.
//
// Audit: one event per key version touched: "provision" per created
// version, "rotate" per demoted one, and per group version joined one
// "devices" (the devices added) and one "unwrap" (its DEK exported in the
// credentials). A batch of one device records what Provision records.
//
// On error no credential is returned (those made are wiped). With a
// registry.BulkCreator nothing was created unless the error came after the
// store step (demotion, group joins); without one, some of the versions may
// have been created. Provisioning the same devices again makes new
// versions either way. progress, when set, is called (never concurrently)
// as DEKs are made, with the number of requests served so far, and with
// (len(reqs), len(reqs)) once all is stored and recorded.
// Needs KMS, Registry, Audit. The caller wipes the Credentials.
func (op *Ops) ProvisionMany(ctx context.Context, reqs []ProvisionRequest, progress func(done, total int)) ([]Credential, error) {
	if err := op.needKMS(); err != nil {
		return nil, err
	}
	seen := make(map[string]int, len(reqs))
	for i, r := range reqs {
		if !registry.ValidDeviceID(r.DeviceID) {
			return nil, invalid("requests[%d]: device id %q: want 1-128 of A-Z a-z 0-9 . _ : -", i, clip(r.DeviceID))
		}
		if r.Group != "" && !registry.ValidKeyID("group/"+r.Group) {
			return nil, invalid("requests[%d]: group %q: want A-Z a-z 0-9 . _ : / - (key id group/<name>, at most 200)", i, clip(r.Group))
		}
		if j, dup := seen[r.DeviceID]; dup {
			return nil, invalid("requests[%d]: device %s already in requests[%d]", i, r.DeviceID, j)
		}
		seen[r.DeviceID] = i
	}
	if len(reqs) == 0 {
		return nil, nil
	}
	rep := newReporter(progress, len(reqs))
	// Wrapped DEKs by name, kept across attempts: a name that did not
	// change since the last attempt need not be wrapped again.
	made := map[dek.Ref]*newVersion{}
	defer func() {
		for _, v := range made {
			clear(v.key)
		}
	}()
	for try := 0; ; try++ {
		creds, err := op.provisionManyOnce(ctx, reqs, made, rep, try == maxCreateTries)
		if _, retry := err.(errRetry); retry {
			continue
		}
		if err != nil {
			return nil, err
		}
		rep.done(len(reqs))
		return creds, nil
	}
}

// errRetry: another writer took a version name ProvisionMany picked, and
// nothing was created; not returned on the last try.
type errRetry struct{ err error }

func (e errRetry) Error() string { return e.err.Error() }
func (e errRetry) Unwrap() error { return e.err }

func (op *Ops) provisionManyOnce(ctx context.Context, reqs []ProvisionRequest, made map[dek.Ref]*newVersion, rep *reporter, lastTry bool) ([]Credential, error) {
	all, err := op.o.Registry.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list registry: %w", err)
	}
	byKey := make(map[string][]registry.Entry)
	for _, e := range all {
		byKey[e.KeyID] = append(byKey[e.KeyID], e)
	}
	for _, es := range byKey {
		// Oldest first, as versionsOf has them.
		slices.SortStableFunc(es, func(a, b registry.Entry) int { return a.CreatedAt.Compare(b.CreatedAt) })
	}

	// Plan: the versions to create, and the active group versions to join.
	var (
		create  []*newVersion
		joins   []*groupJoin
		newOf   = map[string]*newVersion{} // group key id -> its new version
		joinOf  = map[string]*groupJoin{}
		credKey = make([]dek.Ref, len(reqs))
	)
	for i, r := range reqs {
		if r.Group == "" {
			keyID := dek.DeviceKeyID(r.DeviceID)
			v := &newVersion{ref: dek.Ref{KeyID: keyID, Version: nextVersion(byKey[keyID])}, reqs: []int{i}}
			for _, e := range byKey[keyID] {
				if e.State == dek.StateActive {
					v.demote = append(v.demote, e)
				}
			}
			create = append(create, v)
			credKey[i] = v.ref
			continue
		}
		keyID := "group/" + r.Group
		if v := newOf[keyID]; v != nil {
			v.reqs, v.devices = append(v.reqs, i), append(v.devices, r.DeviceID)
			credKey[i] = v.ref
			continue
		}
		if j := joinOf[keyID]; j != nil {
			j.requested = append(j.requested, r.DeviceID)
			if !slices.Contains(j.active.Devices, r.DeviceID) {
				j.add = append(j.add, r.DeviceID)
			}
			credKey[i] = j.active.Ref()
			continue
		}
		var active *registry.Entry
		for k := range byKey[keyID] {
			if byKey[keyID][k].State == dek.StateActive {
				active = &byKey[keyID][k] // the newest active one wins
			}
		}
		if active == nil {
			v := &newVersion{ref: dek.Ref{KeyID: keyID, Version: nextVersion(byKey[keyID])}, reqs: []int{i}, devices: []string{r.DeviceID}}
			newOf[keyID] = v
			create = append(create, v)
			credKey[i] = v.ref
			continue
		}
		j := &groupJoin{active: *active, requested: []string{r.DeviceID}}
		if !slices.Contains(active.Devices, r.DeviceID) {
			j.add = []string{r.DeviceID}
		}
		joinOf[keyID] = j
		joins = append(joins, j)
		credKey[i] = active.Ref()
	}
	defer func() {
		for _, j := range joins {
			clear(j.key)
		}
	}()

	if err := op.makeKeys(ctx, create, made, rep); err != nil {
		return nil, err
	}
	if err := op.storeVersions(ctx, create, lastTry); err != nil {
		return nil, err
	}
	if err := op.demoteSuperseded(ctx, create); err != nil {
		return nil, err
	}
	if err := op.joinGroups(ctx, joins); err != nil {
		return nil, err
	}

	keys := make(map[dek.Ref][]byte, len(create)+len(joins))
	for _, v := range create {
		keys[v.ref] = v.key
	}
	for _, j := range joins {
		keys[j.active.Ref()] = j.key
	}
	creds := make([]Credential, len(reqs))
	for i, r := range reqs {
		ref := credKey[i]
		creds[i] = Credential{DeviceID: r.DeviceID, KeyID: ref.KeyID, KeyVersion: ref.Version, DEK: slices.Clone(keys[ref])}
	}
	return creds, nil
}

// makeKeys gives every version of create a fresh DEK, wrapped, reusing one
// made by an earlier attempt under the same name.
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

// Audit details, worded as Provision words them for a single device.
func provisionWhy(v *newVersion) string {
	switch {
	case v.devices == nil:
		d, _ := dek.DeviceOfKeyID(v.ref.KeyID)
		return "device " + d
	case len(v.devices) == 1:
		return "group created for device " + v.devices[0]
	}
	return "group created for " + countOf(len(v.devices), "device")
}

func devicesWhy(add []string) string {
	if len(add) == 1 {
		return "device " + add[0] + " added"
	}
	return countOf(len(add), "device") + " added"
}

func exportWhy(j *groupJoin) string {
	if len(j.requested) == 1 {
		return "exported in a credential for device " + j.requested[0]
	}
	return "exported in credentials for " + countOf(len(j.requested), "device")
}

func countOf(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// newEvent builds one audit event as record does (operator in the detail,
// duration from start).
func (op *Ops) newEvent(action audit.Action, ref dek.Ref, w kms.Wrapped, start time.Time, err error, detail string) audit.Event {
	if op.o.Operator != "" {
		if detail != "" {
			detail += " "
		}
		detail += "operator=" + op.o.Operator
	}
	now := op.o.Now()
	ev := audit.Event{
		Time: now, Action: action, KeyID: ref.KeyID, KeyVersion: ref.Version,
		RootKeyID: w.RootKeyID, RootKeyVersion: w.RootKeyVersion,
		Result: audit.ResultOf(err), Detail: detail,
	}
	if !start.IsZero() {
		ev.DurationMS = audit.Millis(now.Sub(start))
	}
	return ev
}

// appendEvents records events, in one AppendMany when the Auditor has it,
// even when ctx has ended (see record).
func (op *Ops) appendEvents(ctx context.Context, events []audit.Event) error {
	if len(events) == 0 {
		return nil
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if ba, ok := op.o.Audit.(BatchAuditor); ok {
		if _, err := ba.AppendMany(actx, events); err != nil {
			return fmt.Errorf("audit %d events: %w", len(events), err)
		}
		return nil
	}
	for _, ev := range events {
		if _, err := op.o.Audit.Append(actx, ev); err != nil {
			return fmt.Errorf("audit %s %s@%s: %w", ev.Action, ev.KeyID, ev.KeyVersion, err)
		}
	}
	return nil
}

// parallel runs fn(ctx, 0..n-1), ProvisionWorkers at a time, and returns
// the first error; after it, the indices not yet started are skipped.
func (op *Ops) parallel(ctx context.Context, n int, fn func(ctx context.Context, i int) error) error {
	workers := op.o.ProvisionWorkers
	if workers <= 0 {
		workers = defaultProvisionWorkers
	}
	workers = min(workers, n)
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				mu.Lock()
				stop := firstErr != nil
				mu.Unlock()
				if stop {
					return
				}
				err := ctx.Err()
				if err == nil {
					err = fn(ctx, i)
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

// reporter calls a progress function, never concurrently, at most about a
// hundred times, and with the total only once everything is done.
type reporter struct {
	fn    func(done, total int)
	total int
	step  int

	mu   sync.Mutex
	n    int
	last int
}

func newReporter(fn func(done, total int), total int) *reporter {
	return &reporter{fn: fn, total: total, step: max(1, total/100)}
}

func (r *reporter) add(n int) {
	if r.fn == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n = min(r.n+n, r.total)
	if r.n < r.total && r.n-r.last >= r.step {
		r.last = r.n
		r.fn(r.n, r.total)
	}
}

func (r *reporter) done(total int) {
	if r.fn == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fn(total, total)
}
