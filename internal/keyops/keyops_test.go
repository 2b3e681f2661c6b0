package keyops

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/filestore"
)

type testEnv struct {
	dir       string
	kms       *local.Provider
	store     registry.Store
	aud       *audit.Writer
	auditPath string
	ops       *Ops
}

func newEnv(t *testing.T) *testEnv {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	p, err := local.Create(filepath.Join(dir, "root.json"), "test-root")
	if err != nil {
		t.Fatal(err)
	}
	st, err := filestore.Open(ctx, filepath.Join(dir, "registry.json"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return newEnvWith(t, dir, p, st)
}

func newEnvWith(t *testing.T, dir string, p *local.Provider, st registry.Store) *testEnv {
	t.Helper()
	ap := filepath.Join(dir, "audit.log")
	aw, err := audit.Open(context.Background(), ap, audit.WithActor("dekctl"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { aw.Close() })
	ops, err := New(Options{KMS: p, Roots: p, Registry: st, Audit: aw, Operator: "tester"})
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{dir: dir, kms: p, store: st, aud: aw, auditPath: ap, ops: ops}
}

// events reads the audit log back, after checking its chain.
func (e *testEnv) events(t *testing.T) []audit.Event {
	t.Helper()
	f, err := os.Open(e.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := audit.Verify(f); err != nil {
		t.Fatalf("audit chain: %v", err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		t.Fatal(err)
	}
	var out []audit.Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev audit.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func (e *testEnv) unwrap(t *testing.T, keyID, version string) []byte {
	t.Helper()
	ent, err := e.store.Get(context.Background(), keyID, version)
	if err != nil {
		t.Fatal(err)
	}
	key, err := e.kms.Unwrap(context.Background(), ent.Wrapped, kms.DEKAAD(ent.Ref()))
	if err != nil {
		t.Fatalf("unwrap %s: %v", ent.Ref(), err)
	}
	return key
}

func TestProvisionDevice(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	c1, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: "sensor-001"})
	if err != nil {
		t.Fatal(err)
	}
	if c1.KeyID != "device/sensor-001" || c1.KeyVersion != "v1" || len(c1.DEK) != 32 {
		t.Fatalf("credential %v", c1)
	}
	if !bytes.Equal(e.unwrap(t, "device/sensor-001", "v1"), c1.DEK) {
		t.Fatal("stored DEK differs from the credential's")
	}
	if s := fmt.Sprintf("%v %+v %s", c1, c1, c1); strings.Contains(s, hex.EncodeToString(c1.DEK)) {
		t.Fatal("credential printed its DEK")
	}
	c2, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: "sensor-001"})
	if err != nil {
		t.Fatal(err)
	}
	if c2.KeyVersion != "v2" || bytes.Equal(c1.DEK, c2.DEK) {
		t.Fatalf("second provision: %v", c2)
	}
	v1, _ := e.store.Get(ctx, "device/sensor-001", "v1")
	v2, _ := e.store.Get(ctx, "device/sensor-001", "v2")
	if v1.State != dek.StateDecryptOnly || v2.State != dek.StateActive {
		t.Fatalf("states v1=%s v2=%s", v1.State, v2.State)
	}
	// Credential file: new, 0600, the JSON the factory loads.
	path := filepath.Join(e.dir, "cred.json")
	if err := WriteCredential(path, nil, c2); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credential file mode: %v %v", fi.Mode(), err)
	}
	var got map[string]string
	data, _ := os.ReadFile(path)
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got["device_id"] != "sensor-001" || got["key_id"] != "device/sensor-001" || got["key_version"] != "v2" || got["dek_b64"] == "" {
		t.Fatalf("credential file %v", got)
	}
	if err := WriteCredential(path, nil, c2); err == nil {
		t.Fatal("an existing credential file was overwritten")
	}
	c1.Wipe()
	c2.Wipe()
	if !bytes.Equal(c2.DEK, make([]byte, 32)) {
		t.Fatal("Wipe left bytes")
	}
	evs := e.events(t)
	var acts []string
	for _, ev := range evs {
		acts = append(acts, string(ev.Action)+":"+ev.KeyVersion+":"+ev.Result)
		if ev.RootKeyID != "test-root" || !strings.Contains(ev.Detail, "operator=tester") {
			t.Errorf("event %+v", ev)
		}
	}
	if want := "provision:v1:ok provision:v2:ok rotate:v1:ok"; strings.Join(acts, " ") != want {
		t.Fatalf("audit %v, want %s", acts, want)
	}
}

func TestProvisionGroup(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	c1, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: "gw:ward-7.bed_12", Group: "icu"})
	if err != nil {
		t.Fatal(err)
	}
	c2, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: "sensor-002", Group: "icu"})
	if err != nil {
		t.Fatal(err)
	}
	if c1.KeyID != "group/icu" || c2.KeyID != "group/icu" || c1.KeyVersion != "v1" || c2.KeyVersion != "v1" || !bytes.Equal(c1.DEK, c2.DEK) {
		t.Fatalf("group credentials %v %v", c1, c2)
	}
	ent, err := e.store.Get(ctx, "group/icu", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(ent.Devices, ",") != "gw:ward-7.bed_12,sensor-002" {
		t.Fatalf("devices %v", ent.Devices)
	}
	// Again: no duplicate device, same key.
	if _, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: "sensor-002", Group: "icu"}); err != nil {
		t.Fatal(err)
	}
	ent, _ = e.store.Get(ctx, "group/icu", "v1")
	if len(ent.Devices) != 2 {
		t.Fatalf("devices %v", ent.Devices)
	}
	var exported int
	for _, ev := range e.events(t) {
		if ev.Action == audit.ActionUnwrap && strings.Contains(ev.Detail, "exported in a credential") {
			exported++
		}
	}
	if exported != 2 {
		t.Fatalf("%d credential exports audited, want 2", exported)
	}
}

