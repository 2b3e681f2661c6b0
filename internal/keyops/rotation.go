package keyops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// The operations below are the registry side of fleet key rotation (package
// rotation drives them). A rotation never adds a state: the new version is
// active from the start (the backend can decrypt with it before the device
// uses it) and marked Rotation.Pending; the version it supersedes stays
// active until the new one is adopted, then becomes decrypt_only with
// Rotation.RevokeAfter set, and is revoked once that time has passed.

// Current returns the version of keyID that devices are known to hold: the
// newest active version that is not pending, and the pending one if there
// is (at most one is kept pending at a time). ErrNotFound when keyID has no
// active version.
func (op *Ops) Current(ctx context.Context, keyID string) (cur registry.Entry, pending *registry.Entry, err error) {
	if err := op.needRegistry(); err != nil {
		return registry.Entry{}, nil, err
	}
	es, err := op.versionsOf(ctx, keyID)
	if err != nil {
		return registry.Entry{}, nil, err
	}
	return currentOf(es, keyID)
}

func currentOf(es []registry.Entry, keyID string) (cur registry.Entry, pending *registry.Entry, err error) {
	found := false
	for i := range es {
		e := es[i]
		if e.State != dek.StateActive {
			continue
		}
		if e.Rotation.Pending {
			pending = &es[i]
			continue
		}
		cur, found = e, true // oldest first: the last wins
	}
	if !found {
		return registry.Entry{}, nil, fmt.Errorf("%w: no active version of %s", ErrNotFound, keyID)
	}
	return cur, pending, nil
}

// RotateKey starts a rotation of keyID: it creates the next version, active
// and pending, with the current version's devices, superseding the current
// one. If a rotation is already pending, that version is returned and
// created is false (a rotation is never stacked on an unadopted one). The
// DEK is not returned: the rekey sender unwraps it (UnwrapForRekey), so
// that each export of a DEK is its own audit event. Needs KMS, Registry,
// Audit.
// The rotation is recorded as started by an operator (TriggerOperator).
func (op *Ops) RotateKey(ctx context.Context, keyID, why string) (e registry.Entry, created bool, err error) {
	return op.RotateKeyFrom(ctx, keyID, nil, TriggerOperator, why)
}

// What starts a rotation, as recorded in registry.Rotation.Trigger.
const (
	TriggerAge      = "age"      // the version reached the policy's max age
	TriggerMessages = "messages" // the version reached the message limit
	TriggerOperator = "operator" // dekctl rotate
)

// RotateKeyFrom is RotateKey given the key's versions as the caller last
// listed them (oldest first; nil: read them) and what started it (trigger,
// one of the Trigger constants), so that a controller rotating
// many keys does not list the registry once per key. A stale list costs
// nothing worse than a retry: the version name is taken atomically.
func (op *Ops) RotateKeyFrom(ctx context.Context, keyID string, versions []registry.Entry, trigger, why string) (e registry.Entry, created bool, err error) {
	if !registry.ValidKeyID(keyID) {
		return registry.Entry{}, false, invalid("key id %q: want %s", clip(keyID), dek.KeyIDAlphabet)
	}
	if err := op.needKMS(); err != nil {
		return registry.Entry{}, false, err
	}
	if versions == nil {
		if versions, err = op.versionsOf(ctx, keyID); err != nil {
			return registry.Entry{}, false, err
		}
	}
	cur, pending, err := currentOf(versions, keyID)
	if err != nil {
		return registry.Entry{}, false, err
	}
	if pending != nil {
		return *pending, false, nil
	}
	detail := "rotation of " + cur.Version + " (" + trigger + ")"
	if why != "" {
		detail += ": " + why
	}
	e, key, err := op.createVersion(ctx, keyID, versions, slices.Clone(cur.Devices),
		registry.Rotation{Supersedes: cur.Version, Trigger: trigger, Pending: true}, audit.ActionRotate, detail)
	clear(key)
	if err != nil {
		return registry.Entry{}, false, err
	}
	return e, true, nil
}

// UnwrapForRekey unwraps ref's DEK to seal a rekey message for deviceID
// (either the new DEK, or the one it is sealed under), recording the export
// in the audit log. The caller wipes the result. Needs KMS, Registry, Audit.
func (op *Ops) UnwrapForRekey(ctx context.Context, e registry.Entry, deviceID string) ([]byte, error) {
	if err := op.needKMS(); err != nil {
		return nil, err
	}
	if !e.State.CanDecrypt() {
		return nil, fmt.Errorf("%s is %s: %w", e.Ref(), e.State, dek.ErrRevoked)
	}
	start := op.o.Now()
	key, err := op.o.KMS.Unwrap(ctx, e.Wrapped, kms.DEKAAD(e.Ref()))
	aerr := op.record(ctx, audit.ActionUnwrap, e.Ref(), e.Wrapped, start, err, "rekey for device "+deviceID)
	if err != nil {
		return nil, joinAudit(fmt.Errorf("unwrap %s: %w", e.Ref(), err), aerr)
	}
	if aerr != nil || len(key) != DEKSize {
		clear(key)
		return nil, joinAudit(fmt.Errorf("unwrap %s: DEK is %d bytes", e.Ref(), len(key)), aerr)
	}
	return key, nil
}

