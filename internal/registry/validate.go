package registry

import (
	"bytes"
	"fmt"
	"slices"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
)

// ValidKeyID reports whether s is a key id per the spec (dek.ValidKeyID).
func ValidKeyID(s string) bool { return dek.ValidKeyID(s) }

// ValidKeyVersion reports whether s is a key version per the spec
// (dek.ValidKeyVersion).
func ValidKeyVersion(s string) bool { return dek.ValidKeyVersion(s) }

// ValidDeviceID reports whether s is a device id per the spec
// (dek.ValidDeviceID).
func ValidDeviceID(s string) bool { return dek.ValidDeviceID(s) }

// Validate checks the invariants every stored entry holds. Both backends call
// it on every write, so a registry never contains an entry that breaks them:
// names in the spec's alphabets, a known state, a shredded entry holds no
// wrapped DEK and every other entry holds one (with the root key that made
// it), device ids in the spec's alphabet and listed once.
// The error wraps ErrInvalid and never contains key material.
func (e Entry) Validate() error {
	if !ValidKeyID(e.KeyID) {
		return fmt.Errorf("%w: key_id %q: want %s", ErrInvalid, clip(e.KeyID), dek.KeyIDAlphabet)
	}
	if !ValidKeyVersion(e.Version) {
		return fmt.Errorf("%w: %s key_version %q: want %s", ErrInvalid, e.KeyID, clip(e.Version), dek.KeyVersionAlphabet)
	}
	if !e.State.Valid() {
		return fmt.Errorf("%w: %s: state %q: want active, decrypt_only, revoked or shredded", ErrInvalid, e.Ref(), clip(string(e.State)))
	}
	if e.State == dek.StateShredded {
		if !e.Wrapped.IsZero() {
			return fmt.Errorf("%w: %s: shredded but still holds a wrapped DEK", ErrInvalid, e.Ref())
		}
	} else {
		if e.Wrapped.IsZero() {
			return fmt.Errorf("%w: %s: state %s but no wrapped DEK", ErrInvalid, e.Ref(), e.State)
		}
		if e.Wrapped.RootKeyID == "" {
			return fmt.Errorf("%w: %s: wrapped DEK without root key id", ErrInvalid, e.Ref())
		}
	}
	if len(e.Devices) > 0 {
		seen := make(map[string]struct{}, len(e.Devices))
		for i, d := range e.Devices {
			if !ValidDeviceID(d) {
				return fmt.Errorf("%w: %s: devices[%d] %q: want %s", ErrInvalid, e.Ref(), i, clip(d), dek.DeviceIDAlphabet)
			}
			if _, dup := seen[d]; dup {
				return fmt.Errorf("%w: %s: device %q listed twice", ErrInvalid, e.Ref(), d)
			}
			seen[d] = struct{}{}
		}
	}
	for i, d := range e.Rotation.AdoptedBy {
		if !ValidDeviceID(d) {
			return fmt.Errorf("%w: %s: rotation.adopted_by[%d] %q: want %s", ErrInvalid, e.Ref(), i, clip(d), dek.DeviceIDAlphabet)
		}
	}
	if s := e.Rotation.Supersedes; s != "" && !ValidKeyVersion(s) {
		return fmt.Errorf("%w: %s: rotation.supersedes %q: want %s", ErrInvalid, e.Ref(), clip(s), dek.KeyVersionAlphabet)
	}
	if e.Rotation.RekeyAttempts < 0 || e.Rotation.RekeyFailures < 0 {
		return fmt.Errorf("%w: %s: rotation counts must not be negative", ErrInvalid, e.Ref())
	}
	return nil
}

// clip bounds user-supplied text quoted in an error.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// Clone returns a deep copy, so that a caller mutating the result (its
// Devices or ciphertext) cannot reach a store's own copy.
func (e Entry) Clone() Entry {
	e.Devices = slices.Clone(e.Devices)
	e.Rotation.AdoptedBy = slices.Clone(e.Rotation.AdoptedBy)
	e.Wrapped.Ciphertext = bytes.Clone(e.Wrapped.Ciphertext)
	return e
}

