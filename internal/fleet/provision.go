package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"crypto/rand"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// KeyProvisioner makes one device's credential; *keyops.Ops (the code
// behind dekctl provision) satisfies it, and so does *Bulk.
type KeyProvisioner interface {
	Provision(ctx context.Context, req keyops.ProvisionRequest) (keyops.Credential, error)
}

// BulkProvisioner makes many credentials at once. Provision uses it when
// its KeyProvisioner also implements it (Bulk does), since one registry
// write per device makes a 100,000-device fleet take hours on the file
// registry.
type BulkProvisioner interface {
	ProvisionMany(ctx context.Context, reqs []keyops.ProvisionRequest) ([]keyops.Credential, error)
}

// ProvisionOptions name the fleet.
type ProvisionOptions struct {
	// Prefix starts every device id (default "sim-"); ids are Prefix and a
	// zero-padded index, e.g. sim-000042.
	Prefix string
	// First is the index of the first device (default 0).
	First int
	// GroupSize, when positive, gives devices group keys instead of keys of
	// their own: consecutive runs of GroupSize devices share
	// group/<Prefix>group-<k>.
	GroupSize int
	// Workers bounds the concurrent Provision calls when the provisioner is
	// not a BulkProvisioner (default 8).
	Workers int
	// Progress, when set, is called now and then with the count done.
	Progress func(done, total int)
}

// DeviceID names the i-th device of a fleet of n.
func DeviceID(prefix string, i, n int) string {
	width := len(strconv.Itoa(max(n-1, 0)))
	width = max(width, 6)
	s := strconv.Itoa(i)
	if len(s) < width {
		s = strings.Repeat("0", width-len(s)) + s
	}
	return prefix + s
}

// Requests lists the provisioning requests of n devices named by opts.
func Requests(n int, opts ProvisionOptions) ([]keyops.ProvisionRequest, error) {
	if n <= 0 {
		return nil, errors.New("fleet: provision needs a positive device count")
	}
	if opts.Prefix == "" {
		opts.Prefix = "sim-"
	}
	last := opts.First + n
	reqs := make([]keyops.ProvisionRequest, n)
	for i := range reqs {
		idx := opts.First + i
		reqs[i].DeviceID = DeviceID(opts.Prefix, idx, last)
		if opts.GroupSize > 0 {
			reqs[i].Group = opts.Prefix + "group-" + strconv.Itoa(idx/opts.GroupSize)
		}
		if !registry.ValidDeviceID(reqs[i].DeviceID) {
			return nil, fmt.Errorf("fleet: device id %q: want 1-128 of A-Z a-z 0-9 . _ : -", reqs[i].DeviceID)
		}
	}
	return reqs, nil
}

// Provision makes credentials for n devices through p: in one call when p
// is a BulkProvisioner, else one Provision per device, opts.Workers at a
// time. On error, the credentials made so far are wiped and the devices
// already provisioned stay in the registry (provisioning them again makes
// a new version). The caller wipes the result (NewFleet does).
func Provision(ctx context.Context, n int, p KeyProvisioner, opts ProvisionOptions) ([]keyops.Credential, error) {
	reqs, err := Requests(n, opts)
	if err != nil {
		return nil, err
	}
	if b, ok := p.(BulkProvisioner); ok {
		creds, err := b.ProvisionMany(ctx, reqs)
		if err != nil {
			return nil, err
		}
		if opts.Progress != nil {
			opts.Progress(len(creds), n)
		}
		return creds, nil
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = 8
	}
	if opts.GroupSize > 0 {
		// keyops adds a device to a group's active version, or creates
		// it: concurrent first members would each create a version.
		workers = 1
	}
	creds := make([]keyops.Credential, n)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next, done atomic.Int64
		wg         sync.WaitGroup
		mu         sync.Mutex
		firstErr   error
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				c, err := p.Provision(ctx, reqs[i])
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("fleet: provision %s: %w", reqs[i].DeviceID, err)
					}
					mu.Unlock()
					cancel()
					return
				}
				creds[i] = c
				if d := done.Add(1); opts.Progress != nil && (d%1000 == 0 || int(d) == n) {
					opts.Progress(int(d), n)
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		for i := range creds {
			creds[i].Wipe()
		}
		return nil, firstErr
	}
	return creds, nil
}

