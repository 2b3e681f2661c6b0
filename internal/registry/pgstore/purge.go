package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/decryptd/decryptd/internal/registry"
)

var _ registry.Purger = (*Store)(nil)

// defaultPurgeWait bounds how long PurgeDestroyed waits for older snapshots.
const defaultPurgeWait = 30 * time.Second

// ErrOldSnapshot: a transaction or replication slot older than the purge
// can still see dead row versions, so VACUUM FULL must keep them.
var ErrOldSnapshot = errors.New("an older snapshot can still see destroyed rows")

// PurgeDestroyed rewrites the entries table with VACUUM (FULL, ANALYZE):
// a new file holding only live row versions, the old file unlinked. A plain
// VACUUM is not enough: it prunes dead row versions but leaves their bytes
// in the page's free space when no live tuple is moved over them (found
// with pageinspect's get_raw_page). VACUUM FULL holds an ACCESS EXCLUSIVE
// lock on the table while it runs: daemons' registry reads (cache misses)
// and dekctl wait for it, about a second per 100,000 entries (0.8-1.2 s
// measured for 100,000 entries, 33 MB with indexes).
//
// VACUUM FULL copies a dead row version that some snapshot may still see
// ("recently dead"), its own included, and its own snapshot's xmin is the
// oldest transaction still running in any database of the server. So first
// it waits (up to 30 s) until no write transaction anywhere on the server,
// no snapshot in this database (an autovacuum worker's ANALYZE included),
// no standby with hot_standby_feedback and no replication slot is older
// than the call; after that it runs anyway and fails with ErrOldSnapshot,
// naming what held it, so the caller reruns once it is gone. (Found when
// other tests' transactions in other databases made about one run in
// twenty keep the dead row.)
//
// VACUUM FULL waits for the table lock behind any open transaction that
// read the table, and everyone else then queues behind it; so it gives up
// after lock_timeout (5 s) with an error, and the caller reruns.
//
// VACUUM cannot run inside a transaction block; it runs on a pool
// connection of its own. It needs the table's owner (the role that ran
// the migrations) or a superuser.
func (s *Store) PurgeDestroyed(ctx context.Context) (string, error) {
	var marker string
	if err := s.pool.QueryRow(ctx, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text").Scan(&marker); err != nil {
		return "", dbErr("registry: purge: snapshot", err)
	}
	wait := s.purgeWait
	if wait == 0 {
		wait = defaultPurgeWait
	}
	held, err := s.waitOlderSnapshots(ctx, marker, wait)
	if err != nil {
		return "", err
	}
	if err := s.vacuumFull(ctx); err != nil {
		return "", err
	}
	if held != "" {
		return "", fmt.Errorf("registry: purge: %w: %s; end it and purge again", ErrOldSnapshot, held)
	}
	return "VACUUM (FULL, ANALYZE) decryptd_registry_entries", nil
}

// olderSnapshots names what holds a snapshot older than marker (an xid), or "".
const olderSnapshots = `
SELECT coalesce(string_agg(what, ', '), '') FROM (
	SELECT 'session pid ' || pid || ' of ' || coalesce(datname, '-') || ' (' || backend_type || ', since ' || coalesce(xact_start::text, '?') || ')' AS what
	FROM pg_stat_activity
	WHERE pid <> pg_backend_pid() AND (
		(backend_xmin IS NOT NULL AND (datname = current_database() OR datname IS NULL) AND age(backend_xmin) > age($1::xid))
		OR (backend_xid IS NOT NULL AND age(backend_xid) > age($1::xid)))
	UNION ALL
	SELECT 'standby ' || coalesce(application_name, '?') || ' (hot_standby_feedback)'
	FROM pg_stat_replication WHERE backend_xmin IS NOT NULL AND age(backend_xmin) > age($1::xid)
	UNION ALL
	SELECT 'replication slot ' || slot_name FROM pg_replication_slots WHERE xmin IS NOT NULL AND age(xmin) > age($1::xid)
) AS older`

// waitOlderSnapshots polls until nothing holds a snapshot older than marker
// or wait passes; it returns what still holds one then.
func (s *Store) waitOlderSnapshots(ctx context.Context, marker string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		var held string
		if err := s.pool.QueryRow(ctx, olderSnapshots, marker).Scan(&held); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return "", dbErr("registry: purge: look for older snapshots", err)
		}
		if held == "" || time.Now().After(deadline) {
			return held, nil
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", ctx.Err()
		case <-t.C:
		}
	}
}

// purgeLockTimeout bounds VACUUM FULL's wait for its table lock.
const purgeLockTimeout = "5s"

func (s *Store) vacuumFull(ctx context.Context) error {
	c, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("registry: vacuum full: %w", err)
	}
	defer c.Release()
	if _, err := c.Exec(ctx, "SET lock_timeout = '"+purgeLockTimeout+"'"); err != nil {
		return dbErr("registry: vacuum full: lock_timeout", err)
	}
	_, err = c.Exec(ctx, "VACUUM (FULL, ANALYZE) decryptd_registry_entries")
	if _, rerr := c.Exec(context.WithoutCancel(ctx), "RESET lock_timeout"); rerr != nil {
		c.Conn().Close(context.Background()) // do not return it to the pool with the setting
	}
	if err != nil {
		return dbErr("registry: vacuum full (a transaction holding the table blocks it for longer than "+purgeLockTimeout+"? rerun)", err)
	}
	return nil
}
