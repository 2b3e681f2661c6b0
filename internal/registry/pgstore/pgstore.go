package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/feed"
)

type options struct {
	clock      func() time.Time
	log        *zap.Logger
	minBackoff time.Duration
	maxBackoff time.Duration
	listenWait time.Duration
	keepalive  time.Duration
	maxConns   int32
	listenerUp func(up bool)
}

// Option configures Open.
type Option func(*options)

// WithClock sets the clock that stamps CreatedAt/UpdatedAt (tests).
func WithClock(now func() time.Time) Option { return func(o *options) { o.clock = now } }

// WithLogger sets where listener losses and reconnects are logged.
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.log = l } }

// WithReconnectBackoff bounds the listener's wait between reconnection
// attempts (default 100 ms doubling up to 5 s).
func WithReconnectBackoff(min, max time.Duration) Option {
	return func(o *options) { o.minBackoff, o.maxBackoff = min, max }
}

// WithListenWait bounds how long Watch waits for the first LISTEN to be in
// place before giving up with an error (default 10 s).
func WithListenWait(d time.Duration) Option { return func(o *options) { o.listenWait = d } }

// WithListenerState is told when the LISTEN connection (the change
// feed) comes up (true) and when it is lost or cannot connect (false), on
// the listener's goroutine; it must not block. The daemon's health
// tracker listens here: with every key cached, no lookup would notice
// PostgreSQL gone.
func WithListenerState(f func(up bool)) Option { return func(o *options) { o.listenerUp = f } }

// WithMaxConns caps the pool (default: pgxpool's, or pool_max_conns in the DSN).
func WithMaxConns(n int32) Option { return func(o *options) { o.maxConns = n } }

// Store is a registry.Store in PostgreSQL. Safe for concurrent use by
// goroutines, replicas and dekctl.
type Store struct {
	pool    *pgxpool.Pool
	connCfg *pgx.ConnConfig
	opt     options
	hub     *feed.Hub
	// purgeWait bounds PurgeDestroyed's wait for older snapshots (zero:
	// defaultPurgeWait); tests shorten it.
	purgeWait time.Duration

	lctx    context.Context // the listener's lifetime
	lcancel context.CancelFunc
	wg      sync.WaitGroup

	mu        sync.Mutex
	listening bool
	ready     chan struct{} // closed once the first LISTEN is in place
	listenErr error         // the listener's last connection error
	closed    atomic.Bool
	closeOnce sync.Once
}

var _ registry.Store = (*Store)(nil)