// Registry is what Bulk needs of the DEK registry; registry.Store satisfies
// it. When it also implements BulkCreator, Bulk stores every new entry in
// one call.
type Registry interface {
	Create(ctx context.Context, e registry.Entry) error
	Update(ctx context.Context, keyID, version string, fn func(*registry.Entry) error) (registry.Entry, error)
	List(ctx context.Context) ([]registry.Entry, error)
}

// BulkCreator stores many new entries at once, all or none, failing with
// registry.ErrExists if any is already there. Neither registry backend has
// it yet; the file registry rewrites its whole file per Create, so this is
// what provisioning 100,000 devices into it needs.
type BulkCreator interface {
	CreateMany(ctx context.Context, es []registry.Entry) error
}

// Bulk provisions many devices with the semantics of keyops.Ops.Provision
// (dekctl provision) but a constant number of registry reads: it lists the
// registry once, wraps new DEKs Workers at a time, and creates the entries
// through BulkCreator when the registry has it, else Workers at a time.
// Every key version it touches gets one audit event, as keyops records it.
type Bulk struct {
	KMS      kms.Provider
	Registry Registry
	Audit    keyops.Auditor // required: no key operation goes unrecorded
	Operator string         // added to every audit event's detail
	Rand     io.Reader      // new DEKs (default crypto/rand.Reader)
	Now      func() time.Time
	Workers  int // concurrent wraps and creates (default 16)
}

var (
	_ KeyProvisioner  = (*Bulk)(nil)
	_ BulkProvisioner = (*Bulk)(nil)
	_ KeyProvisioner  = (*keyops.Ops)(nil)
)

// Provision makes one device's credential (ProvisionMany of one).
func (b *Bulk) Provision(ctx context.Context, req keyops.ProvisionRequest) (keyops.Credential, error) {
	cs, err := b.ProvisionMany(ctx, []keyops.ProvisionRequest{req})
	if err != nil {
		return keyops.Credential{}, err
	}
	return cs[0], nil
}

// pending is one key version ProvisionMany creates.
type pending struct {
	ref     dek.Ref
	devices []string // group members (nil for a device key)
	reqs    []int    // indices of the requests it serves
	key     []byte
	wrapped kms.Wrapped
	start   time.Time
}

