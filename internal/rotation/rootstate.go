package rotation

import (
	"context"
	"errors"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// RootClock names the root key version that wraps new DEKs and when it
// was made: kms.RootClock, declared there with the other provider
// capabilities (kms.CapabilitiesOf finds it).
type RootClock = kms.RootClock

// KMSRootState is the RootState that keeps no state of its own: the last
// root rotation is when the KMS made the root key's newest version, and a
// rewrap is pending while any DEK in the registry is still wrapped under
// an older version of that root key. So a root rotation made by hand
// (`dekctl root rotate` without `dekctl rewrap`) is noticed and finished
// too, and nothing can drift out of step with the KMS. Save does nothing.
type KMSRootState struct {
	Clock    RootClock
	Registry interface {
		List(ctx context.Context) ([]registry.Entry, error)
	}
}

// Load implements RootState.
func (s *KMSRootState) Load(ctx context.Context) (time.Time, bool, error) {
	if s.Registry == nil {
		return time.Time{}, false, errors.New("rotation: KMSRootState.Registry is required")
	}
	es, err := s.Registry.List(ctx)
	if err != nil {
		return time.Time{}, false, err
	}
	return s.LoadFrom(ctx, es)
}

// LoadFrom is Load over a listing the caller already has.
func (s *KMSRootState) LoadFrom(ctx context.Context, es []registry.Entry) (time.Time, bool, error) {
	if s.Clock == nil {
		return time.Time{}, false, errors.New("rotation: KMSRootState.Clock is required")
	}
	id, ver, at, err := s.Clock.NewestRootVersion(ctx)
	if err != nil {
		return time.Time{}, false, err
	}
	return at, RewrapPending(es, id, ver), nil
}

// Save implements RootState: the KMS and the registry are the record.
func (s *KMSRootState) Save(context.Context, time.Time, bool) error { return nil }

// RewrapPending reports whether any live entry is wrapped under rootKeyID
// at a version other than newest.
func RewrapPending(es []registry.Entry, rootKeyID, newest string) bool {
	for _, e := range es {
		if e.State == dek.StateShredded || e.Wrapped.IsZero() {
			continue
		}
		if e.Wrapped.RootKeyID == rootKeyID && e.Wrapped.RootKeyVersion != newest {
			return true
		}
	}
	return false
}
