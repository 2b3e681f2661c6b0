package pseudonym_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/pseudonym"
	"github.com/decryptd/decryptd/internal/registry/filestore"
)

type recorder struct {
	mu  sync.Mutex
	evs []keycache.UnwrapEvent
}

func (r *recorder) Record(_ context.Context, ev keycache.UnwrapEvent) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
}

func (r *recorder) events() []keycache.UnwrapEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]keycache.UnwrapEvent(nil), r.evs...)
}

type env struct {
	dir string
	kms *local.Provider
	ops *keyops.Ops
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	p, err := local.Create(filepath.Join(dir, "root.json"), "test-root")
	if err != nil {
		t.Fatal(err)
	}
	st, err := filestore.Open(t.Context(), filepath.Join(dir, "registry.json"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	aw, err := audit.Open(context.Background(), filepath.Join(dir, "audit.log"), audit.WithActor("dekctl"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { aw.Close() })
	ops, err := keyops.New(keyops.Options{KMS: p, Roots: p, Registry: st, Audit: aw, Operator: "tester"})
	if err != nil {
		t.Fatal(err)
	}
	return &env{dir: dir, kms: p, ops: ops}
}

// replica opens the key as a separate daemon would: its own registry
// handle on the shared registry file, its own KMS handle.
func (e *env) replica(t *testing.T, name string) (*pseudonym.Key, *recorder, context.CancelFunc) {
	t.Helper()
	st, err := filestore.Open(t.Context(), filepath.Join(e.dir, "registry.json"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	kp, err := local.Open(filepath.Join(e.dir, "root.json"))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	k, err := pseudonym.Open(t.Context(), pseudonym.Options{Registry: st, KMS: kp, Audit: rec}, name)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = k.Run(ctx, 100*time.Millisecond) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	t.Cleanup(func() { k.Close() })
	return k, rec, stop
}

func token(t *testing.T, k *pseudonym.Key, v string) string {
	t.Helper()
	tok, err := k.Pseudonymize(t.Context(), []byte(v))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestSameAcrossReplicasNewAfterRotation(t *testing.T) {
	e := newEnv(t)
	if _, err := pseudonym.Open(t.Context(), pseudonym.Options{Registry: nil}, "x"); err == nil {
		t.Fatal("Open without registry succeeded")
	}
	v1, err := e.ops.RotatePseudonymKey(t.Context(), "analytics")
	if err != nil || v1.Version != "v1" || v1.KeyID != "pseudonym/analytics" {
		t.Fatalf("create: %+v %v", v1, err)
	}
	a, recA, _ := e.replica(t, "analytics")
	b, _, _ := e.replica(t, "analytics")
	ta, tb := token(t, a, "patient-4711"), token(t, b, "patient-4711")
	if ta != tb || !strings.HasPrefix(ta, "pn:v1:") || len(ta) != len("pn:v1:")+43 {
		t.Fatalf("replicas disagree or token malformed: %s vs %s", ta, tb)
	}
	if token(t, a, "patient-4712") == ta {
		t.Fatal("two values gave one token")
	}
	if strings.Contains(ta, "4711") {
		t.Fatal("token shows the value")
	}
	evs := recA.events()
	if len(evs) != 1 || evs[0].KeyID != "pseudonym/analytics" || evs[0].Version != "v1" || evs[0].Result != keycache.UnwrapOK ||
		evs[0].RootKeyID != "test-root" {
		t.Fatalf("audit events: %+v", evs)
	}

	v2, err := e.ops.RotatePseudonymKey(t.Context(), "analytics")
	if err != nil || v2.Version != "v2" {
		t.Fatalf("rotate: %+v %v", v2, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for a.Version() != "v2" || b.Version() != "v2" {
		if time.Now().After(deadline) {
			t.Fatalf("replicas did not move to v2: %s %s", a.Version(), b.Version())
		}
		time.Sleep(20 * time.Millisecond)
	}
	ra, rb := token(t, a, "patient-4711"), token(t, b, "patient-4711")
	if ra != rb || ra == ta || !strings.HasPrefix(ra, "pn:v2:") || ra[len("pn:v2:"):] == ta[len("pn:v1:"):] {
		t.Fatalf("after rotation: %s / %s (before %s)", ra, rb, ta)
	}
	// A replica started after the rotation agrees.
	c, _, _ := e.replica(t, "analytics")
	if token(t, c, "patient-4711") != ra {
		t.Fatal("a new replica disagrees after rotation")
	}
	if n := len(recA.events()); n != 2 {
		t.Fatalf("replica a audited %d unwraps, want 2 (one per load)", n)
	}
}

func TestNoActiveVersion(t *testing.T) {
	e := newEnv(t)
	st, err := filestore.Open(t.Context(), filepath.Join(e.dir, "registry.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = pseudonym.Open(t.Context(), pseudonym.Options{Registry: st, KMS: e.kms, Audit: &recorder{}}, "nothing")
	if !errors.Is(err, pseudonym.ErrUnavailable) || !strings.Contains(err.Error(), "dekctl pseudonym rotate nothing") {
		t.Fatalf("got %v", err)
	}
	if _, err := e.ops.RotatePseudonymKey(t.Context(), "bad name"); !errors.Is(err, keyops.ErrInvalidArgument) {
		t.Fatalf("bad name: %v", err)
	}
}