// ProvisionMany makes the credentials of reqs, in their order. Without a
// group, a device gets the next version of device/<id> (active; versions
// that were active become decrypt_only). With a group, the devices join the
// group key's active version (one registry update per group) or a new
// version is created with all of them. Requests must name distinct devices.
// The caller wipes the result.
func (b *Bulk) ProvisionMany(ctx context.Context, reqs []keyops.ProvisionRequest) (creds []keyops.Credential, err error) {
	if b.KMS == nil || b.Registry == nil || b.Audit == nil {
		return nil, errors.New("fleet: Bulk needs KMS, Registry and Audit")
	}
	rnd, now := b.Rand, b.Now
	if rnd == nil {
		rnd = rand.Reader
	}
	if now == nil {
		now = time.Now
	}
	workers := b.Workers
	if workers <= 0 {
		workers = 16
	}
	seen := make(map[string]struct{}, len(reqs))
	for _, r := range reqs {
		if !registry.ValidDeviceID(r.DeviceID) {
			return nil, fmt.Errorf("fleet: device id %q: want 1-128 of A-Z a-z 0-9 . _ : -", clip(r.DeviceID))
		}
		if r.Group != "" && !registry.ValidKeyID("group/"+r.Group) {
			return nil, fmt.Errorf("fleet: group %q: want A-Z a-z 0-9 . _ : / -", clip(r.Group))
		}
		if _, dup := seen[r.DeviceID]; dup {
			return nil, fmt.Errorf("fleet: device %s requested twice", r.DeviceID)
		}
		seen[r.DeviceID] = struct{}{}
	}
	all, err := b.Registry.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("fleet: list registry: %w", err)
	}
	byKey := make(map[string][]registry.Entry)
	for _, e := range all {
		byKey[e.KeyID] = append(byKey[e.KeyID], e)
	}

	creds = make([]keyops.Credential, len(reqs))
	defer func() {
		if err != nil {
			for i := range creds {
				creds[i].Wipe()
			}
			creds = nil
		}
	}()

	// Plan: new versions to create, and existing active group versions to
	// join.
	var create []*pending
	joins := map[string]*pending{} // group key id -> its active version
	groupNew := map[string]*pending{}
	for i, r := range reqs {
		if r.Group == "" {
			keyID := dek.DeviceKeyID(r.DeviceID)
			create = append(create, &pending{ref: dek.Ref{KeyID: keyID, Version: nextVersion(byKey[keyID])}, reqs: []int{i}})
			continue
		}
		keyID := "group/" + r.Group
		if p := joins[keyID]; p != nil {
			p.reqs, p.devices = append(p.reqs, i), append(p.devices, r.DeviceID)
			continue
		}
		if p := groupNew[keyID]; p != nil {
			p.reqs, p.devices = append(p.reqs, i), append(p.devices, r.DeviceID)
			continue
		}
		var active *registry.Entry
		for k, e := range byKey[keyID] {
			if e.State == dek.StateActive && (active == nil || !e.CreatedAt.Before(active.CreatedAt)) {
				active = &byKey[keyID][k]
			}
		}
		if active != nil {
			joins[keyID] = &pending{ref: active.Ref(), wrapped: active.Wrapped, reqs: []int{i}, devices: []string{r.DeviceID}}
			continue
		}
		p := &pending{ref: dek.Ref{KeyID: keyID, Version: nextVersion(byKey[keyID])}, reqs: []int{i}, devices: []string{r.DeviceID}}
		groupNew[keyID] = p
		create = append(create, p)
	}
	defer func() {
		for _, p := range create {
			clear(p.key)
		}
		for _, p := range joins {
			clear(p.key)
		}
	}()

	// Make and wrap the new DEKs.
	for _, p := range create {
		p.key = make([]byte, keyops.DEKSize)
		if _, err := io.ReadFull(rnd, p.key); err != nil {
			return nil, fmt.Errorf("fleet: new DEK for %s: random: %w", p.ref, err)
		}
	}
	if err := parallel(ctx, len(create), workers, func(ctx context.Context, i int) error {
		p := create[i]
		p.start = now()
		w, err := b.KMS.Wrap(ctx, p.key, kms.DEKAAD(p.ref))
		if err != nil {
			aerr := b.record(ctx, audit.ActionProvision, p.ref, kms.Wrapped{}, p.start, now(), err, why(p))
			return joinErr(fmt.Errorf("fleet: wrap new DEK %s: %w", p.ref, err), aerr)
		}
		p.wrapped = w
		return nil
	}); err != nil {
		return nil, err
	}

	// Store them.
	entries := make([]registry.Entry, len(create))
	for i, p := range create {
		entries[i] = registry.Entry{KeyID: p.ref.KeyID, Version: p.ref.Version, State: dek.StateActive, Wrapped: p.wrapped, Devices: p.devices, CreatedAt: now()}
	}
	if bc, ok := b.Registry.(BulkCreator); ok && len(entries) > 0 {
		err := bc.CreateMany(ctx, entries)
		var errs []error
		if err != nil {
			errs = append(errs, fmt.Errorf("fleet: store %d new key versions: %w", len(entries), err))
		}
		for _, p := range create {
			if aerr := b.record(ctx, audit.ActionProvision, p.ref, p.wrapped, p.start, now(), err, why(p)); aerr != nil {
				errs = append(errs, aerr)
			}
		}
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
	} else if err := parallel(ctx, len(create), workers, func(ctx context.Context, i int) error {
		p := create[i]
		err := b.Registry.Create(ctx, entries[i])
		aerr := b.record(ctx, audit.ActionProvision, p.ref, p.wrapped, p.start, now(), err, why(p))
		if err != nil {
			return joinErr(fmt.Errorf("fleet: store %s: %w", p.ref, err), aerr)
		}
		return aerr
	}); err != nil {
		return nil, err
	}

	// Supersede the device keys' previously active versions, as keyops does.
	var demote []registry.Entry
	for _, p := range create {
		if p.devices != nil {
			continue
		}
		for _, e := range byKey[p.ref.KeyID] {
			if e.State == dek.StateActive {
				demote = append(demote, e)
			}
		}
	}
	if err := parallel(ctx, len(demote), workers, func(ctx context.Context, i int) error {
		e := demote[i]
		start := now()
		got, err := b.Registry.Update(ctx, e.KeyID, e.Version, func(cur *registry.Entry) error {
			if cur.State == dek.StateActive {
				cur.State = dek.StateDecryptOnly
			}
			return nil
		})
		if err != nil {
			got = e
		}
		aerr := b.record(ctx, audit.ActionRotate, e.Ref(), got.Wrapped, start, now(), err, "active -> decrypt_only, superseded (fleet provisioning)")
		if err != nil {
			return joinErr(fmt.Errorf("fleet: demote %s: %w", e.Ref(), err), aerr)
		}
		return aerr
	}); err != nil {
		return nil, err
	}

	// Join the existing group versions and unwrap their DEKs.
	joinList := make([]*pending, 0, len(joins))
	for _, p := range joins {
		joinList = append(joinList, p)
	}
	if err := parallel(ctx, len(joinList), workers, func(ctx context.Context, i int) error {
		p := joinList[i]
		start := now()
		got, err := b.Registry.Update(ctx, p.ref.KeyID, p.ref.Version, func(cur *registry.Entry) error {
			if cur.State != dek.StateActive {
				return fmt.Errorf("%s is no longer active (%s); provision again", p.ref, cur.State)
			}
			for _, d := range p.devices {
				if !containsString(cur.Devices, d) {
					cur.Devices = append(cur.Devices, d)
				}
			}
			return nil
		})
		if err == nil {
			p.wrapped = got.Wrapped
		}
		aerr := b.record(ctx, audit.ActionDevices, p.ref, p.wrapped, start, now(), err, strconv.Itoa(len(p.devices))+" devices added (fleet provisioning)")
		if err := joinErr(err, aerr); err != nil {
			return fmt.Errorf("fleet: add %d devices to %s: %w", len(p.devices), p.ref, err)
		}
		start = now()
		key, err := b.KMS.Unwrap(ctx, p.wrapped, kms.DEKAAD(p.ref))
		aerr = b.record(ctx, audit.ActionUnwrap, p.ref, p.wrapped, start, now(), err, "exported in credentials for "+strconv.Itoa(len(p.devices))+" devices (fleet provisioning)")
		if err != nil {
			return joinErr(fmt.Errorf("fleet: unwrap %s: %w", p.ref, err), aerr)
		}
		p.key = key
		if len(key) != keyops.DEKSize {
			return fmt.Errorf("fleet: unwrap %s: DEK is %d bytes, want %d", p.ref, len(key), keyops.DEKSize)
		}
		return aerr
	}); err != nil {
		return nil, err
	}

	for _, ps := range [][]*pending{create, joinList} {
		for _, p := range ps {
			for _, i := range p.reqs {
				creds[i] = keyops.Credential{DeviceID: reqs[i].DeviceID, KeyID: p.ref.KeyID, KeyVersion: p.ref.Version, DEK: append([]byte(nil), p.key...)}
			}
		}
	}
	return creds, nil
}

