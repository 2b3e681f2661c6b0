package keyenv

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/testutil/vectors"
)

func TestImportVectors(t *testing.T) {
	dir := t.TempDir()
	v := vectors.Load(t)
	ImportVectors(t, dir, "audit.log", v)
	for _, name := range []string{"root-key.json", "registry.json", "audit.log"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	ctx := context.Background()
	s, err := filestore.Open(ctx, filepath.Join(dir, "registry.json"), filestore.WithoutFSNotify())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	es, err := s.List(ctx)
	if err != nil || len(es) == 0 {
		t.Fatalf("registry after the import: %d entries, %v", len(es), err)
	}
}

func TestOpenClock(t *testing.T) {
	past := time.Now().Add(-2 * time.Hour)
	e := Open(context.Background(), t, t.TempDir(), Options{Now: func() time.Time { return past }})
	cred, err := e.Ops.Provision(context.Background(), keyops.ProvisionRequest{DeviceID: "pump-1"})
	if err != nil {
		t.Fatal(err)
	}
	cred.Wipe()
	got, err := e.Store.Get(context.Background(), cred.KeyID, cred.KeyVersion)
	if err != nil {
		t.Fatal(err)
	}
	if !got.CreatedAt.Equal(past.UTC().Truncate(time.Second)) && got.CreatedAt.Sub(past).Abs() > time.Second {
		t.Fatalf("created at %v, want about %v", got.CreatedAt, past)
	}
	e.Close()
	e.Close() // twice is harmless
}