// SameContent reports whether a and b hold the same state, wrapped DEK and
// devices (timestamps aside). Stores use it to skip writing an Update that
// changed nothing.
func SameContent(a, b Entry) bool {
	return a.KeyID == b.KeyID && a.Version == b.Version && a.State == b.State &&
		a.Wrapped.RootKeyID == b.Wrapped.RootKeyID &&
		a.Wrapped.RootKeyVersion == b.Wrapped.RootKeyVersion &&
		bytes.Equal(a.Wrapped.Ciphertext, b.Wrapped.Ciphertext) &&
		slices.Equal(a.Devices, b.Devices) && a.Rotation.Equal(b.Rotation)
}

// stamp is the precision every store keeps: PostgreSQL's timestamptz holds
// microseconds, so both backends round to it and an entry reads back equal
// to what was written.
func stamp(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// PrepareCreate is the shared half of Store.Create: it fills the timestamps
// a caller left zero (CreatedAt from now; UpdatedAt and StateChangedAt from
// CreatedAt), normalises them to UTC microseconds, copies the entry and
// validates it. A caller importing an entry may set CreatedAt itself.
func PrepareCreate(e Entry, now time.Time) (Entry, error) {
	e = e.Clone()
	if e.CreatedAt.IsZero() {
		e.CreatedAt = now
	}
	if e.UpdatedAt.IsZero() {
		e.UpdatedAt = e.CreatedAt
	}
	if e.StateChangedAt.IsZero() {
		e.StateChangedAt = e.CreatedAt
	}
	e.CreatedAt, e.UpdatedAt, e.StateChangedAt = stamp(e.CreatedAt), stamp(e.UpdatedAt), stamp(e.StateChangedAt)
	e.Rotation = e.Rotation.stamped()
	if err := e.Validate(); err != nil {
		return Entry{}, err
	}
	return e, nil
}

// ApplyUpdate is the shared half of Store.Update: it runs fn on a deep copy
// of old and checks the result. changed is false when fn changed nothing (the
// store then writes nothing and emits no change). fn may not rename the entry
// or move its CreatedAt (ErrInvalid), nor change a shredded entry
// (ErrShredded). The store sets UpdatedAt to now and, when State changed,
// StateChangedAt too; fn's own values for those two are ignored.
// fn's error is returned as is.
func ApplyUpdate(old Entry, now time.Time, fn func(*Entry) error) (next Entry, changed bool, err error) {
	next = old.Clone()
	if err := fn(&next); err != nil {
		return Entry{}, false, err
	}
	if next.KeyID != old.KeyID || next.Version != old.Version {
		return Entry{}, false, fmt.Errorf("%w: %s: an update may not rename the entry", ErrInvalid, old.Ref())
	}
	if !next.CreatedAt.Equal(old.CreatedAt) {
		return Entry{}, false, fmt.Errorf("%w: %s: an update may not change created_at", ErrInvalid, old.Ref())
	}
	next.CreatedAt, next.UpdatedAt, next.StateChangedAt = old.CreatedAt, old.UpdatedAt, old.StateChangedAt
	next.Rotation = next.Rotation.stamped()
	if SameContent(old, next) {
		return old, false, nil
	}
	if old.State == dek.StateShredded {
		return Entry{}, false, fmt.Errorf("%w: %s was shredded at %s", ErrShredded, old.Ref(), old.StateChangedAt.Format(time.RFC3339))
	}
	if err := next.Validate(); err != nil {
		return Entry{}, false, err
	}
	now = stamp(now)
	if now.Before(old.UpdatedAt) {
		// A clock step back must not make UpdatedAt run backwards: watchers
		// and operators read it as "the last change".
		now = old.UpdatedAt
	}
	next.UpdatedAt = now
	if next.State != old.State {
		next.StateChangedAt = now
	}
	return next, true, nil
}