func why(p *pending) string {
	if p.devices == nil {
		return "device " + strings.TrimPrefix(p.ref.KeyID, "device/") + " (fleet provisioning)"
	}
	return "group created for " + strconv.Itoa(len(p.devices)) + " devices (fleet provisioning)"
}

// record appends one audit event like keyops does, even when ctx has
// ended: an operation that happened must not go unrecorded.
func (b *Bulk) record(ctx context.Context, action audit.Action, ref dek.Ref, w kms.Wrapped, start, end time.Time, err error, detail string) error {
	if b.Operator != "" {
		detail += " operator=" + b.Operator
	}
	ev := audit.Event{
		Time: end, Action: action, KeyID: ref.KeyID, KeyVersion: ref.Version,
		RootKeyID: w.RootKeyID, RootKeyVersion: w.RootKeyVersion,
		Result: audit.ResultOf(err), DurationMS: audit.Millis(end.Sub(start)), Detail: detail,
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if _, aerr := b.Audit.Append(actx, ev); aerr != nil {
		return fmt.Errorf("fleet: audit %s %s: %w", action, ref, aerr)
	}
	return nil
}

// parallel runs fn(0..n-1), workers at a time, stopping at the first error.
func parallel(ctx context.Context, n, workers int, fn func(ctx context.Context, i int) error) error {
	if n == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for w := 0; w < min(workers, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := ctx.Err(); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				if err := fn(ctx, i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// nextVersion is keyops' rule: "v<N+1>", N the highest "v<digits>" version
// the key ever had (tombstones included).
func nextVersion(es []registry.Entry) string {
	hi := 0
	for _, e := range es {
		v := e.Version
		if len(v) < 2 || len(v) > 10 || v[0] != 'v' || v[1] == '+' || v[1] == '-' {
			continue
		}
		if n, err := strconv.Atoi(v[1:]); err == nil && n > hi {
			hi = n
		}
	}
	return "v" + strconv.Itoa(hi+1)
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func joinErr(err, aerr error) error {
	if aerr == nil {
		return err
	}
	if err == nil {
		return aerr
	}
	return errors.Join(err, aerr)
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
