package keyops

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
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
	"github.com/decryptd/decryptd/internal/registry/pgstore"
	"github.com/decryptd/decryptd/internal/registry/registrytest"
	"github.com/decryptd/decryptd/internal/testutil/pgtest"
)

// eventLog collects events in memory (an Auditor without AppendMany).
type eventLog struct {
	mu  sync.Mutex
	evs []audit.Event
}

func (l *eventLog) Append(_ context.Context, e audit.Event) (audit.Event, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, e)
	return e, nil
}

func newLocalKMS(t testing.TB) *local.Provider {
	t.Helper()
	p, err := local.Create(filepath.Join(t.TempDir(), "root.json"), "test-root")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// snapshot renders a registry's outcome: every version's state and devices.
func snapshot(t *testing.T, r Registry) map[string]string {
	t.Helper()
	es, err := r.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string, len(es))
	for _, e := range es {
		out[e.Ref().String()] = string(e.State) + " [" + strings.Join(e.Devices, ",") + "]"
	}
	return out
}

// seed gives a registry the same starting point for every path: devices
// provisioned once and twice, a group with an active version and one whose
// only version was revoked, and an imported, non-vN version.
func seed(t *testing.T, ops *Ops, r Registry) {
	t.Helper()
	ctx := context.Background()
	for i := range 40 {
		for range 1 + i%2 {
			if _, err := ops.Provision(ctx, ProvisionRequest{DeviceID: fmt.Sprintf("dev-%04d", i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, d := range []string{"dev-0500", "dev-0501"} {
		if _, err := ops.Provision(ctx, ProvisionRequest{DeviceID: d, Group: "icu"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ops.Provision(ctx, ProvisionRequest{DeviceID: "dev-0600", Group: "old"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ops.Revoke(ctx, Selector{KeyID: "group/old", Version: "v1"}); err != nil {
		t.Fatal(err)
	}
	imp := registry.Entry{KeyID: "device/dev-0041", Version: "2026-q4", State: dek.StateActive, CreatedAt: time.Now()}
	key := bytes.Repeat([]byte{7}, DEKSize)
	w, err := ops.o.KMS.Wrap(ctx, key, kms.DEKAAD(imp.Ref()))
	if err != nil {
		t.Fatal(err)
	}
	imp.Wrapped = w
	if err := r.Create(ctx, imp); err != nil {
		t.Fatal(err)
	}
}

// requests1000: device keys (new, provisioned before, provisioned twice,
// with an imported version), members of an existing group (some already
// listed), of a group whose only version is revoked, and of new groups.
func requests1000() []ProvisionRequest {
	reqs := make([]ProvisionRequest, 0, 1000)
	for i := range 1000 {
		r := ProvisionRequest{DeviceID: fmt.Sprintf("dev-%04d", i)}
		switch {
		case i >= 500 && i < 560:
			r.Group = "icu"
		case i >= 600 && i < 620:
			r.Group = "old"
		case i >= 700 && i < 850:
			r.Group = fmt.Sprintf("ward-%d", i%3)
		}
		reqs = append(reqs, r)
	}
	return reqs
}

func newOps(t testing.TB, p kms.Provider, r Registry, a Auditor) *Ops {
	t.Helper()
	ops, err := New(Options{KMS: p, Registry: r, Audit: a, Operator: "tester", ProvisionWorkers: 8})
	if err != nil {
		t.Fatal(err)
	}
	return ops
}

// checkCredentials: every credential names an active version that lets the
// device in and whose wrapped DEK is the credential's.
func checkCredentials(t *testing.T, p kms.Provider, r Registry, reqs []ProvisionRequest, creds []Credential) {
	t.Helper()
	ctx := context.Background()
	if len(creds) != len(reqs) {
		t.Fatalf("%d credentials for %d requests", len(creds), len(reqs))
	}
	for i, c := range creds {
		if c.DeviceID != reqs[i].DeviceID {
			t.Fatalf("credential %d is %s's, want %s's", i, c.DeviceID, reqs[i].DeviceID)
		}
		e, err := r.Get(ctx, c.KeyID, c.KeyVersion)
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		if e.State != dek.StateActive || !e.AllowsDevice(c.DeviceID) {
			t.Fatalf("%s: %s is %s with devices %v", c, e.Ref(), e.State, e.Devices)
		}
		key, err := p.Unwrap(ctx, e.Wrapped, kms.DEKAAD(e.Ref()))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(key, c.DEK) {
			t.Fatalf("%s: DEK differs from the registry's", c)
		}
	}
}

// TestProvisionManyEqualsProvision: 1,000 devices through ProvisionMany end
// in the registry exactly as 1,000 Provision calls leave it (versions,
// states, group members in order), with a bulk registry and without one.
// (In memory: 1,000 Provision calls against the file registry under -race
// would take minutes. TestProvisionManyStores runs the real stores.)
func TestProvisionManyEqualsProvision(t *testing.T) {
	ctx := context.Background()
	p := newLocalKMS(t)
	reqs := requests1000()

	single := &registrytest.Mem{}
	singleOps := newOps(t, p, single, &eventLog{})
	seed(t, singleOps, single)
	singleCreds := make([]Credential, len(reqs))
	for i, r := range reqs {
		c, err := singleOps.Provision(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		singleCreds[i] = c
	}
	want := snapshot(t, single)

	for _, tc := range []struct {
		name string
		reg  Registry
	}{
		{"bulk registry", &registrytest.BulkMem{}},
		{"registry without CreateMany", &registrytest.Mem{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			aw, err := audit.Open(ctx, filepath.Join(dir, "audit.jsonl"))
			if err != nil {
				t.Fatal(err)
			}
			defer aw.Close()
			ops := newOps(t, p, tc.reg, aw)
			seed(t, ops, tc.reg)
			seeded := aw.Head().Seq
			creds, err := ops.ProvisionMany(ctx, reqs, nil)
			if err != nil {
				t.Fatal(err)
			}
			got := snapshot(t, tc.reg)
			for ref, w := range want {
				if got[ref] != w {
					t.Errorf("%s: %q, want %q (as single Provision calls leave it)", ref, got[ref], w)
				}
			}
			for ref, g := range got {
				if _, ok := want[ref]; !ok {
					t.Errorf("%s (%s): single Provision calls make no such version", ref, g)
				}
			}
			for i, c := range creds {
				if sc := singleCreds[i]; c.KeyID != sc.KeyID || c.KeyVersion != sc.KeyVersion {
					t.Fatalf("%s: credential for %s@%s, single Provision gives %s@%s", c.DeviceID, c.KeyID, c.KeyVersion, sc.KeyID, sc.KeyVersion)
				}
			}
			checkCredentials(t, p, tc.reg, reqs, creds)

			// One event per key version touched, and a whole chain.
			evs := readEvents(t, filepath.Join(dir, "audit.jsonl"))[seeded:]
			count := map[audit.Action]int{}
			for _, ev := range evs {
				count[ev.Action]++
				if ev.Result != audit.ResultOK || !strings.HasSuffix(ev.Detail, "operator=tester") {
					t.Fatalf("event %+v", ev)
				}
			}
			// 1000 requests: 60 join icu, 20 make group/old v2, 150 make
			// ward-0..2, the other 770 make device versions; 40 seeded
			// devices had an active version (demoted), dev-0041 also its
			// imported one.
			wantCount := map[audit.Action]int{audit.ActionProvision: 770 + 1 + 3, audit.ActionRotate: 41, audit.ActionDevices: 1, audit.ActionUnwrap: 1}
			if !maps.Equal(count, wantCount) {
				t.Fatalf("audit events %v, want %v", count, wantCount)
			}
			if bm, ok := tc.reg.(*registrytest.BulkMem); ok && (bm.CreateManyCalls != 1 || bm.UpdateManyCalls != 1) {
				t.Fatalf("%d CreateMany and %d UpdateMany calls, want one each", bm.CreateManyCalls, bm.UpdateManyCalls)
			}
		})
	}
}

func readEvents(t *testing.T, path string) []audit.Event {
	t.Helper()
	e := &testEnv{auditPath: path}
	return e.events(t)
}

// A batch of one records what Provision records.
func TestProvisionManyOneLikeProvision(t *testing.T) {
	ctx := context.Background()
	p := newLocalKMS(t)
	strip := func(evs []audit.Event) []string {
		var out []string
		for _, ev := range evs {
			out = append(out, fmt.Sprintf("%s %s@%s root=%s/%s %s %q", ev.Action, ev.KeyID, ev.KeyVersion, ev.RootKeyID, ev.RootKeyVersion, ev.Result, ev.Detail))
		}
		return out
	}
	steps := []ProvisionRequest{{DeviceID: "d1"}, {DeviceID: "d1"}, {DeviceID: "g1", Group: "icu"}, {DeviceID: "g2", Group: "icu"}, {DeviceID: "g2", Group: "icu"}}
	var logs [2]*eventLog
	for k := range logs {
		logs[k] = &eventLog{}
		ops := newOps(t, p, &registrytest.BulkMem{}, logs[k])
		for _, r := range steps {
			var err error
			if k == 0 {
				_, err = ops.Provision(ctx, r)
			} else {
				_, err = ops.ProvisionMany(ctx, []ProvisionRequest{r}, nil)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if a, b := strip(logs[0].evs), strip(logs[1].evs); !slices.Equal(a, b) {
		t.Fatalf("audit of single Provision calls\n%s\nof ProvisionMany of one\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
}

func TestProvisionManyRefuses(t *testing.T) {
	ctx := context.Background()
	p := newLocalKMS(t)
	reg := &registrytest.BulkMem{}
	log := &eventLog{}
	ops := newOps(t, p, reg, log)
	for name, reqs := range map[string][]ProvisionRequest{
		"device twice":        {{DeviceID: "a"}, {DeviceID: "b"}, {DeviceID: "a", Group: "g"}},
		"bad device id":       {{DeviceID: "a"}, {DeviceID: "b/c"}},
		"bad group":           {{DeviceID: "a", Group: "no spaces"}},
		"empty device id":     {{DeviceID: ""}},
		"group name too long": {{DeviceID: "a", Group: strings.Repeat("g", 195)}},
	} {
		t.Run(name, func(t *testing.T) {
			if creds, err := ops.ProvisionMany(ctx, reqs, nil); !errors.Is(err, ErrInvalidArgument) || creds != nil {
				t.Fatalf("got %v, %v; want ErrInvalidArgument", creds, err)
			}
		})
	}
	if reg.Len() != 0 || len(log.evs) != 0 || reg.CreateManyCalls != 0 {
		t.Fatalf("refused requests left %d entries, %d events", reg.Len(), len(log.evs))
	}
	if creds, err := ops.ProvisionMany(ctx, nil, nil); err != nil || creds != nil {
		t.Fatalf("no requests: %v, %v", creds, err)
	}
}

// A version name taken by another writer between listing and storing:
// ProvisionMany plans again, as Provision retries.
func TestProvisionManyRetriesTakenName(t *testing.T) {
	ctx := context.Background()
	p := newLocalKMS(t)
	reg := &registrytest.BulkMem{}
	log := &eventLog{}
	ops := newOps(t, p, reg, log)
	other := newOps(t, p, &reg.Mem, &eventLog{}) // another dekctl
	reg.Before = func(call int, es []registry.Entry) {
		if call == 1 {
			if _, err := other.Provision(ctx, ProvisionRequest{DeviceID: "d-1"}); err != nil {
				t.Error(err)
			}
		}
	}
	reqs := []ProvisionRequest{{DeviceID: "d-0"}, {DeviceID: "d-1"}, {DeviceID: "d-2"}}
	creds, err := ops.ProvisionMany(ctx, reqs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if reg.CreateManyCalls != 2 || creds[1].KeyVersion != "v2" || creds[0].KeyVersion != "v1" {
		t.Fatalf("%d CreateMany calls; credentials %v", reg.CreateManyCalls, creds)
	}
	if e, _ := reg.Get(ctx, "device/d-1", "v1"); e.State != dek.StateDecryptOnly {
		t.Fatalf("the other writer's v1 is %s, want decrypt_only", e.State)
	}
	checkCredentials(t, p, reg, reqs, creds)
	if len(log.evs) != 4 { // 3 provisions, 1 rotate; the failed try records nothing
		t.Fatalf("%d events: %+v", len(log.evs), log.evs)
	}
}

// failingKMS fails Wrap for one key id.
type failingKMS struct {
	kms.Provider
	keyID string
}

func (f failingKMS) Wrap(ctx context.Context, key []byte, aad []string) (kms.Wrapped, error) {
	if slices.Contains(aad, f.keyID) {
		return kms.Wrapped{}, fmt.Errorf("injected: %w", kms.ErrTransient)
	}
	return f.Provider.Wrap(ctx, key, aad)
}

func TestProvisionManyWrapFails(t *testing.T) {
	ctx := context.Background()
	reg := &registrytest.BulkMem{}
	log := &eventLog{}
	ops := newOps(t, failingKMS{newLocalKMS(t), "device/d-0042"}, reg, log)
	reqs := make([]ProvisionRequest, 100)
	for i := range reqs {
		reqs[i].DeviceID = fmt.Sprintf("d-%04d", i)
	}
	creds, err := ops.ProvisionMany(ctx, reqs, nil)
	if !errors.Is(err, kms.ErrTransient) || creds != nil {
		t.Fatalf("got %d credentials, %v; want the KMS error", len(creds), err)
	}
	if reg.Len() != 0 || reg.CreateManyCalls != 0 {
		t.Fatalf("%d entries stored after a failed wrap", reg.Len())
	}
	if len(log.evs) != 1 || log.evs[0].KeyID != "device/d-0042" || log.evs[0].Result != audit.ResultTransient {
		t.Fatalf("events %+v, want the failed wrap's", log.evs)
	}
}

func TestProvisionManyProgress(t *testing.T) {
	ctx := context.Background()
	ops := newOps(t, newLocalKMS(t), &registrytest.BulkMem{}, &eventLog{})
	reqs := make([]ProvisionRequest, 1000)
	for i := range reqs {
		reqs[i].DeviceID = fmt.Sprintf("d-%04d", i)
		if i%4 == 0 {
			reqs[i].Group = "g" // one new group version serves 250 of them
		}
	}
	var calls [][2]int
	var mu sync.Mutex
	if _, err := ops.ProvisionMany(ctx, reqs, func(done, total int) {
		mu.Lock()
		calls = append(calls, [2]int{done, total})
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if len(calls) < 2 || len(calls) > 102 {
		t.Fatalf("%d progress calls", len(calls))
	}
	for i, c := range calls {
		if c[1] != 1000 || (i > 0 && c[0] <= calls[i-1][0]) {
			t.Fatalf("progress %v", calls)
		}
		if c[0] == 1000 && i != len(calls)-1 {
			t.Fatalf("total reported before the end: %v", calls)
		}
	}
	if last := calls[len(calls)-1]; last[0] != 1000 {
		t.Fatalf("last progress %v", last)
	}
}

// TestProvisionManyStores: the bulk path against the real registries
// (through CreateMany), a few devices provisioned before.
func TestProvisionManyStores(t *testing.T) {
	for _, tc := range []struct {
		name string
		open func(t *testing.T) registry.Store
	}{
		{"file", func(t *testing.T) registry.Store {
			s, err := filestore.Open(t.Context(), filepath.Join(t.TempDir(), "registry.json"))
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
		{"postgres", func(t *testing.T) registry.Store {
			s, err := pgstore.Open(t.Context(), pgtest.New(t))
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			p := newLocalKMS(t)
			st := tc.open(t)
			t.Cleanup(func() { st.Close() })
			aw, err := audit.Open(ctx, filepath.Join(t.TempDir(), "audit.jsonl"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { aw.Close() })
			ops := newOps(t, p, st, aw)
			for _, r := range []ProvisionRequest{{DeviceID: "dev-0001"}, {DeviceID: "dev-0001"}, {DeviceID: "dev-0500", Group: "icu"}} {
				if _, err := ops.Provision(ctx, r); err != nil {
					t.Fatal(err)
				}
			}
			reqs := requests1000()
			creds, err := ops.ProvisionMany(ctx, reqs, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkCredentials(t, p, st, reqs, creds)
			for ver, want := range map[string]dek.State{"v1": dek.StateDecryptOnly, "v2": dek.StateDecryptOnly, "v3": dek.StateActive} {
				if e, err := st.Get(ctx, "device/dev-0001", ver); err != nil || e.State != want {
					t.Fatalf("dev-0001 %s: %v %v, want %s", ver, e.State, err, want)
				}
			}
			if e, err := st.Get(ctx, "group/icu", "v1"); err != nil || len(e.Devices) != 60 {
				t.Fatalf("group/icu: %d devices, %v; want 60", len(e.Devices), err)
			}
		})
	}
}

// benchStores open a fresh, empty registry per benchmark iteration.
var benchStores = []struct {
	name string
	open func(b *testing.B) registry.Store
}{
	{"file", func(b *testing.B) registry.Store {
		s, err := filestore.Open(b.Context(), filepath.Join(b.TempDir(), "registry.json"))
		if err != nil {
			b.Fatal(err)
		}
		return s
	}},
	{"postgres", func(b *testing.B) registry.Store {
		s, err := pgstore.Open(b.Context(), pgtest.New(b))
		if err != nil {
			b.Fatal(err)
		}
		return s
	}},
}

// benchProvision provisions n new devices per iteration into a fresh
// registry and audit log (set up outside the timer) with the local KMS, and
// reports ns/device.
func benchProvision(b *testing.B, n int, run func(ops *Ops, reqs []ProvisionRequest) error) {
	benchProvisionAfter(b, n, nil, run)
}

// benchProvisionAfter is benchProvision with setup run on each fresh
// registry outside the timer.
func benchProvisionAfter(b *testing.B, n int, setup, run func(ops *Ops, reqs []ProvisionRequest) error) {
	p := newLocalKMS(b)
	reqs := make([]ProvisionRequest, n)
	for i := range reqs {
		reqs[i].DeviceID = fmt.Sprintf("sim-%06d", i)
	}
	for _, st := range benchStores {
		b.Run(st.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				reg := st.open(b)
				aw, err := audit.Open(b.Context(), filepath.Join(b.TempDir(), "audit.jsonl"))
				if err != nil {
					b.Fatal(err)
				}
				ops := newOps(b, p, reg, aw)
				if setup != nil {
					if err := setup(ops, reqs); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				if err := run(ops, reqs); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				aw.Close()
				reg.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/device")
		})
	}
}

// BenchmarkProvisionMany10k: 10,000 device keys in one ProvisionMany.
func BenchmarkProvisionMany10k(b *testing.B) {
	benchProvision(b, 10_000, func(ops *Ops, reqs []ProvisionRequest) error {
		creds, err := ops.ProvisionMany(context.Background(), reqs, nil)
		for i := range creds {
			creds[i].Wipe()
		}
		return err
	})
}

// BenchmarkReprovisionMany10k: 10,000 devices that have a key already get
// a new version in one ProvisionMany (their v1 demoted in one UpdateMany).
func BenchmarkReprovisionMany10k(b *testing.B) {
	many := func(ops *Ops, reqs []ProvisionRequest) error {
		creds, err := ops.ProvisionMany(context.Background(), reqs, nil)
		for i := range creds {
			creds[i].Wipe()
		}
		return err
	}
	benchProvisionAfter(b, 10_000, many, many)
}

// BenchmarkProvisionEach1k: the baseline, 1,000 device keys one Provision
// (dekctl provision) at a time; compare ns/device. Fewer devices, since
// each Provision lists the whole registry and the file registry rewrites
// its file per key: its cost per device grows with the registry.
func BenchmarkProvisionEach1k(b *testing.B) {
	benchProvision(b, 1000, func(ops *Ops, reqs []ProvisionRequest) error {
		for _, r := range reqs {
			c, err := ops.Provision(context.Background(), r)
			if err != nil {
				return err
			}
			c.Wipe()
		}
		return nil
	})
}
