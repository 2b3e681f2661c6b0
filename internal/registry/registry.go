package registry

import (
	"context"
	"errors"
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