// Open connects to dsn (a libpq URL or key=value string; pgxpool settings
// such as pool_max_conns are honoured), then creates or migrates the schema.
func Open(ctx context.Context, dsn string, opts ...Option) (*Store, error) {
	o := options{
		clock: time.Now, log: zap.NewNop(),
		minBackoff: 100 * time.Millisecond, maxBackoff: 5 * time.Second,
		listenWait: 10 * time.Second, keepalive: 15 * time.Second,
	}
	for _, f := range opts {
		f(&o)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// The parse error may quote the DSN, password and all.
		return nil, errors.New("registry postgres: cannot parse the DSN")
	}
	if o.maxConns > 0 {
		cfg.MaxConns = o.maxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("registry postgres: %w", err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	s := &Store{pool: pool, connCfg: cfg.ConnConfig.Copy(), opt: o, hub: feed.New(0), ready: make(chan struct{})}
	s.lctx, s.lcancel = context.WithCancel(context.Background())
	return s, nil
}

// migrate brings the schema to the newest version in one transaction under
// an advisory lock: a second replica waits, then finds nothing to do.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return dbErr("registry postgres: migrate", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey); err != nil {
		return dbErr("registry postgres: migration lock", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS decryptd_registry_migrations (
		version    integer PRIMARY KEY,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return dbErr("registry postgres: migrations table", err)
	}
	var cur int
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM decryptd_registry_migrations").Scan(&cur); err != nil {
		return dbErr("registry postgres: schema version", err)
	}
	ms := migrations()
	if newest := ms[len(ms)-1].version; cur > newest {
		return fmt.Errorf("registry postgres: schema version %d is newer than this build knows (%d); upgrade decryptd", cur, newest)
	}
	for _, m := range ms {
		if m.version <= cur {
			continue
		}
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return dbErr(fmt.Sprintf("registry postgres: migration %d", m.version), err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO decryptd_registry_migrations (version) VALUES ($1)", m.version); err != nil {
			return dbErr(fmt.Sprintf("registry postgres: record migration %d", m.version), err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return dbErr("registry postgres: commit migration", err)
	}
	return nil
}

// dbErr wraps err for the caller, except a server error, which is reduced to
// its code and message: its Detail can quote a failing row, wrapped DEK and
// all, and whatever wraps it may be logged.
func dbErr(op string, err error) error {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return fmt.Errorf("%s: postgres %s: %s", op, pg.Code, pg.Message)
	}
	return fmt.Errorf("%s: %w", op, err)
}

const columns = `key_id, key_version, state, wrapped, root_key_id, root_key_version, devices, created_at, updated_at, state_changed_at, rotation`

func scanEntry(row pgx.Row) (registry.Entry, error) {
	var (
		e        registry.Entry
		state    string
		rotation []byte
	)
	if err := row.Scan(&e.KeyID, &e.Version, &state, &e.Wrapped.Ciphertext, &e.Wrapped.RootKeyID,
		&e.Wrapped.RootKeyVersion, &e.Devices, &e.CreatedAt, &e.UpdatedAt, &e.StateChangedAt, &rotation); err != nil {
		return registry.Entry{}, err
	}
	if len(rotation) > 0 {
		if err := json.Unmarshal(rotation, &e.Rotation); err != nil {
			return registry.Entry{}, fmt.Errorf("stored entry %s@%s: rotation: %w", e.KeyID, e.Version, err)
		}
		if len(e.Rotation.AdoptedBy) == 0 {
			e.Rotation.AdoptedBy = nil
		}
	}
	e.State = dek.State(state)
	if len(e.Devices) == 0 {
		e.Devices = nil
	}
	if len(e.Wrapped.Ciphertext) == 0 {
		e.Wrapped.Ciphertext = nil
	}
	e.CreatedAt, e.UpdatedAt, e.StateChangedAt = e.CreatedAt.UTC(), e.UpdatedAt.UTC(), e.StateChangedAt.UTC()
	// Invariants are checked on every load too: a row edited by hand must
	// not be served as a usable key.
	if err := e.Validate(); err != nil {
		return registry.Entry{}, fmt.Errorf("stored entry: %w", err)
	}
	return e, nil
}

// args returns e's columns as query arguments, in the order of columns.
func args(e registry.Entry) []any {
	devices := e.Devices
	if devices == nil {
		devices = []string{}
	}
	var wrapped []byte // NULL once shredded
	if !e.Wrapped.IsZero() {
		wrapped = e.Wrapped.Ciphertext
	}
	rotation, err := json.Marshal(e.Rotation)
	if err != nil {
		rotation = []byte("{}") // cannot happen: plain fields only
	}
	return []any{e.KeyID, e.Version, string(e.State), wrapped, e.Wrapped.RootKeyID,
		e.Wrapped.RootKeyVersion, devices, e.CreatedAt, e.UpdatedAt, e.StateChangedAt, string(rotation)}
}

// Get returns one entry.
func (s *Store) Get(ctx context.Context, keyID, version string) (registry.Entry, error) {
	if s.closed.Load() {
		return registry.Entry{}, registry.ErrClosed
	}
	e, err := scanEntry(s.pool.QueryRow(ctx,
		"SELECT "+columns+" FROM decryptd_registry_entries WHERE key_id = $1 AND key_version = $2", keyID, version))
	if errors.Is(err, pgx.ErrNoRows) {
		return registry.Entry{}, fmt.Errorf("%s@%s: %w", keyID, version, registry.ErrNotFound)
	}
	if err != nil {
		return registry.Entry{}, dbErr(fmt.Sprintf("registry postgres: get %s@%s", keyID, version), err)
	}
	return e, nil
}

// List returns every entry by key id (bytewise), then creation time, then version.
func (s *Store) List(ctx context.Context) ([]registry.Entry, error) {
	if s.closed.Load() {
		return nil, registry.ErrClosed
	}
	rows, err := s.pool.Query(ctx, "SELECT "+columns+" FROM decryptd_registry_entries ORDER BY key_id, created_at, key_version")
	if err != nil {
		return nil, dbErr("registry postgres: list", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (registry.Entry, error) { return scanEntry(r) })
	if err != nil {
		return nil, dbErr("registry postgres: list", err)
	}
	return out, nil
}

// Create adds an entry, or fails with ErrExists.
func (s *Store) Create(ctx context.Context, e registry.Entry) error {
	if s.closed.Load() {
		return registry.ErrClosed
	}
	e, err := registry.PrepareCreate(e, s.opt.clock())
	if err != nil {
		return err
	}
	_, err = s.pool.Exec(ctx, "INSERT INTO decryptd_registry_entries ("+columns+
		") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)", args(e)...)
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == "23505" { // unique_violation
		return fmt.Errorf("%s: %w", e.Ref(), registry.ErrExists)
	}
	if err != nil {
		return dbErr(fmt.Sprintf("registry postgres: create %s", e.Ref()), err)
	}
	return nil
}

// Update applies fn to the row locked FOR UPDATE and saves the result in the
// same transaction. fn runs while the row is locked: keep it short.
func (s *Store) Update(ctx context.Context, keyID, version string, fn func(*registry.Entry) error) (registry.Entry, error) {
	if s.closed.Load() {
		return registry.Entry{}, registry.ErrClosed
	}
	op := fmt.Sprintf("registry postgres: update %s@%s", keyID, version)
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return registry.Entry{}, dbErr(op, err)
	}
	defer tx.Rollback(context.Background())
	old, err := scanEntry(tx.QueryRow(ctx,
		"SELECT "+columns+" FROM decryptd_registry_entries WHERE key_id = $1 AND key_version = $2 FOR UPDATE", keyID, version))
	if errors.Is(err, pgx.ErrNoRows) {
		return registry.Entry{}, fmt.Errorf("%s@%s: %w", keyID, version, registry.ErrNotFound)
	}
	if err != nil {
		return registry.Entry{}, dbErr(op, err)
	}
	next, changed, err := registry.ApplyUpdate(old, s.opt.clock(), fn)
	if err != nil {
		return registry.Entry{}, err
	}
	if !changed {
		return next, nil
	}
	a := args(next)
	if _, err := tx.Exec(ctx, `UPDATE decryptd_registry_entries SET state = $3, wrapped = $4, root_key_id = $5,
		root_key_version = $6, devices = $7, updated_at = $8, state_changed_at = $9, rotation = $10
		WHERE key_id = $1 AND key_version = $2`, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[8], a[9], a[10]); err != nil {
		return registry.Entry{}, dbErr(op, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return registry.Entry{}, dbErr(op, err)
	}
	return next, nil
}