func TestArgumentErrors(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	cases := []struct {
		name string
		run  func() error
		want error
	}{
		{"provision bad device", func() error { _, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: "a b"}); return err }, ErrInvalidArgument},
		{"provision empty device", func() error { _, err := e.ops.Provision(ctx, ProvisionRequest{}); return err }, ErrInvalidArgument},
		{"provision bad group", func() error {
			_, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: "d", Group: "a b"})
			return err
		}, ErrInvalidArgument},
		{"revoke nothing", func() error { _, err := e.ops.Revoke(ctx, Selector{}); return err }, ErrInvalidArgument},
		{"revoke both", func() error { _, err := e.ops.Revoke(ctx, Selector{DeviceID: "d", KeyID: "k"}); return err }, ErrInvalidArgument},
		{"revoke version alone", func() error { _, err := e.ops.Revoke(ctx, Selector{Version: "v1"}); return err }, ErrInvalidArgument},
		{"revoke bad version", func() error { _, err := e.ops.Revoke(ctx, Selector{KeyID: "k", Version: "v 1"}); return err }, ErrInvalidArgument},
		{"revoke missing", func() error { _, err := e.ops.Revoke(ctx, Selector{KeyID: "device/x", Version: "v1"}); return err }, ErrNotFound},
		{"shred missing device", func() error { _, err := e.ops.Shred(ctx, Selector{DeviceID: "nobody"}); return err }, ErrNotFound},
		{"rotate root name", func() error { _, err := e.ops.RootCreate(ctx, ""); return err }, ErrInvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestRevoke(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	for range 2 {
		if _, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: "d1"}); err != nil {
			t.Fatal(err)
		}
	}
	outs, err := e.ops.Revoke(ctx, Selector{KeyID: "device/d1", Version: "v1"})
	if err != nil || len(outs) != 1 || !outs[0].Changed || outs[0].Before != dek.StateDecryptOnly || outs[0].After != dek.StateRevoked {
		t.Fatalf("revoke: %+v %v", outs, err)
	}
	outs, err = e.ops.Revoke(ctx, Selector{DeviceID: "d1"})
	if err != nil || len(outs) != 2 || outs[0].Changed || !outs[1].Changed {
		t.Fatalf("revoke device: %+v %v", outs, err)
	}
	for _, v := range []string{"v1", "v2"} {
		ent, _ := e.store.Get(ctx, "device/d1", v)
		if ent.State != dek.StateRevoked || ent.Wrapped.IsZero() {
			t.Fatalf("%s: %s", v, ent.State)
		}
	}
}

