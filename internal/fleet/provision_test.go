package fleet

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/registrytest"
)

// checkCreds checks that every credential's DEK is what the registry holds
// wrapped for it, and that the registry lets the device use it.
func checkCreds(t *testing.T, env *keyEnv, creds []keyops.Credential) {
	t.Helper()
	ctx := context.Background()
	unwrapped := map[dek.Ref][]byte{}
	for _, c := range creds {
		ref := dek.Ref{KeyID: c.KeyID, Version: c.KeyVersion}
		e, err := env.reg.Get(ctx, c.KeyID, c.KeyVersion)
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		if e.State != dek.StateActive || !e.AllowsDevice(c.DeviceID) {
			t.Fatalf("%s: entry %s state %s devices %d: not active for the device", c, e.Ref(), e.State, len(e.Devices))
		}
		key, ok := unwrapped[ref]
		if !ok {
			key, err = env.kms.Unwrap(ctx, e.Wrapped, kms.DEKAAD(ref))
			if err != nil {
				t.Fatalf("%s: unwrap: %v", c, err)
			}
			unwrapped[ref] = key
		}
		if !bytes.Equal(key, c.DEK) {
			t.Fatalf("%s: credential DEK differs from the registry's", c)
		}
	}
}

func auditLines(t *testing.T, env *keyEnv) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(env.dir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

func TestBulkProvision(t *testing.T) {
	tests := []struct {
		name      string
		n         int
		groupSize int
		wantKeys  int
	}{
		{"device keys", 60, 0, 60},
		{"group keys", 200, 50, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newKeyEnv(t)
			ctx := context.Background()
			creds, err := Provision(ctx, tt.n, env.bulk(), ProvisionOptions{GroupSize: tt.groupSize})
			if err != nil {
				t.Fatal(err)
			}
			if len(creds) != tt.n {
				t.Fatalf("%d credentials, want %d", len(creds), tt.n)
			}
			checkCreds(t, env, creds)
			es, err := env.reg.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(es) != tt.wantKeys {
				t.Fatalf("%d registry entries, want %d", len(es), tt.wantKeys)
			}
			if lines := auditLines(t, env); len(lines) != tt.wantKeys {
				t.Fatalf("%d audit events, want one per key version (%d)", len(lines), tt.wantKeys)
			}
			f, err := NewFleet(creds, "")
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range creds {
				if len(bytes.Trim(c.DEK, "\x00")) != 0 {
					t.Fatal("NewFleet left a DEK unwiped")
				}
			}
			if f.Keys() != tt.wantKeys || f.Len() != tt.n {
				t.Fatalf("fleet of %d devices, %d keys; want %d, %d", f.Len(), f.Keys(), tt.n, tt.wantKeys)
			}
			// What the fleet seals, the registry's keys open.
			d, err := decrypt.New(&registryResolver{reg: env.reg, kms: env.kms}, decrypt.Options{})
			if err != nil {
				t.Fatal(err)
			}
			g, _ := NewGenerator(f.Devices(), DefaultMix(), 1, nil)
			for i := 0; i < 20; i++ {
				m, err := g.Next(f.Device(i*7%f.Len()), time.Now().Unix())
				if err != nil {
					t.Fatal(err)
				}
				if _, err := d.Open(ctx, decrypt.Message{Topic: m.Topic, Payload: m.Payload}); err != nil {
					t.Fatalf("open %s: %v", m.Device.ID, err)
				}
			}
		})
	}
}

