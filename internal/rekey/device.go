package rekey

import (
	"crypto/cipher"
	"errors"
	"fmt"
)

// Keyring is what a device knows when a rekey arrives (docs/rekey-v1.md,
// "What a device does"). Floor must come from storage that a restore from
// backup does not roll back (docs/device-guide.md).
type Keyring interface {
	// DeviceID is the device's own id.
	DeviceID() string
	// UsesKey reports whether keyID is the device's own key or a group
	// key it is a member of.
	UsesKey(keyID string) bool
	// Key returns the device's cipher for keyID@version, or nil.
	Key(keyID, version string) cipher.AEAD
	// Floor is the highest generation the device ever accepted for keyID
	// (0: none yet).
	Floor(keyID string) uint64
}

// Taken is a rekey a device may install: DEK (the caller persists it with
// its generation, raising the floor, before sealing under it, then wipes
// it), or Repeat (it already holds that version: nothing to do).
type Taken struct {
	Message
	DEK    []byte
	Repeat bool
}

// Take runs every check a device makes on a rekey, in the spec's order:
// form (ErrMalformed), addressee and key (ErrNotForDevice), a repeat of a
// held version (Repeat, no error), anti-rollback (ErrRollback), the
// wrapping key (ErrWrapUnknown), authenticity (ErrAuth).
func Take(payload []byte, k Keyring) (Taken, error) {
	m, err := Parse(payload)
	if err != nil {
		return Taken{}, err
	}
	if m.DeviceID != k.DeviceID() || !k.UsesKey(m.KeyID) {
		return Taken{Message: m}, fmt.Errorf("%w: %s for %s", ErrNotForDevice, m.KeyID, m.DeviceID)
	}
	if k.Key(m.KeyID, m.NewVersion) != nil {
		return Taken{Message: m, Repeat: true}, nil
	}
	if floor := k.Floor(m.KeyID); m.Generation <= floor && (m.Generation > 0 || floor > 0) {
		return Taken{Message: m}, fmt.Errorf("%w: %s@%s generation %d, floor %d", ErrRollback, m.KeyID, m.NewVersion, m.Generation, floor)
	}
	wrap := k.Key(m.WrapKeyID, m.WrapKeyVersion)
	if wrap == nil {
		return Taken{Message: m}, fmt.Errorf("%w: %s@%s", ErrWrapUnknown, m.WrapKeyID, m.WrapKeyVersion)
	}
	dek, err := m.Open(wrap)
	if err != nil {
		return Taken{Message: m}, err
	}
	return Taken{Message: m, DEK: dek}, nil
}

// Outcome names what Take decided, as the published vectors spell it:
// installed, repeat, malformed, not_for_device, rollback,
// unknown_wrap_key, auth_failed.
func Outcome(t Taken, err error) string {
	switch {
	case err == nil && t.Repeat:
		return "repeat"
	case err == nil:
		return "installed"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrNotForDevice):
		return "not_for_device"
	case errors.Is(err, ErrRollback):
		return "rollback"
	case errors.Is(err, ErrWrapUnknown):
		return "unknown_wrap_key"
	case errors.Is(err, ErrAuth):
		return "auth_failed"
	}
	return "error"
}
