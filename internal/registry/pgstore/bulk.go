package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
)

var _ registry.BulkCreator = (*Store)(nil)

// The ops of notifications naming many created or updated keys.
const (
	opInsertBatch = "insert_batch"
	opUpdateBatch = "update_batch"
)

// maxPayload bounds a batch notification's payload: PostgreSQL refuses
// payloads of 8000 bytes or more.
const maxPayload = 7600

// batchPayload is a notification of many created keys, each as
// [key_id, key_version, state]: about 35 bytes a key, so some 200 keys a
// notification and 500 notifications for 100,000 keys, where the row
// trigger would send 100,000.
type batchPayload struct {
	Op   string      `json:"op"`
	Keys [][3]string `json:"keys"`
}

// copyColumns are the columns of columns, for COPY.
func copyColumns() []string {
	cols := strings.Split(columns, ",")
	for i := range cols {
		cols[i] = strings.TrimSpace(cols[i])
	}
	return cols
}

// CreateMany adds every entry or none, in one transaction: the entries are
// validated first, then streamed with COPY, and the change feed is told in
// batch notifications (see batchPayload; the row trigger stays quiet for
// this transaction, migration 3) that every watcher turns into one
// ChangeCreated per entry. ErrExists names an entry already stored (or
// listed twice).
//
// A daemon built before batch notifications reads each one as a
// ChangeReset, which is correct, if coarse.
func (s *Store) CreateMany(ctx context.Context, es []registry.Entry) error {
	if s.closed.Load() {
		return registry.ErrClosed
	}
	if len(es) == 0 {
		return nil
	}
	prepared, err := registry.PrepareCreateMany(es, s.opt.clock())
	if err != nil {
		return err
	}
	op := fmt.Sprintf("registry postgres: create %d entries", len(prepared))
	payloads, err := batchPayloads(opInsertBatch, prepared)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return dbErr(op, err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SELECT set_config('decryptd.notify', 'batch', true)"); err != nil {
		return dbErr(op, err)
	}
	_, err = tx.CopyFrom(ctx, pgx.Identifier{"decryptd_registry_entries"}, copyColumns(),
		pgx.CopyFromSlice(len(prepared), func(i int) ([]any, error) { return args(prepared[i]), nil }))
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == "23505" { // unique_violation
		_ = tx.Rollback(context.Background())
		return s.existsError(ctx, prepared)
	}
	if err != nil {
		return dbErr(op, err)
	}
	// One round trip for every notification; delivered at commit.
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", Channel, payloads); err != nil {
		return dbErr(op, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return dbErr(op, err)
	}
	return nil
}

