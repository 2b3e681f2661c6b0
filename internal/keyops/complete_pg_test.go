package keyops

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
	"github.com/decryptd/decryptd/internal/testutil/pgtest"
)

// pagesHolding counts the pages of the registry table (main fork, and its
// TOAST table's) whose raw bytes contain b, read with pageinspect's
// get_raw_page: live rows, dead rows and free space alike.
func pagesHolding(t *testing.T, conn *pgx.Conn, b []byte) int {
	t.Helper()
	var n int
	err := conn.QueryRow(context.Background(), `
WITH rels AS (
	SELECT c.oid::regclass AS rel FROM pg_class c WHERE c.oid = 'decryptd_registry_entries'::regclass
	UNION ALL
	SELECT c.reltoastrelid::regclass FROM pg_class c WHERE c.oid = 'decryptd_registry_entries'::regclass AND c.reltoastrelid <> 0
)
SELECT count(*) FROM rels, generate_series(0, pg_relation_size(rels.rel) / current_setting('block_size')::int - 1) AS blk
WHERE position($1::bytea IN get_raw_page(rels.rel::text, 'main', blk::int)) > 0`, b).Scan(&n)
	if err != nil {
		t.Fatalf("scan the table's pages: %v", err)
	}
	return n
}

// The PostgreSQL must-show of #16: after shred --complete no heap page of
// the registry table holds the destroyed wrapped DEK (a plain shred leaves
// it in a dead row version), and the audit chain verifies. (Here the
// rewrap's new row versions happen to be moved over the dead one, so a
// plain VACUUM would pass too; pgstore's purge_test shows a layout where it
// does not, and why the purge is VACUUM FULL.)
func TestShredCompletePostgresPages(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p, err := local.Create(filepath.Join(dir, "root.json"), "pg-root")
	if err != nil {
		t.Fatal(err)
	}
	dsn := pgtest.New(t)
	st, err := pgstore.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := newEnvWith(t, dir, p, st)
	for _, d := range []string{"d1", "d2", "d3"} {
		c, err := e.ops.Provision(ctx, ProvisionRequest{DeviceID: d})
		if err != nil {
			t.Fatal(err)
		}
		c.Wipe()
	}
	ent, err := st.Get(ctx, "device/d3", "v1")
	if err != nil {
		t.Fatal(err)
	}
	destroyed := ent.Wrapped.Ciphertext

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// pageinspect ships with Debian's postgresql package; creating it needs
	// a superuser (scripts/test-deps.sh's DSN is one).
	if _, err := conn.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pageinspect"); err != nil {
		t.Fatalf("pageinspect (needs a superuser DSN in %s): %v", pgtest.EnvDSN, err)
	}
	if n := pagesHolding(t, conn, destroyed); n != 1 {
		t.Fatalf("before the shred: %d pages hold the wrapped DEK, want 1 (the check must see it)", n)
	}
	// A plain shred: the row says NULL, the page still holds the bytes.
	if _, err := e.ops.Shred(ctx, Selector{DeviceID: "d3"}); err != nil {
		t.Fatal(err)
	}
	var isNull bool
	if err := conn.QueryRow(ctx, "SELECT wrapped IS NULL FROM decryptd_registry_entries WHERE key_id = 'device/d3'").Scan(&isNull); err != nil || !isNull {
		t.Fatalf("tombstone: null=%v %v", isNull, err)
	}
	if n := pagesHolding(t, conn, destroyed); n == 0 {
		t.Fatal("after a plain shred no page holds the destroyed bytes: the check cannot tell the difference")
	}

	res, err := e.ops.ShredComplete(ctx, Selector{DeviceID: "d3"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Purged == "" || len(res.Retired) != 1 || res.Rewrap.Rewrapped != 2 {
		t.Fatalf("result %+v", res)
	}
	if n := pagesHolding(t, conn, destroyed); n != 0 {
		t.Fatalf("after shred --complete %d pages still hold the destroyed wrapped DEK", n)
	}
	// The others still unwrap, and the audit chain verifies (events does).
	for _, d := range []string{"d1", "d2"} {
		e.unwrap(t, "device/"+d, "v1")
	}
	var found bool
	for _, ev := range e.events(t) {
		found = found || ev.Action == ActionShredComplete
	}
	if !found {
		t.Fatal("no shred_complete event")
	}
}