func TestShred(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := newEnv(t)
	if _, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	before, _ := e.store.Get(ctx, "device/d1", "v1")
	sum := sha256.Sum256(before.Wrapped.Ciphertext)
	changes, err := e.store.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	outs, err := e.ops.Shred(ctx, Selector{KeyID: "device/d1"})
	if err != nil || len(outs) != 1 || !outs[0].Changed || outs[0].WrappedSHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("shred: %+v %v", outs, err)
	}
	after, _ := e.store.Get(ctx, "device/d1", "v1")
	if after.State != dek.StateShredded || !after.Wrapped.IsZero() || after.Wrapped.RootKeyID != "test-root" {
		t.Fatalf("tombstone %+v", after)
	}
	// The daemons' caches learn of it through the change feed.
	select {
	case ch := <-changes:
		if ch.KeyID != "device/d1" || ch.State != dek.StateShredded {
			t.Fatalf("change %+v", ch)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no change event for the shred")
	}
	// Shredding again changes nothing; revoking a tombstone neither.
	outs, err = e.ops.Shred(ctx, Selector{DeviceID: "d1"})
	if err != nil || outs[0].Changed {
		t.Fatalf("second shred: %+v %v", outs, err)
	}
	if outs, err := e.ops.Revoke(ctx, Selector{DeviceID: "d1"}); err != nil || outs[0].Changed {
		t.Fatalf("revoke tombstone: %+v %v", outs, err)
	}
	var shredEv *audit.Event
	evs := e.events(t)
	for i := range evs {
		if evs[i].Action == audit.ActionShred {
			if shredEv != nil {
				t.Fatal("two shred events")
			}
			shredEv = &evs[i]
		}
	}
	if shredEv == nil || shredEv.KeyID != "device/d1" || shredEv.KeyVersion != "v1" || shredEv.RootKeyID != "test-root" ||
		shredEv.RootKeyVersion != "1" || !strings.Contains(shredEv.Detail, "wrapped_sha256="+hex.EncodeToString(sum[:])) || shredEv.Time.IsZero() {
		t.Fatalf("shred event %+v", shredEv)
	}
	// A new provision never reuses the shredded name.
	c, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: "d1"})
	if err != nil || c.KeyVersion != "v2" {
		t.Fatalf("provision after shred: %v %v", c, err)
	}
}

// flakyKMS fails Rewrap for the refs in fail.
type flakyKMS struct {
	kms.Provider
	mu   sync.Mutex
	fail map[string]bool
}

func (f *flakyKMS) Rewrap(ctx context.Context, w kms.Wrapped, aad []string) (kms.Wrapped, error) {
	f.mu.Lock()
	bad := f.fail[aad[1]+"@"+aad[2]]
	f.mu.Unlock()
	if bad {
		return kms.Wrapped{}, fmt.Errorf("injected: %w", kms.ErrTransient)
	}
	return f.Provider.Rewrap(ctx, w, aad)
}

