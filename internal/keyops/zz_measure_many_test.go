//go:build measure

package keyops_test

import (
	"testing"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/fleet"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry"
)

func manyProvisioner(t *testing.T, p *local.Provider, st registry.Store, aw *audit.Writer) fleet.KeyProvisioner {
	t.Fatal("not yet")
	return nil
}
