package wire

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/kms/local"
)

func TestOpenKMSLocal(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keys", "root.json")
	cfg := config.KMS{Provider: config.ProviderLocal, Local: config.LocalKMS{RootKeyFile: path}}

	_, err := OpenKMS(ctx, cfg, KMSOptions{})
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "dekctl root create") {
		t.Fatalf("missing root key file: %v", err)
	}
	k, err := OpenKMS(ctx, cfg, KMSOptions{RootsOnly: true})
	if err != nil || k.Provider != nil || k.Roots == nil {
		t.Fatalf("roots only: %+v, %v", k, err)
	}
	if _, err := local.Create(path, "root"); err != nil {
		t.Fatal(err)
	}
	k, err = OpenKMS(ctx, cfg, KMSOptions{})
	if err != nil || k.Provider == nil || k.Roots == nil {
		t.Fatalf("open: %+v, %v", k, err)
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKMS(ctx, config.KMS{Provider: "vault"}, KMSOptions{}); err == nil {
		t.Fatal("unknown provider accepted")
	}
}

func TestOpenRegistryAndAudit(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := OpenRegistry(ctx, config.Registry{Driver: config.DriverFile, Path: filepath.Join(dir, "var", "registry.json")}, RegistryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenRegistry(ctx, config.Registry{Driver: "etcd"}, RegistryOptions{}); err == nil {
		t.Fatal("unknown driver accepted")
	}
	aw, err := OpenAudit(ctx, filepath.Join(dir, "log", "audit.log"), "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := aw.Close(); err != nil {
		t.Fatal(err)
	}
}