func TestRewrap(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	creds := map[string][]byte{}
	for _, d := range []string{"a", "b", "c", "d", "e"} {
		c, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: d})
		if err != nil {
			t.Fatal(err)
		}
		creds[c.KeyID] = c.DEK
	}
	if _, err := e.ops.Shred(ctx, Selector{DeviceID: "e"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ops.RootRotate(ctx, ""); err != nil {
		t.Fatal(err)
	}
	flaky := &flakyKMS{Provider: e.kms, fail: map[string]bool{"device/b@v1": true}}
	ops, err := New(Options{KMS: flaky, Roots: e.kms, Registry: e.store, Audit: e.aud, RewrapWorkers: 2})
	if err != nil {
		t.Fatal(err)
	}
	var calls []string
	res, err := ops.Rewrap(ctx, func(done, total, failed int) { calls = append(calls, fmt.Sprintf("%d/%d/%d", done, total, failed)) })
	if err == nil || res.Todo != 4 || res.Rewrapped != 3 || len(res.Failures) != 1 || res.Failures[0].Ref.KeyID != "device/b" {
		t.Fatalf("first rewrap: %+v %v", res, err)
	}
	if calls[0] != "0/4/0" || calls[len(calls)-1] != "4/4/1" {
		t.Fatalf("progress %v", calls)
	}
	// Resumed: only the failed one is left.
	flaky.mu.Lock()
	flaky.fail = nil
	flaky.mu.Unlock()
	res, err = ops.Rewrap(ctx, nil)
	if err != nil || res.Todo != 1 || res.Rewrapped != 1 || res.Entries != 4 {
		t.Fatalf("second rewrap: %+v %v", res, err)
	}
	res, err = ops.Rewrap(ctx, nil)
	if err != nil || res.Todo != 0 {
		t.Fatalf("third rewrap: %+v %v", res, err)
	}
	for keyID, want := range creds {
		if keyID == "device/e" {
			continue
		}
		ent, _ := e.store.Get(ctx, keyID, "v1")
		if ent.Wrapped.RootKeyVersion != "2" {
			t.Fatalf("%s still under root version %s", keyID, ent.Wrapped.RootKeyVersion)
		}
		if !bytes.Equal(e.unwrap(t, keyID, "v1"), want) {
			t.Fatalf("%s: DEK changed by rewrap", keyID)
		}
	}
	var ok, failed int
	for _, ev := range e.events(t) {
		if ev.Action == audit.ActionRewrap {
			if ev.Result == audit.ResultOK {
				ok++
			} else {
				failed++
			}
		}
	}
	if ok != 4 || failed != 1 {
		t.Fatalf("rewrap events ok=%d failed=%d", ok, failed)
	}
}

func TestRootOps(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "root.json")
	m := local.NewManager(path)
	aw, err := audit.Open(ctx, filepath.Join(dir, "audit.log"), audit.WithActor("dekctl"))
	if err != nil {
		t.Fatal(err)
	}
	defer aw.Close()
	ops, err := New(Options{Roots: m, Audit: aw})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ops.RootRotate(ctx, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rotate with no root: %v", err)
	}
	rk, err := ops.RootCreate(ctx, "main")
	if err != nil || rk.ID != "main" || len(rk.Versions) != 1 {
		t.Fatalf("create: %+v %v", rk, err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("root key file mode %v", fi.Mode())
	}
	if _, err := ops.RootCreate(ctx, "main"); err == nil {
		t.Fatal("second create over the same file succeeded")
	}
	rk, err = ops.RootRotate(ctx, "main")
	if err != nil || len(rk.Versions) != 2 {
		t.Fatalf("rotate: %+v %v", rk, err)
	}
	roots, err := ops.RootList(ctx)
	if err != nil || len(roots) != 1 || len(roots[0].Versions) != 2 {
		t.Fatalf("list: %+v %v", roots, err)
	}
}

func TestListOutput(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	if _, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: "d2", Group: "g"}); err != nil {
		t.Fatal(err)
	}
	es, err := e.ops.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var tb bytes.Buffer
	if err := WriteTable(&tb, es); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(tb.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "KEY ID") || !strings.Contains(lines[1], "device/d1") ||
		!strings.Contains(lines[1], "test-root/1") || !strings.Contains(lines[2], "group/g") {
		t.Fatalf("table:\n%s", tb.String())
	}
	var js bytes.Buffer
	if err := WriteJSON(&js, es); err != nil {
		t.Fatal(err)
	}
	var infos []KeyInfo
	if err := json.Unmarshal(js.Bytes(), &infos); err != nil || len(infos) != 2 || infos[1].Devices[0] != "d2" {
		t.Fatalf("json %s %v", js.String(), err)
	}
	if strings.Contains(js.String(), "ciphertext") {
		t.Fatal("list --json shows ciphertext")
	}
}
