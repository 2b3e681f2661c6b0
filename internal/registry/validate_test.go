package registry_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/registrytest"
)

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		s                 string
		keyID, ver, devID bool
	}{
		{"v1", true, true, true},
		{"device/sensor-001", true, false, false},
		{"a:b", true, false, true},
		{"A.b_c-9", true, true, true},
		{"", false, false, false},
		{"a b", false, false, false},
		{"é", false, false, false},
		{strings.Repeat("x", 32), true, true, true},
		{strings.Repeat("x", 33), true, false, true},
		{strings.Repeat("x", 128), true, false, true},
		{strings.Repeat("x", 129), true, false, false},
		{strings.Repeat("x", 200), true, false, false},
		{strings.Repeat("x", 201), false, false, false},
	} {
		t.Run(tc.s, func(t *testing.T) {
			if got := registry.ValidKeyID(tc.s); got != tc.keyID {
				t.Errorf("ValidKeyID = %v", got)
			}
			if got := registry.ValidKeyVersion(tc.s); got != tc.ver {
				t.Errorf("ValidKeyVersion = %v", got)
			}
			if got := registry.ValidDeviceID(tc.s); got != tc.devID {
				t.Errorf("ValidDeviceID = %v", got)
			}
		})
	}
}

func TestApplyUpdate(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	e, err := registry.PrepareCreate(registrytest.NewEntry("k", "v1"), t0)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("clock step back keeps UpdatedAt monotonic", func(t *testing.T) {
		next, changed, err := registry.ApplyUpdate(e, t0.Add(-time.Hour), func(u *registry.Entry) error {
			u.State = dek.StateRevoked
			return nil
		})
		if err != nil || !changed {
			t.Fatal(changed, err)
		}
		if !next.UpdatedAt.Equal(t0) || !next.StateChangedAt.Equal(t0) {
			t.Fatalf("timestamps moved backwards: %+v", next)
		}
	})
	t.Run("times normalised to UTC microseconds", func(t *testing.T) {
		local := time.Date(2025, 1, 1, 1, 2, 3, 123456789, time.FixedZone("X", 3600))
		got, err := registry.PrepareCreate(registrytest.NewEntry("k", "v1"), local)
		if err != nil {
			t.Fatal(err)
		}
		if got.CreatedAt.Location() != time.UTC || got.CreatedAt.Nanosecond() != 123456000 {
			t.Fatalf("CreatedAt %v", got.CreatedAt)
		}
	})
	t.Run("validation error names no key material", func(t *testing.T) {
		bad := registrytest.NewEntry("k", "v1")
		bad.State = dek.StateShredded
		err := bad.Validate()
		if !errors.Is(err, registry.ErrInvalid) {
			t.Fatal(err)
		}
		if strings.Contains(err.Error(), string(bad.Wrapped.Ciphertext)) {
			t.Fatal("error quotes the ciphertext")
		}
	})
}
