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

// withoutBulk hides CreateMany, so that RunStoreContract skips the bulk
// contract: TestContract runs it, and it has nothing specific to polling
// that would pay for another set of 10,000-entry rewrites under -race.
type withoutBulk struct{ registry.Store }

// The poll alone must keep the 2 s promise where inotify is unavailable.
func TestContractPollOnly(t *testing.T) {
	registrytest.RunStoreContract(t, func(t *testing.T) (registry.Store, func() registry.Store) {
		path := filepath.Join(t.TempDir(), "registry.json")
		open := func() registry.Store {
			s, err := Open(t.Context(), path, WithoutFSNotify())
			if err != nil {
				t.Fatalf("open %s: %v", path, err)
			}
			return withoutBulk{s}
		}
		return open(), open
	})
}

func openBench(b *testing.B) registry.Store {
	s, err := Open(b.Context(), filepath.Join(b.TempDir(), "registry.json"))
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkCreateMany10k: 10,000 entries in one CreateMany (one rewrite of
// the file); compare its ns/entry with BenchmarkCreateEach1k's.
func BenchmarkCreateMany10k(b *testing.B) { registrytest.BenchmarkCreateMany(b, openBench) }

// BenchmarkCreateEach1k: the baseline, 1,000 entries one Create at a time.
func BenchmarkCreateEach1k(b *testing.B) { registrytest.BenchmarkCreateEach(b, openBench, 1000) }
