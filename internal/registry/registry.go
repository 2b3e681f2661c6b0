package registry

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
)

// Entry is one DEK version as the registry keeps it. The DEK itself is only
// ever here wrapped; once shredded, Wrapped is zero and the entry is a
// tombstone that proves what was destroyed and when.
type Entry struct {
	KeyID   string      `json:"key_id"`
	Version string      `json:"key_version"`
	State   dek.State   `json:"state"`
	Wrapped kms.Wrapped `json:"wrapped"`
	// Devices lists the devices allowed to use a group key. Empty for a
	// device's own key (device/<id>), which only that device may use.
	Devices   []string  `json:"devices,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// StateChangedAt is when State last changed (revocation, shred, ...).
	StateChangedAt time.Time `json:"state_changed_at"`
	// Rotation is the key-rotation bookkeeping of this version (package
	// rotation). Zero for a version no rotation has touched.
	Rotation Rotation `json:"rotation,omitzero"`
}

// Rotation tracks one version through a fleet key rotation. Versions keep
// dek.State's four states; this is the extra that rotation needs: whether a
// new version is still waiting for its device(s) to use it (Pending), the
// rekey deliveries tried, when the version it supersedes is to be revoked,
// and an approximate count of messages opened under it.
type Rotation struct {
	// Supersedes names the version of the same key this one replaces (set
	// on a version made by a rotation).
	Supersedes string `json:"supersedes,omitempty"`
	// Trigger, on a version made by a rotation, says what started it: age,
	// messages (the message limit) or operator (dekctl rotate). The
	// controller's daily share counts the age-started ones of the last
	// window, and `dekctl rotation status` derives from them when a due key
	// may start.
	Trigger string `json:"trigger,omitempty"`
	// Pending: made by a rotation, delivered (or being delivered) to its
	// device(s), not yet adopted. The backend already decrypts with it.
	Pending bool `json:"pending,omitempty"`
	// AdoptedAt: when the first message under this version (for a group
	// key: from its last member) was decrypted.
	AdoptedAt time.Time `json:"adopted_at,omitzero"`
	// AdoptedBy: for a group key, the members seen using this version.
	AdoptedBy []string `json:"adopted_by,omitempty"`
	// RekeyAttempts and LastRekeyAt count the deliveries of this version's
	// rekey message; RekeyFailures those the broker did not take.
	RekeyAttempts int       `json:"rekey_attempts,omitempty"`
	RekeyFailures int       `json:"rekey_failures,omitempty"`
	LastRekeyAt   time.Time `json:"last_rekey_at,omitzero"`
	// RevokeAfter, on a superseded (decrypt_only) version: when the grace
	// period after its successor's adoption ends and it is revoked.
	RevokeAfter time.Time `json:"revoke_after,omitzero"`
	// Messages is an approximate count of messages decrypted under this
	// version, summed from every replica's periodically flushed counters.
	Messages uint64 `json:"messages,omitempty"`
}

// IsZero reports whether r holds nothing.
func (r Rotation) IsZero() bool {
	return r.Supersedes == "" && r.Trigger == "" && !r.Pending && r.AdoptedAt.IsZero() && len(r.AdoptedBy) == 0 &&
		r.RekeyAttempts == 0 && r.RekeyFailures == 0 && r.LastRekeyAt.IsZero() && r.RevokeAfter.IsZero() && r.Messages == 0
}

// Equal reports whether r and o hold the same values.
func (r Rotation) Equal(o Rotation) bool {
	return r.Supersedes == o.Supersedes && r.Trigger == o.Trigger && r.Pending == o.Pending && r.AdoptedAt.Equal(o.AdoptedAt) &&
		slices.Equal(r.AdoptedBy, o.AdoptedBy) && r.RekeyAttempts == o.RekeyAttempts &&
		r.RekeyFailures == o.RekeyFailures && r.LastRekeyAt.Equal(o.LastRekeyAt) &&
		r.RevokeAfter.Equal(o.RevokeAfter) && r.Messages == o.Messages
}

// stamped returns r with its times at the stores' precision.
func (r Rotation) stamped() Rotation {
	for _, t := range []*time.Time{&r.AdoptedAt, &r.LastRekeyAt, &r.RevokeAfter} {
		if !t.IsZero() {
			*t = stamp(*t)
		}
	}
	if len(r.AdoptedBy) == 0 {
		r.AdoptedBy = nil
	}
	return r
}

// Ref returns the entry's name.
func (e Entry) Ref() dek.Ref { return dek.Ref{KeyID: e.KeyID, Version: e.Version} }

// AllowsDevice reports whether deviceID may use this key: its own device key,
// or a group key that lists it.
func (e Entry) AllowsDevice(deviceID string) bool {
	if e.KeyID == dek.DeviceKeyID(deviceID) {
		return true
	}
	for _, d := range e.Devices {
		if d == deviceID {
			return true
		}
	}
	return false
}

// ChangeKind says what happened to an entry.
type ChangeKind string

const (
	ChangeCreated ChangeKind = "created"
	ChangeUpdated ChangeKind = "updated"
	// ChangeReset: the watcher lost track (file replaced wholesale, listener
	// reconnected); a consumer should treat every entry as possibly changed.
	ChangeReset ChangeKind = "reset"
)

// Change is one event of the change feed. For ChangeReset, KeyID and Version
// are empty.
type Change struct {
	Kind    ChangeKind `json:"kind"`
	KeyID   string     `json:"key_id,omitempty"`
	Version string     `json:"key_version,omitempty"`
	State   dek.State  `json:"state,omitempty"`
}

// Store is the DEK registry. Implementations are safe for concurrent use,
// by several goroutines and (through the file lock or the database) by
// several processes: dekctl and running daemons share one registry.
type Store interface {
	// Get returns one entry, or ErrNotFound.
	Get(ctx context.Context, keyID, version string) (Entry, error)
	// Create adds an entry, or fails with ErrExists.
	Create(ctx context.Context, e Entry) error
	// Update applies fn to the stored entry atomically and saves the result
	// (UpdatedAt and, when State changed, StateChangedAt set by the store).
	// fn's error aborts the update and is returned as is.
	Update(ctx context.Context, keyID, version string, fn func(*Entry) error) (Entry, error)
	// List returns every entry, ordered by key id then creation time.
	List(ctx context.Context) ([]Entry, error)
	// Watch streams changes made by any process until ctx ends; a change
	// made anywhere reaches every watcher within 2 seconds. The channel is
	// closed when ctx ends or the store is closed.
	Watch(ctx context.Context) (<-chan Change, error)
	Close() error
}

var (
	ErrNotFound = errors.New("registry: no such key version")
	ErrExists   = errors.New("registry: key version already exists")
	// ErrShredded: the entry is a tombstone; it can never change again.
	ErrShredded = errors.New("registry: key version is shredded")
	// ErrInvalid: the entry breaks an invariant (see Entry.Validate).
	ErrInvalid = errors.New("registry: invalid entry")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("registry: store closed")
)
