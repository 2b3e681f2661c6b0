package keyops

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

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
			return nil, invalid("requests[%d]: device id %q: want %s", i, clip(r.DeviceID), dek.DeviceIDAlphabet)
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
	create, joins, credKey := planProvision(all, reqs)
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

// planProvision works out what one ProvisionMany attempt does, from a
// registry listing: the versions to create, the active group versions to
// join, and the key each request gets.
func planProvision(all []registry.Entry, reqs []ProvisionRequest) (create []*newVersion, joins []*groupJoin, credKey []dek.Ref) {
	byKey := make(map[string][]registry.Entry)
	for _, e := range all {
		byKey[e.KeyID] = append(byKey[e.KeyID], e)
	}
	for _, es := range byKey {
		// Oldest first, as versionsOf has them.
		slices.SortStableFunc(es, func(a, b registry.Entry) int { return a.CreatedAt.Compare(b.CreatedAt) })
	}

	newOf := map[string]*newVersion{} // group key id -> its new version
	joinOf := map[string]*groupJoin{}
	credKey = make([]dek.Ref, len(reqs))
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
	return create, joins, credKey
}