// batchPayloads splits the names of es into notification payloads of op
// under maxPayload bytes each.
func batchPayloads(op string, es []registry.Entry) ([]string, error) {
	var (
		out  []string
		keys [][3]string
		size int
	)
	overhead := len(`{"op":"","keys":[]}`) + len(op)
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		b, err := json.Marshal(batchPayload{Op: op, Keys: keys})
		if err != nil {
			return err
		}
		out = append(out, string(b))
		keys, size = keys[:0], 0
		return nil
	}
	for _, e := range es {
		// Names are in the spec's alphabets: nothing to escape.
		n := len(e.KeyID) + len(e.Version) + len(e.State) + len(`["","",""],`)
		if overhead+size+n > maxPayload {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		keys = append(keys, [3]string{e.KeyID, e.Version, string(e.State)})
		size += n
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// existsError names an entry of es that is already stored, after a COPY
// failed on the primary key.
func (s *Store) existsError(ctx context.Context, es []registry.Entry) error {
	ids := make([]string, len(es))
	vers := make([]string, len(es))
	at := make(map[dek.Ref]int, len(es))
	for i, e := range es {
		ids[i], vers[i] = e.KeyID, e.Version
		at[e.Ref()] = i
	}
	var ref dek.Ref
	err := s.pool.QueryRow(ctx, `SELECT e.key_id, e.key_version FROM decryptd_registry_entries e
		JOIN unnest($1::text[], $2::text[]) AS b(key_id, key_version)
		ON e.key_id = b.key_id AND e.key_version = b.key_version
		ORDER BY e.key_id, e.key_version LIMIT 1`, ids, vers).Scan(&ref.KeyID, &ref.Version)
	if err != nil {
		// Gone again (a concurrent delete) or unreadable: still a conflict.
		return fmt.Errorf("registry postgres: create %d entries: one already existed: %w", len(es), registry.ErrExists)
	}
	return fmt.Errorf("entries[%d]: %s: %w", at[ref], ref, registry.ErrExists)
}

// parseBatch turns a batch notification into one ChangeCreated (or
// ChangeUpdated) per key; a payload it cannot fully read is one Reset.
func parseBatch(p string) []registry.Change {
	var pl batchPayload
	if err := json.Unmarshal([]byte(p), &pl); err != nil {
		return []registry.Change{{Kind: registry.ChangeReset}}
	}
	var kind registry.ChangeKind
	switch pl.Op {
	case opInsertBatch:
		kind = registry.ChangeCreated
	case opUpdateBatch:
		kind = registry.ChangeUpdated
	default:
		return []registry.Change{{Kind: registry.ChangeReset}}
	}
	out := make([]registry.Change, 0, len(pl.Keys))
	for _, k := range pl.Keys {
		st := dek.State(k[2])
		if !registry.ValidKeyID(k[0]) || !registry.ValidKeyVersion(k[1]) || !st.Valid() {
			return []registry.Change{{Kind: registry.ChangeReset}}
		}
		out = append(out, registry.Change{Kind: kind, KeyID: k[0], Version: k[1], State: st})
	}
	return out
}

// parseNotification turns any notification on Channel into changes.
func parseNotification(p string) []registry.Change {
	if strings.HasPrefix(p, `{"op":"`+opInsertBatch+`"`) || strings.HasPrefix(p, `{"op":"`+opUpdateBatch+`"`) {
		return parseBatch(p)
	}
	return []registry.Change{parsePayload(p)}
}

var _ registry.BulkUpdater = (*Store)(nil)

// UpdateMany applies fn to every entry of refs in one transaction, all or
// nothing (see registry.BulkUpdater): the rows are locked FOR UPDATE in key
// order (so two batches cannot deadlock), fn runs on each, and the changed
// ones are written back with COPY into a temporary table and one UPDATE.
// Watchers are told with "update_batch" notifications, as CreateMany's.
// fn runs while the rows are locked: keep it short.
func (s *Store) UpdateMany(ctx context.Context, refs []dek.Ref, fn func(*registry.Entry) error) ([]registry.Entry, error) {
	if s.closed.Load() {
		return nil, registry.ErrClosed
	}
	if err := registry.CheckRefs(refs); err != nil {
		return nil, err
	}
	if len(refs) == 0 {
		return nil, nil
	}
	op := fmt.Sprintf("registry postgres: update %d entries", len(refs))
	ids := make([]string, len(refs))
	vers := make([]string, len(refs))
	for i, r := range refs {
		ids[i], vers[i] = r.KeyID, r.Version
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, dbErr(op, err)
	}
	defer tx.Rollback(context.Background())
	rows, err := tx.Query(ctx, "SELECT "+columns+` FROM decryptd_registry_entries
		WHERE (key_id, key_version) IN (SELECT * FROM unnest($1::text[], $2::text[]))
		ORDER BY key_id, key_version FOR UPDATE`, ids, vers)
	if err != nil {
		return nil, dbErr(op, err)
	}
	stored, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (registry.Entry, error) { return scanEntry(r) })
	if err != nil {
		return nil, dbErr(op, err)
	}
	byRef := make(map[dek.Ref]registry.Entry, len(stored))
	for _, e := range stored {
		byRef[e.Ref()] = e
	}
	now := s.opt.clock()
	out := make([]registry.Entry, len(refs))
	var changed []registry.Entry
	for i, ref := range refs {
		old, ok := byRef[ref]
		if !ok {
			return nil, fmt.Errorf("refs[%d]: %s: %w", i, ref, registry.ErrNotFound)
		}
		next, ch, err := registry.ApplyUpdate(old, now, fn)
		if err != nil {
			return nil, err
		}
		out[i] = next
		if ch {
			changed = append(changed, next)
		}
	}
	if len(changed) == 0 {
		return out, nil
	}
	payloads, err := batchPayloads(opUpdateBatch, changed)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	for _, q := range []string{
		"SELECT set_config('decryptd.notify', 'batch', true)",
		"CREATE TEMPORARY TABLE decryptd_bulk_update (LIKE decryptd_registry_entries) ON COMMIT DROP",
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			return nil, dbErr(op, err)
		}
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"decryptd_bulk_update"}, copyColumns(),
		pgx.CopyFromSlice(len(changed), func(i int) ([]any, error) { return args(changed[i]), nil })); err != nil {
		return nil, dbErr(op, err)
	}
	if _, err := tx.Exec(ctx, `UPDATE decryptd_registry_entries e SET state = t.state, wrapped = t.wrapped,
		root_key_id = t.root_key_id, root_key_version = t.root_key_version, devices = t.devices,
		updated_at = t.updated_at, state_changed_at = t.state_changed_at, rotation = t.rotation
		FROM decryptd_bulk_update t WHERE e.key_id = t.key_id AND e.key_version = t.key_version`); err != nil {
		return nil, dbErr(op, err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", Channel, payloads); err != nil {
		return nil, dbErr(op, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, dbErr(op, err)
	}
	return out, nil
}
