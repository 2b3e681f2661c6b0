package pgstore

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/registrytest"
	"github.com/decryptd/decryptd/internal/testutil/pgtest"
)

func openT(t testing.TB, dsn string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(context.Background(), dsn, opts...)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestContract(t *testing.T) {
	registrytest.RunStoreContract(t, func(t *testing.T) (registry.Store, func() registry.Store) {
		dsn := pgtest.New(t)
		open := func() registry.Store {
			s, err := Open(t.Context(), dsn, WithMaxConns(8))
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			return s
		}
		return open(), open
	})
}

// Replicas starting together must migrate once, without DDL races.
func TestConcurrentMigration(t *testing.T) {
	dsn := pgtest.New(t)
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for range 6 {
		wg.Go(func() {
			s, err := Open(t.Context(), dsn, WithMaxConns(2))
			if err == nil {
				s.Close()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent open: %v", err)
		}
	}
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n, maxV int
	if err := conn.QueryRow(t.Context(), "SELECT count(*), max(version) FROM decryptd_registry_migrations").Scan(&n, &maxV); err != nil {
		t.Fatal(err)
	}
	if want := len(migrations()); n != want || maxV != migrations()[want-1].version {
		t.Fatalf("%d migrations recorded (newest %d), want %d", n, maxV, want)
	}
	// A database from a newer build is refused.
	if _, err := conn.Exec(t.Context(), "INSERT INTO decryptd_registry_migrations (version) VALUES (999)"); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(t.Context(), dsn); err == nil {
		t.Fatal("opened a schema newer than this build")
	}
}

// The database itself refuses what the Go side refuses, for writers that
// bypass this package.
func TestDatabaseGuards(t *testing.T) {
	dsn := pgtest.New(t)
	s := openT(t, dsn)
	ctx := t.Context()
	if err := s.Create(ctx, registrytest.NewEntry("k", "v1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, "k", "v1", registrytest.Shred); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for name, sql := range map[string]string{
		"unshred":         `UPDATE decryptd_registry_entries SET state = 'active', wrapped = '\x01' WHERE key_id = 'k'`,
		"bad key id":      `INSERT INTO decryptd_registry_entries (key_id, key_version, state, wrapped, created_at, updated_at, state_changed_at) VALUES ('a b', 'v1', 'active', '\x01', now(), now(), now())`,
		"bad state":       `INSERT INTO decryptd_registry_entries (key_id, key_version, state, wrapped, created_at, updated_at, state_changed_at) VALUES ('k2', 'v1', 'paused', '\x01', now(), now(), now())`,
		"active no DEK":   `INSERT INTO decryptd_registry_entries (key_id, key_version, state, wrapped, created_at, updated_at, state_changed_at) VALUES ('k2', 'v1', 'active', NULL, now(), now(), now())`,
		"empty DEK":       `INSERT INTO decryptd_registry_entries (key_id, key_version, state, wrapped, created_at, updated_at, state_changed_at) VALUES ('k2', 'v1', 'active', '', now(), now(), now())`,
		"shredded w/ DEK": `INSERT INTO decryptd_registry_entries (key_id, key_version, state, wrapped, created_at, updated_at, state_changed_at) VALUES ('k2', 'v1', 'shredded', '\x01', now(), now(), now())`,
	} {
		if _, err := conn.Exec(ctx, sql); err == nil {
			t.Errorf("%s: accepted by the database", name)
		}
	}
}

// A lost listener connection is re-established, announced with a Reset,
// and changes after it are delivered again.
func TestWatchReconnects(t *testing.T) {
	dsn := pgtest.New(t)
	a := openT(t, dsn, WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond))
	b := openT(t, dsn)
	ctx := t.Context()
	ch, err := a.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var killed int
	if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()`).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed != 1 {
		t.Fatalf("terminated %d listener backends, want 1", killed)
	}
	next := func() registry.Change {
		t.Helper()
		select {
		case c, ok := <-ch:
			if !ok {
				t.Fatal("watch channel closed by a lost connection")
			}
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("no change within 10s")
			return registry.Change{}
		}
	}
	if c := next(); c.Kind != registry.ChangeReset {
		t.Fatalf("after reconnect: %+v, want reset", c)
	}
	if err := b.Create(ctx, registrytest.NewEntry("k", "v1")); err != nil {
		t.Fatal(err)
	}
	if c := next(); c != (registry.Change{Kind: registry.ChangeCreated, KeyID: "k", Version: "v1", State: dek.StateActive}) {
		t.Fatalf("after reconnect: %+v", c)
	}
}

// A server error's detail quotes the failing row; it must not reach the
// caller, since the row holds the wrapped DEK.
func TestErrorsOmitRowDetail(t *testing.T) {
	dsn := pgtest.New(t)
	openT(t, dsn) // creates the schema
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// Bypass the Go checks: a row the database rejects on insert.
	_, err = conn.Exec(t.Context(), `INSERT INTO decryptd_registry_entries (key_id, key_version, state, wrapped, created_at, updated_at, state_changed_at) VALUES ('k', 'v1', 'paused', '\xdeadbeef', now(), now(), now())`)
	if err == nil {
		t.Fatal("accepted")
	}
	wrapped := dbErr("op", err)
	if got := wrapped.Error(); strings.Contains(got, "deadbeef") || strings.Contains(got, "Failing row") {
		t.Fatalf("error leaks row detail: %s", got)
	}
}

func TestParsePayload(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want registry.Change
	}{
		{`{"op":"insert","key_id":"k","key_version":"v1","state":"active"}`, registry.Change{Kind: registry.ChangeCreated, KeyID: "k", Version: "v1", State: dek.StateActive}},
		{`{"op":"update","key_id":"device/s1","key_version":"v2","state":"shredded"}`, registry.Change{Kind: registry.ChangeUpdated, KeyID: "device/s1", Version: "v2", State: dek.StateShredded}},
		{`{"op":"delete","key_id":"k","key_version":"v1","state":"active"}`, registry.Change{Kind: registry.ChangeReset}},
		{`{"op":"update","key_id":"k","key_version":"v1","state":"paused"}`, registry.Change{Kind: registry.ChangeReset}},
		{`{"op":"update","key_id":"a b","key_version":"v1","state":"active"}`, registry.Change{Kind: registry.ChangeReset}},
		{`not json`, registry.Change{Kind: registry.ChangeReset}},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := parsePayload(tc.in); got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func FuzzParsePayload(f *testing.F) {
	f.Add(`{"op":"insert","key_id":"k","key_version":"v1","state":"active"}`)
	f.Add(`{"op":"update","key_id":"device/x","key_version":"v1","state":"revoked"}`)
	f.Add(`{}`)
	f.Fuzz(func(t *testing.T, p string) {
		c := parsePayload(p)
		if c.Kind == registry.ChangeReset {
			if c.KeyID != "" || c.Version != "" {
				t.Fatalf("reset names a key: %+v", c)
			}
			return
		}
		if !registry.ValidKeyID(c.KeyID) || !registry.ValidKeyVersion(c.Version) || !c.State.Valid() {
			t.Fatalf("invalid change accepted: %+v", c)
		}
	})
}

func BenchmarkGet(b *testing.B) {
	s := openT(b, pgtest.New(b))
	ctx := context.Background()
	if err := s.Create(ctx, registrytest.NewEntry("device/s1", "v1")); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Get(ctx, "device/s1", "v1"); err != nil {
			b.Fatal(err)
		}
	}
}

func TestParseNotificationBatch(t *testing.T) {
	created := func(id, ver string, st dek.State) registry.Change {
		return registry.Change{Kind: registry.ChangeCreated, KeyID: id, Version: ver, State: st}
	}
	reset := []registry.Change{{Kind: registry.ChangeReset}}
	for _, tc := range []struct {
		name string
		in   string
		want []registry.Change
	}{
		{"batch", `{"op":"insert_batch","keys":[["device/a","v1","active"],["group/g","v7","decrypt_only"]]}`,
			[]registry.Change{created("device/a", "v1", dek.StateActive), created("group/g", "v7", dek.StateDecryptOnly)}},
		{"empty batch", `{"op":"insert_batch","keys":[]}`, []registry.Change{}},
		{"bad key id", `{"op":"insert_batch","keys":[["device/a","v1","active"],["a b","v1","active"]]}`, reset},
		{"bad state", `{"op":"insert_batch","keys":[["device/a","v1","paused"]]}`, reset},
		{"short triple", `{"op":"insert_batch","keys":[["device/a","v1"]]}`, reset},
		{"not json", `{"op":"insert_batch",`, reset},
		{"single row", `{"op":"insert","key_id":"k","key_version":"v1","state":"active"}`, []registry.Change{created("k", "v1", dek.StateActive)}},
		{"update batch", `{"op":"update_batch","keys":[["device/a","v1","decrypt_only"]]}`,
			[]registry.Change{{Kind: registry.ChangeUpdated, KeyID: "device/a", Version: "v1", State: dek.StateDecryptOnly}}},
		{"unknown batch", `{"op":"delete_batch","keys":[["device/a","v1","active"]]}`, reset},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := parseNotification(tc.in)
			if len(got) != len(tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("got %+v, want %+v", got, tc.want)
				}
			}
		})
	}
}

// Batch payloads stay under PostgreSQL's limit and name every entry once.
func TestBatchPayloads(t *testing.T) {
	es := make([]registry.Entry, 5000)
	for i := range es {
		es[i] = registrytest.NewEntry(fmt.Sprintf("device/%s-%05d", strings.Repeat("x", i%180), i), strings.Repeat("v", 1+i%32))
	}
	payloads, err := batchPayloads(opInsertBatch, es)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, p := range payloads {
		if len(p) >= 8000 || len(p) > maxPayload {
			t.Fatalf("payload of %d bytes", len(p))
		}
		for _, c := range parseNotification(p) {
			if c.Kind != registry.ChangeCreated || c.KeyID != es[seen].KeyID || c.Version != es[seen].Version {
				t.Fatalf("change %d: %+v, want %s", seen, c, es[seen].Ref())
			}
			seen++
		}
	}
	if seen != len(es) {
		t.Fatalf("%d of %d entries named", seen, len(es))
	}
	t.Logf("%d entries in %d notifications", len(es), len(payloads))
}

func FuzzParseNotification(f *testing.F) {
	f.Add(`{"op":"insert_batch","keys":[["device/a","v1","active"]]}`)
	f.Add(`{"op":"insert","key_id":"k","key_version":"v1","state":"active"}`)
	f.Add(`{"op":"insert_batch","keys":[[]]}`)
	f.Fuzz(func(t *testing.T, p string) {
		for _, c := range parseNotification(p) {
			if c.Kind == registry.ChangeReset {
				if c.KeyID != "" || c.Version != "" {
					t.Fatalf("reset names a key: %+v", c)
				}
				continue
			}
			if !registry.ValidKeyID(c.KeyID) || !registry.ValidKeyVersion(c.Version) || !c.State.Valid() {
				t.Fatalf("invalid change accepted: %+v", c)
			}
		}
	})
}

func BenchmarkCreateMany10k(b *testing.B) {
	registrytest.BenchmarkCreateMany(b, func(b *testing.B) registry.Store { return openT(b, pgtest.New(b)) })
}

// BenchmarkCreateEach1k: the baseline, 1,000 entries one Create at a time.
func BenchmarkCreateEach1k(b *testing.B) {
	registrytest.BenchmarkCreateEach(b, func(b *testing.B) registry.Store { return openT(b, pgtest.New(b)) }, 1000)
}
