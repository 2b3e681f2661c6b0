// Package pgstore is the registry.Store for deployments with several daemon
// replicas: the DEK registry in PostgreSQL (pgx/v5, a pgxpool).
//
// Schema: Open creates or migrates it, inside one transaction holding a
// transaction-scoped advisory lock, so replicas starting together migrate
// once and never race on DDL. Applied versions are recorded in
// decryptd_registry_migrations; a database newer than this binary is refused.
// The entries live in decryptd_registry_entries keyed by (key_id,
// key_version). The database repeats the invariants as CHECK constraints and
// a trigger (a shredded row never changes again), as a second line against
// writers other than decryptd, e.g. an operator with psql.
//
// Update runs in a transaction around SELECT ... FOR UPDATE, so concurrent
// updates from any replica or dekctl serialise on the row and none is lost.
//
// Change feed: a trigger calls pg_notify on channel "decryptd_registry" for
// every insert and update (and delete, which watchers see as Reset), with a
// small JSON payload of key id, version and state; never key material. So
// every writer notifies, not only this package. Watch listens on a dedicated
// connection (not one of the pool's), started by the first Watch, which
// returns once LISTEN is in place so no later change can be missed. When the
// connection is lost the listener reconnects with exponential backoff and
// then emits a Reset, since notifications sent meanwhile are gone. An idle
// listener pings the server every 15 s, so a silently dead connection is
// noticed too.
//
// Bulk: CreateMany (registry.BulkCreator) streams a batch with COPY in one
// transaction, all or nothing. Its rows do not notify one by one: the
// transaction sets decryptd.notify = 'batch', which the row trigger honours
// (migration 3), and sends instead a few notifications with op
// "insert_batch" naming some 200 keys each, which Watch turns back into one
// ChangeCreated per key. A build without migration 3's parser reads them as
// Reset. UpdateMany (registry.BulkUpdater) locks the batch's rows FOR UPDATE
// in key order, applies the update function to each, writes the changed
// rows back through COPY into a temporary table and one UPDATE, and
// notifies the same way ("update_batch").
//
// Purge: PurgeDestroyed (registry.Purger) runs VACUUM (FULL, ANALYZE) on
// the entries table, so no page holds a shredded entry's destroyed wrapped
// DEK in a dead row version (a plain VACUUM can leave its bytes in a page's
// free space). It locks the table while it runs. WAL, archives and backups
// are beyond it: docs/crypto-shredding.md.
//
// Errors from the server are reduced to their SQLSTATE and message: a
// constraint violation's detail would quote the failing row, wrapped DEK
// included, and must not reach a log.
package pgstore