// NoteRekey records one delivery attempt of ref's rekey (failed or not).
func (op *Ops) NoteRekey(ctx context.Context, ref dek.Ref, failed bool) error {
	if err := op.needRegistry(); err != nil {
		return err
	}
	_, err := op.o.Registry.Update(ctx, ref.KeyID, ref.Version, func(cur *registry.Entry) error {
		cur.Rotation.RekeyAttempts++
		if failed {
			cur.Rotation.RekeyFailures++
		}
		cur.Rotation.LastRekeyAt = op.o.Now()
		return nil
	})
	return err
}

// AddMessages adds n to ref's approximate message count.
func (op *Ops) AddMessages(ctx context.Context, ref dek.Ref, n uint64) error {
	if err := op.needRegistry(); err != nil {
		return err
	}
	_, err := op.o.Registry.Update(ctx, ref.KeyID, ref.Version, func(cur *registry.Entry) error {
		cur.Rotation.Messages += n
		return nil
	})
	if errors.Is(err, registry.ErrShredded) {
		return nil
	}
	return err
}

// Adopt records that deviceID decrypted a message under ref. For a device
// key, or a group key once every member has, the version stops being
// pending (Rotation.AdoptedAt set) and every older active version of the
// key becomes decrypt_only, to be revoked after grace (Rotation.RevokeAfter).
// adopted reports whether this call completed the adoption. Idempotent.
// Needs Registry, Audit.
func (op *Ops) Adopt(ctx context.Context, ref dek.Ref, deviceID string, grace time.Duration) (adopted bool, err error) {
	if err := op.needRegistry(); err != nil {
		return false, err
	}
	now := op.o.Now()
	got, err := op.o.Registry.Update(ctx, ref.KeyID, ref.Version, func(cur *registry.Entry) error {
		adopted = false
		if !cur.Rotation.Pending || cur.State != dek.StateActive {
			return nil
		}
		if len(cur.Devices) > 0 {
			if !slices.Contains(cur.Rotation.AdoptedBy, deviceID) && slices.Contains(cur.Devices, deviceID) {
				cur.Rotation.AdoptedBy = append(cur.Rotation.AdoptedBy, deviceID)
			}
			for _, d := range cur.Devices {
				if !slices.Contains(cur.Rotation.AdoptedBy, d) {
					return nil
				}
			}
		}
		cur.Rotation.Pending = false
		cur.Rotation.AdoptedAt = now
		adopted = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("adopt %s: %w", ref, err)
	}
	if !adopted && (got.Rotation.Pending || got.Rotation.AdoptedAt.IsZero()) {
		return false, nil
	}
	// Adopted now or before: make sure what it supersedes is demoted (a
	// crash between the two updates is repaired by the next adoption call
	// or the controller's sweep).
	if err := op.supersede(ctx, got, grace); err != nil {
		return adopted, err
	}
	if adopted {
		aerr := op.record(ctx, audit.ActionRotate, ref, got.Wrapped, time.Time{}, nil, "adopted (last by device "+deviceID+")")
		return true, aerr
	}
	return false, nil
}

// supersede demotes the version e supersedes (Rotation.Supersedes) to
// decrypt_only, revoked after grace counted from e's adoption.
func (op *Ops) supersede(ctx context.Context, e registry.Entry, grace time.Duration) error {
	if e.Rotation.Supersedes == "" {
		return nil
	}
	revokeAt := e.Rotation.AdoptedAt.Add(grace)
	start := op.o.Now()
	changed := false
	got, err := op.o.Registry.Update(ctx, e.KeyID, e.Rotation.Supersedes, func(cur *registry.Entry) error {
		changed = false
		if cur.State == dek.StateActive {
			cur.State = dek.StateDecryptOnly
			cur.Rotation.RevokeAfter = revokeAt
			cur.Rotation.Pending = false
			changed = true
		}
		return nil
	})
	if errors.Is(err, registry.ErrNotFound) {
		return nil
	}
	if err == nil && !changed {
		return nil
	}
	ref := dek.Ref{KeyID: e.KeyID, Version: e.Rotation.Supersedes}
	aerr := op.record(ctx, audit.ActionRotate, ref, got.Wrapped, start, err,
		"active -> decrypt_only, superseded by "+e.Version+", revoke after "+revokeAt.UTC().Format(time.RFC3339))
	if err := joinAudit(err, aerr); err != nil {
		return fmt.Errorf("supersede %s: %w", ref, err)
	}
	return nil
}

// RevokeExpired revokes every decrypt_only version whose grace period has
// ended (Rotation.RevokeAfter passed), among es (nil: the whole registry).
// Needs Registry, Audit.
func (op *Ops) RevokeExpired(ctx context.Context, es []registry.Entry) ([]Outcome, error) {
	if err := op.needRegistry(); err != nil {
		return nil, err
	}
	if es == nil {
		var err error
		if es, err = op.o.Registry.List(ctx); err != nil {
			return nil, fmt.Errorf("list registry: %w", err)
		}
	}
	now := op.o.Now()
	var outs []Outcome
	var errs []error
	for _, e := range es {
		if e.State != dek.StateDecryptOnly || e.Rotation.RevokeAfter.IsZero() || now.Before(e.Rotation.RevokeAfter) {
			continue
		}
		o, err := op.Revoke(ctx, Selector{KeyID: e.KeyID, Version: e.Version})
		outs = append(outs, o...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return outs, errors.Join(errs...)
}

// IsGroupKey reports whether keyID is a group key (not device/<id>).
func IsGroupKey(keyID string) bool { return !dek.IsDeviceKeyID(keyID) }
