package filestore

import (
	"path/filepath"
	"testing"

	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/registrytest"
)

func TestContract(t *testing.T) {
	registrytest.RunStoreContract(t, func(t *testing.T) (registry.Store, func() registry.Store) {
		path := filepath.Join(t.TempDir(), "registry.json")
		open := func() registry.Store {
			s, err := Open(t.Context(), path)
			if err != nil {
				t.Fatalf("open %s: %v", path, err)
			}
			return s
		}
		return open(), open
	})
}

// The poll alone must keep the 2 s promise where inotify is unavailable.
func TestContractPollOnly(t *testing.T) {
	registrytest.RunStoreContract(t, func(t *testing.T) (registry.Store, func() registry.Store) {
		path := filepath.Join(t.TempDir(), "registry.json")
		open := func() registry.Store {
			s, err := Open(t.Context(), path, WithoutFSNotify())
			if err != nil {
				t.Fatalf("open %s: %v", path, err)
			}
			return s
		}
		return open(), open
	})
}