// TestBulkReprovision: provisioning again makes v2 and demotes v1, and a
// group's devices join its active version, as dekctl provision does.
func TestBulkReprovision(t *testing.T) {
	env := newKeyEnv(t)
	ctx := context.Background()
	b := env.bulk()
	if _, err := Provision(ctx, 3, b, ProvisionOptions{}); err != nil {
		t.Fatal(err)
	}
	creds, err := Provision(ctx, 3, b, ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range creds {
		if c.KeyVersion != "v2" {
			t.Fatalf("%s: want v2", c)
		}
		old, err := env.reg.Get(ctx, c.KeyID, "v1")
		if err != nil || old.State != dek.StateDecryptOnly {
			t.Fatalf("%s v1: state %s (%v), want decrypt_only", c.KeyID, old.State, err)
		}
	}
	checkCreds(t, env, creds)

	// Group: 2 devices create it, 2 more join it.
	g1, err := Provision(ctx, 2, b, ProvisionOptions{Prefix: "g-", GroupSize: 10})
	if err != nil {
		t.Fatal(err)
	}
	g2, err := Provision(ctx, 2, b, ProvisionOptions{Prefix: "g-", First: 2, GroupSize: 10})
	if err != nil {
		t.Fatal(err)
	}
	if g1[0].KeyID != "group/g-group-0" || g2[0].KeyID != g1[0].KeyID || g2[0].KeyVersion != "v1" {
		t.Fatalf("group credentials %s, %s", g1[0], g2[0])
	}
	if !bytes.Equal(g1[0].DEK, g2[1].DEK) {
		t.Fatal("joining devices got another DEK than the group's")
	}
	checkCreds(t, env, append(g1, g2...))
	e, _ := env.reg.Get(ctx, "group/g-group-0", "v1")
	if len(e.Devices) != 4 {
		t.Fatalf("group devices %v, want 4", e.Devices)
	}
}

// TestProvisionThroughKeyops: the per-device path through keyops (the code
// of dekctl provision) gives credentials the fleet can use.
func TestProvisionThroughKeyops(t *testing.T) {
	env := newKeyEnv(t)
	ops, err := keyops.New(keyops.Options{KMS: env.kms, Registry: env.reg, Audit: env.audit})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var progress []int
	creds, err := Provision(context.Background(), 12, ops, ProvisionOptions{Workers: 4, Progress: func(done, total int) {
		mu.Lock()
		progress = append(progress, done)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	checkCreds(t, env, creds)
	if len(progress) == 0 || progress[len(progress)-1] != 12 {
		t.Fatalf("progress %v, want it to end at 12", progress)
	}
	if _, err := NewFleet(creds, "bedside"); err != nil {
		t.Fatal(err)
	}
}

func TestCredentialsFile(t *testing.T) {
	creds := []keyops.Credential{
		{DeviceID: "sim-000000", KeyID: "device/sim-000000", KeyVersion: "v1", DEK: bytes.Repeat([]byte{1}, 32)},
		{DeviceID: "sim-000001", KeyID: "group/icu", KeyVersion: "v3", DEK: bytes.Repeat([]byte{2}, 32)},
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "fleet.jsonl")
	if err := WriteCredentials(path, creds); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	if err := WriteCredentials(path, creds); err == nil {
		t.Fatal("WriteCredentials overwrote an existing file")
	}
	got, err := LoadCredentials(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1].KeyID != "group/icu" || !bytes.Equal(got[1].DEK, creds[1].DEK) {
		t.Fatalf("loaded %v", got)
	}

	// A directory of dekctl credential files.
	cdir := filepath.Join(dir, "creds")
	if err := os.Mkdir(cdir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, c := range creds {
		if err := keyops.WriteCredential(filepath.Join(cdir, c.DeviceID+".json"), nil, c); err != nil {
			t.Fatal(err)
		}
	}
	got, err = LoadCredentials(cdir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].DeviceID != "sim-000000" {
		t.Fatalf("loaded %v", got)
	}

	t.Run("refuses readable file", func(t *testing.T) {
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadCredentials(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("err %v, want a mode complaint", err)
		}
	})
	t.Run("errors never quote a DEK", func(t *testing.T) {
		bad := filepath.Join(dir, "bad.jsonl")
		secret := `{"device_id":"d","key_id":"device/d","key_version":"v1","dek_b64":"c2VjcmV0c2VjcmV0c2VjcmV0","extra":1}`
		if err := os.WriteFile(bad, []byte(secret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadCredentials(bad)
		if err == nil || strings.Contains(err.Error(), "c2Vj") {
			t.Fatalf("err %v", err)
		}
	})
}

func FuzzCredentialLines(f *testing.F) {
	f.Add([]byte(`{"device_id":"sim-1","key_id":"device/sim-1","key_version":"v1","dek_b64":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}` + "\n"))
	f.Add([]byte("{}\n\n[]"))
	f.Add([]byte(`{"device_id":"sim-1","dek_b64":"AQ=="}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		creds, err := readCredentialLines(bytes.NewReader(data), "fuzz")
		if err != nil {
			return
		}
		for _, c := range creds {
			if len(c.DEK) != keyops.DEKSize || !registry.ValidDeviceID(c.DeviceID) || !registry.ValidKeyID(c.KeyID) || !registry.ValidKeyVersion(c.KeyVersion) {
				t.Fatalf("accepted an invalid credential %s", c)
			}
		}
		if _, err := NewFleet(creds, ""); err != nil && !strings.Contains(err.Error(), "listed twice") {
			t.Fatalf("NewFleet refused parsed credentials: %v", err)
		}
	})
}

type countAuditor struct {
	mu sync.Mutex
	n  int
}

func (a *countAuditor) Append(_ context.Context, e audit.Event) (audit.Event, error) {
	a.mu.Lock()
	a.n++
	a.mu.Unlock()
	return e, nil
}

// TestProvision100k: 100,000 devices provision in reasonable time, with
// keys of their own into a registry with a bulk path (CreateMany), and with
// group keys of 10,000 devices into the real file registry.
func TestProvision100k(t *testing.T) {
	const n = 100_000
	tests := []struct {
		name      string
		groupSize int
		reg       func(env *keyEnv) Registry
		wantKeys  int
	}{
		{"device keys, bulk registry", 0, func(*keyEnv) Registry { return &registrytest.BulkMem{} }, n},
		{"group keys, file registry", 10_000, func(env *keyEnv) Registry { return env.reg }, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newKeyEnv(t)
			aud := &countAuditor{}
			bulk := &Bulk{KMS: env.kms, Registry: tt.reg(env), Audit: aud}
			creds, err := Provision(context.Background(), n, bulk, ProvisionOptions{GroupSize: tt.groupSize})
			if err != nil {
				t.Fatal(err)
			}
			f, err := NewFleet(creds, "")
			if err != nil {
				t.Fatal(err)
			}
			if f.Len() != n || f.Keys() != tt.wantKeys || aud.n != tt.wantKeys {
				t.Fatalf("%d devices, %d keys, %d audit events; want %d, %d, %d", f.Len(), f.Keys(), aud.n, n, tt.wantKeys, tt.wantKeys)
			}
			if f.Device(n-1).ID != "sim-099999" {
				t.Fatalf("last device %s", f.Device(n-1).ID)
			}
		})
	}
}

// BenchmarkBulkProvision100k: 100,000 device keys (random DEK, local KMS
// wrap, one CreateMany, one audit event each to a counting auditor).
func BenchmarkBulkProvision100k(b *testing.B) {
	env := newKeyEnv(b)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		bulk := &Bulk{KMS: env.kms, Registry: &registrytest.BulkMem{}, Audit: &countAuditor{}}
		creds, err := Provision(context.Background(), 100_000, bulk, ProvisionOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := NewFleet(creds, ""); err != nil {
			b.Fatal(err)
		}
	}
}
