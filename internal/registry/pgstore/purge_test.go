package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/decryptd/decryptd/internal/registry/registrytest"
	"github.com/decryptd/decryptd/internal/testutil/pgtest"
)

// rawPagesHolding counts the table's pages whose raw bytes contain b
// (pageinspect's get_raw_page: live rows, dead rows and free space).
func rawPagesHolding(t *testing.T, conn *pgx.Conn, b []byte) int {
	t.Helper()
	var n int
	err := conn.QueryRow(context.Background(), `
SELECT count(*) FROM generate_series(0, pg_relation_size('decryptd_registry_entries') / current_setting('block_size')::int - 1) AS blk
WHERE position($1::bytea IN get_raw_page('decryptd_registry_entries', 'main', blk::int)) > 0`, b).Scan(&n)
	if err != nil {
		t.Fatalf("scan pages: %v", err)
	}
	return n
}

// After PurgeDestroyed no page of the table holds a destroyed wrapped DEK,
// which a shred leaves in a dead row version.
func TestPurgeDestroyedRemovesDeadBytes(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.New(t)
	s := openT(t, dsn)
	var last []byte
	for i := range 50 {
		e := registrytest.NewEntry(fmt.Sprintf("device/d%02d", i), "v1")
		if err := s.Create(ctx, e); err != nil {
			t.Fatal(err)
		}
		last = e.Wrapped.Ciphertext
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pageinspect"); err != nil {
		t.Fatalf("pageinspect (needs a superuser DSN in %s): %v", pgtest.EnvDSN, err)
	}
	for _, id := range []string{"device/d49", "device/d00", "device/d24"} {
		if _, err := s.Update(ctx, id, "v1", registrytest.Shred); err != nil {
			t.Fatal(err)
		}
	}
	if n := rawPagesHolding(t, conn, last); n != 1 {
		t.Fatalf("after the shred: %d pages hold the destroyed bytes, want 1 (the dead row)", n)
	}
	what, err := s.PurgeDestroyed(ctx)
	if err != nil || what == "" {
		t.Fatalf("purge: %q %v", what, err)
	}
	if n := rawPagesHolding(t, conn, last); n != 0 {
		t.Fatalf("after PurgeDestroyed: %d pages hold the destroyed bytes", n)
	}
	if es, err := s.List(ctx); err != nil || len(es) != 50 {
		t.Fatalf("entries after the purge: %d %v", len(es), err)
	}
}

// Why the purge is VACUUM FULL and not VACUUM: a plain VACUUM prunes dead
// row versions but does not clear the page's free space, so the bytes of a
// dead row that no live row is moved over stay in the page. Shown on a
// small table of the same kind (the registry's own layout happens to move
// rows over them in the test above, which a plain VACUUM would pass).
func TestPlainVacuumLeavesDeadBytes(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, q := range []string{
		"CREATE EXTENSION IF NOT EXISTS pageinspect",
		"CREATE TABLE t (id int PRIMARY KEY, k text, w bytea)",
		"INSERT INTO t SELECT g, 'device/d' || g, decode(md5(g::text) || md5(g::text), 'hex') FROM generate_series(1, 50) g",
		"UPDATE t SET w = NULL WHERE id IN (50, 1, 25)",
		"VACUUM t",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	count := func() int {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM generate_series(0, pg_relation_size('t') / current_setting('block_size')::int - 1) AS blk
WHERE position(decode(md5('50') || md5('50'), 'hex') IN get_raw_page('t', 'main', blk::int)) > 0`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 1 {
		t.Fatalf("after a plain VACUUM %d pages hold row 50's old bytes, want 1", n)
	}
	if _, err := conn.Exec(ctx, "VACUUM FULL t"); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Fatalf("after VACUUM FULL %d pages hold row 50's old bytes", n)
	}
}

// A transaction whose snapshot predates the shred can still see the dead
// row version, and VACUUM FULL keeps it: PurgeDestroyed waits, then fails
// with ErrOldSnapshot naming the session; once it ends, a rerun purges.
func TestPurgeDestroyedOlderSnapshot(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.New(t)
	s := openT(t, dsn)
	s.purgeWait = 300 * time.Millisecond
	e := registrytest.NewEntry("device/d1", "v1")
	if err := s.Create(ctx, e); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pageinspect"); err != nil {
		t.Fatalf("pageinspect (needs a superuser DSN in %s): %v", pgtest.EnvDSN, err)
	}
	old, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close(context.Background())
	tx, err := old.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	// The snapshot is taken by the first query; not of the registry table,
	// whose lock would make VACUUM FULL wait (that case: lock_timeout).
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM pg_class").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, "device/d1", "v1", registrytest.Shred); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PurgeDestroyed(ctx); !errors.Is(err, ErrOldSnapshot) || !strings.Contains(err.Error(), "session pid") {
		t.Fatalf("purge under an older snapshot: %v, want ErrOldSnapshot naming the session", err)
	}
	if got := rawPagesHolding(t, conn, e.Wrapped.Ciphertext); got != 1 {
		t.Fatalf("under the older snapshot %d pages hold the bytes, want 1 (kept for it)", got)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// The rerun waits as in production: other tests' transactions on a
	// shared server hold the horizon for a moment too.
	s.purgeWait = 0
	if _, err := s.PurgeDestroyed(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rawPagesHolding(t, conn, e.Wrapped.Ciphertext); got != 0 {
		t.Fatalf("after the rerun %d pages hold the bytes", got)
	}
}

// A transaction that read the table holds a lock VACUUM FULL must wait for;
// the purge gives up after lock_timeout instead of queueing every reader
// behind it, and the store keeps serving.
func TestPurgeDestroyedLockTimeout(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.New(t)
	s := openT(t, dsn)
	s.purgeWait = 100 * time.Millisecond
	if err := s.Create(ctx, registrytest.NewEntry("device/d1", "v1")); err != nil {
		t.Fatal(err)
	}
	holder, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var n int
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM decryptd_registry_entries").Scan(&n); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = s.PurgeDestroyed(ctx)
	if err == nil || !strings.Contains(err.Error(), "lock") {
		t.Fatalf("purge behind a table lock: %v, want a lock timeout", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("gave up after %v", d)
	}
	if _, err := s.Get(ctx, "device/d1", "v1"); err != nil {
		t.Fatalf("store after the failed purge: %v", err)
	}
}
