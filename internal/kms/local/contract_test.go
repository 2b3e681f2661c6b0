package local_test

import (
	"path/filepath"
	"testing"

	"github.com/decryptd/decryptd/internal/kms/kmstest"
	"github.com/decryptd/decryptd/internal/kms/local"
)

// TestProviderContract runs the kms contract against a fresh root key file
// per subtest. A local root key cannot be revoked and has no outage: those
// cases are the Key Protect provider's.
func TestProviderContract(t *testing.T) {
	kmstest.RunProviderContract(t, func(t *testing.T) kmstest.Harness {
		p, err := local.Create(filepath.Join(t.TempDir(), "root.json"), "contract-root")
		if err != nil {
			t.Fatal(err)
		}
		return kmstest.Harness{Provider: p}
	})
}
