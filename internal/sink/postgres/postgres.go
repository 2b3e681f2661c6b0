package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/decryptd/decryptd/internal/fieldpolicy/pointer"
	"github.com/decryptd/decryptd/internal/sink"
)

// Type is the sink type's name in the configuration.
const Type = "postgres"

// Column types a typed column may take.
var columnTypes = map[string]string{
	"text":        "text",
	"integer":     "bigint",
	"bigint":      "bigint",
	"double":      "double precision",
	"numeric":     "numeric",
	"boolean":     "boolean",
	"timestamptz": "timestamptz",
}

// Config is a PostgreSQL sink's configuration.
type Config struct {
	// Name is the sink entry's name, not a key of its own.
	Name string `yaml:"-" json:"-"`
	// DSN names the database; it must not hold a password (PGPASSWORD,
	// PGPASSFILE). DSNEnv instead names an environment variable holding
	// the whole DSN. Exactly one.
	DSN    string `yaml:"dsn,omitempty" json:"dsn,omitempty"`
	DSNEnv string `yaml:"dsn_env,omitempty" json:"dsn_env,omitempty"`
	// Table receives the records (default decryptd_records), optionally
	// schema-qualified (analytics.records).
	Table string `yaml:"table,omitempty" json:"table,omitempty"`
	// Columns are typed columns extracted from each record.
	Columns []Column `yaml:"columns,omitempty" json:"columns,omitempty"`
	// Timescale is auto (default: a hypertable when the extension is
	// there) or off.
	Timescale string `yaml:"timescale,omitempty" json:"timescale,omitempty"`
}

// Column is one typed column.
type Column struct {
	Name    string `yaml:"name" json:"name"`
	Pointer string `yaml:"pointer" json:"pointer"`
	Type    string `yaml:"type" json:"type"`
}

// DefaultTable is the table written when Config.Table is empty.
const DefaultTable = "decryptd_records"

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

var reserved = map[string]bool{"seq": true, "id": true, "device_id": true, "key_id": true, "key_version": true,
	"ts": true, "received_at": true, "record": true, "data": true}

// Problem is one problem with one key of the configuration, named
// relative to the sink's entry ("columns[1].type").
type Problem struct{ Key, Text string }

// Validate checks c without connecting, naming the field at fault.
func (c Config) validate() error {
	ps := c.Problems()
	if len(ps) == 0 {
		return nil
	}
	msgs := make([]string, len(ps))
	for i, p := range ps {
		msgs[i] = p.Key + ": " + p.Text
	}
	return fmt.Errorf("postgres sink %q: %s", c.Name, strings.Join(msgs, "; "))
}

// Problems lists what Validate reports, one problem per key.
func (c Config) Problems() []Problem {
	var ps []Problem
	add := func(key, format string, a ...any) { ps = append(ps, Problem{key, fmt.Sprintf(format, a...)}) }
	switch {
	case (c.DSN == "") == (c.DSNEnv == ""):
		add("dsn", "exactly one of dsn and dsn_env")
	case dsnHasPassword(c.DSN):
		add("dsn", "holds a password; use PGPASSWORD, PGPASSFILE or dsn_env")
	}
	if c.Table != "" {
		ok := strings.Count(c.Table, ".") <= 1
		for _, part := range strings.Split(c.Table, ".") {
			ok = ok && identRE.MatchString(part)
		}
		if !ok {
			add("table", "%q: want [schema.]name, lower case letters, digits and _", c.Table)
		}
	}
	switch c.Timescale {
	case "", "auto", "off":
	default:
		add("timescale", "%q: want auto or off", c.Timescale)
	}
	seen := map[string]bool{}
	for i, col := range c.Columns {
		f := fmt.Sprintf("columns[%d]", i)
		switch {
		case !identRE.MatchString(col.Name):
			add(f+".name", "%q: want lower case letters, digits and _", col.Name)
		case reserved[col.Name]:
			add(f+".name", "%q is one of the sink's own columns", col.Name)
		case seen[col.Name]:
			add(f+".name", "%q repeated", col.Name)
		}
		if columnTypes[col.Type] == "" {
			add(f+".type", "%q: want text, integer, bigint, double, numeric, boolean or timestamptz", col.Type)
		}
		if _, err := pointer.Parse(col.Pointer); err != nil {
			add(f+".pointer", "%v", err)
		} else if strings.Contains(col.Pointer, "*") {
			add(f+".pointer", "a column takes one value: no wildcard")
		}
		seen[col.Name] = true
	}
	return ps
}

func dsnHasPassword(dsn string) bool {
	if dsn == "" {
		return false
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return true // unparseable: do not risk it
		}
		_, has := u.User.Password()
		return has || u.Query().Has("password")
	}
	for _, f := range strings.Fields(dsn) {
		if strings.HasPrefix(f, "password=") {
			return true
		}
	}
	return false
}

// Option adjusts New.
type Option func(*options)

type options struct{ getenv func(string) (string, bool) }

// WithGetenv replaces os.LookupEnv for dsn_env.
func WithGetenv(f func(string) (string, bool)) Option { return func(o *options) { o.getenv = f } }

// Sink writes records to a PostgreSQL table. See the package documentation.
type Sink struct {
	name     string
	dsn      string
	schema   string // quoted identifiers
	table    string
	cols     []column
	conflict string

	conn   *pgx.Conn // nil until connected, or after a failure
	closed bool
	rows   [][]any
}

type column struct {
	Column
	ptr pointer.Pointer
}

// New validates cfg, connects, migrates the schema and prepares the
// staging table.
func New(ctx context.Context, cfg Config, opts ...Option) (*Sink, error) {
	if cfg.Name == "" {
		return nil, errors.New("postgres sink: a name is required")
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	o := options{getenv: os.LookupEnv}
	for _, f := range opts {
		f(&o)
	}
	dsn := cfg.DSN
	if cfg.DSNEnv != "" {
		v, ok := o.getenv(cfg.DSNEnv)
		if !ok || strings.TrimSpace(v) == "" {
			return nil, fmt.Errorf("postgres sink %q: dsn_env: environment variable %s is not set", cfg.Name, cfg.DSNEnv)
		}
		dsn = strings.TrimSpace(v)
	}
	table := cfg.Table
	if table == "" {
		table = DefaultTable
	}
	schema := "public"
	if i := strings.IndexByte(table, '.'); i >= 0 {
		schema, table = table[:i], table[i+1:]
	}
	s := &Sink{name: cfg.Name, dsn: dsn, schema: schema, table: table, conflict: "id"}
	for _, c := range cfg.Columns {
		p, _ := pointer.Parse(c.Pointer)
		s.cols = append(s.cols, column{Column: c, ptr: p})
	}
	conn, err := s.connect(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.migrate(ctx, conn, cfg.Timescale != "off"); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("postgres sink %q: migrate: %w", s.name, err)
	}
	if err := s.prepare(ctx, conn); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	s.conn = conn
	return s, nil
}

func (s *Sink) qtable() string { return pgx.Identifier{s.schema, s.table}.Sanitize() }

func (s *Sink) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, s.dsn)
	if err != nil {
		// pgx's connect errors name host and user, not the password.
		return nil, fmt.Errorf("postgres sink %q: connect: %w", s.name, err)
	}
	return conn, nil
}

// migrations are the table's schema versions, applied in order; %[1]s is
// the quoted table name.
var migrations = []string{
	`CREATE TABLE %[1]s (
		seq bigint GENERATED ALWAYS AS IDENTITY,
		id text NOT NULL,
		device_id text NOT NULL,
		key_id text,
		key_version text,
		ts timestamptz NOT NULL,
		received_at timestamptz,
		record json NOT NULL,
		data jsonb
	)`,
}

func (s *Sink) migrate(ctx context.Context, conn *pgx.Conn, timescale bool) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	h := fnv.New64a()
	h.Write([]byte("decryptd sink " + s.schema + "." + s.table))
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(h.Sum64())); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS decryptd_sink_schema (
		table_name text PRIMARY KEY, version int NOT NULL, hypertable boolean NOT NULL DEFAULT false,
		updated_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}
	if s.schema != "public" {
		if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{s.schema}.Sanitize()); err != nil {
			return err
		}
	}
	name := s.schema + "." + s.table
	var version int
	var hyper bool
	err = tx.QueryRow(ctx, "SELECT version, hypertable FROM decryptd_sink_schema WHERE table_name = $1", name).Scan(&version, &hyper)
	if errors.Is(err, pgx.ErrNoRows) {
		version, err = 0, nil
	}
	if err != nil {
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("table %s is at schema version %d, newer than this decryptd (%d)", name, version, len(migrations))
	}
	for v := version; v < len(migrations); v++ {
		if _, err := tx.Exec(ctx, fmt.Sprintf(migrations[v], s.qtable())); err != nil {
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
	}
	if version == 0 {
		var ext bool
		if timescale {
			if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')").Scan(&ext); err != nil {
				return err
			}
		}
		key := "id"
		if ext {
			key = "id, ts"
			if _, err := tx.Exec(ctx, "SELECT create_hypertable($1::regclass, 'ts')", s.qtable()); err != nil {
				return fmt.Errorf("create hypertable: %w", err)
			}
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("ALTER TABLE %s ADD PRIMARY KEY (%s)", s.qtable(), key)); err != nil {
			return err
		}
		hyper = ext
	}
	if hyper {
		s.conflict = "id, ts"
	}
	if _, err := tx.Exec(ctx, `INSERT INTO decryptd_sink_schema (table_name, version, hypertable) VALUES ($1, $2, $3)
		ON CONFLICT (table_name) DO UPDATE SET version = EXCLUDED.version, updated_at = now()`, name, len(migrations), hyper); err != nil {
		return err
	}
	for _, c := range s.cols {
		want := columnTypes[c.Type]
		var have string
		err := tx.QueryRow(ctx, `SELECT format_type(atttypid, atttypmod) FROM pg_attribute
			WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped`, s.qtable(), c.Name).Scan(&have)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if _, err := tx.Exec(ctx, fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s", s.qtable(), pgx.Identifier{c.Name}.Sanitize(), want)); err != nil {
				return fmt.Errorf("column %s: %w", c.Name, err)
			}
		case err != nil:
			return err
		case have != want:
			return fmt.Errorf("column %s is %s in the table, configured as %s", c.Name, have, want)
		}
	}
	return tx.Commit(ctx)
}

const stage = "decryptd_stage"

func (s *Sink) colNames() []string {
	names := []string{"id", "device_id", "key_id", "key_version", "ts", "received_at", "record", "data"}
	for _, c := range s.cols {
		names = append(names, c.Name)
	}
	return names
}

// prepare makes the connection's staging table: temporary, emptied at
// every commit.
func (s *Sink) prepare(ctx context.Context, conn *pgx.Conn) error {
	q := fmt.Sprintf("CREATE TEMP TABLE IF NOT EXISTS %s (ord int NOT NULL, id text, device_id text, key_id text, key_version text, ts timestamptz, received_at timestamptz, record json, data jsonb", stage)
	for _, c := range s.cols {
		q += ", " + pgx.Identifier{c.Name}.Sanitize() + " " + columnTypes[c.Type]
	}
	if _, err := conn.Exec(ctx, q+") ON COMMIT DELETE ROWS"); err != nil {
		return fmt.Errorf("postgres sink %q: staging table: %w", s.name, err)
	}
	return nil
}

// Name returns the sink's name.
func (s *Sink) Name() string { return s.name }

// Write stores the batch; see the package documentation.
func (s *Sink) Write(ctx context.Context, batch []sink.Record) error {
	if s.closed {
		return sink.ErrClosed
	}
	if err := s.ctxErr(ctx); err != nil {
		return err
	}
	rows, err := s.buildRows(batch)
	if err != nil {
		return fmt.Errorf("postgres sink %q: %w", s.name, err)
	}
	if len(rows) == 0 {
		return nil
	}
	if err := s.write(ctx, rows); err != nil {
		if cerr := s.ctxErr(ctx); cerr != nil {
			return cerr
		}
		return err
	}
	return nil
}

func (s *Sink) write(ctx context.Context, rows [][]any) error {
	if s.conn == nil || s.conn.IsClosed() {
		conn, err := s.connect(ctx)
		if err != nil {
			return err
		}
		if err := s.prepare(ctx, conn); err != nil {
			conn.Close(context.Background())
			return err
		}
		s.conn = conn
	}
	fail := func(what string, err error) error {
		// A connection in an unknown state is not reused.
		s.conn.Close(context.Background())
		s.conn = nil
		return fmt.Errorf("postgres sink %q: %s: %w", s.name, what, err)
	}
	tx, err := s.conn.Begin(ctx)
	if err != nil {
		return fail("begin", err)
	}
	names := s.colNames()
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{stage}, append([]string{"ord"}, names...), pgx.CopyFromRows(rows)); err != nil {
		_ = tx.Rollback(context.Background())
		return fail("copy", err)
	}
	list := ""
	for i, n := range names {
		if i > 0 {
			list += ", "
		}
		list += pgx.Identifier{n}.Sanitize()
	}
	q := fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM %s ORDER BY ord ON CONFLICT (%s) DO NOTHING",
		s.qtable(), list, list, stage, s.conflict)
	if _, err := tx.Exec(ctx, q); err != nil {
		_ = tx.Rollback(context.Background())
		return fail("insert", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fail("commit", err)
	}
	return nil
}

// recordFields are the members the sink reads from every record.
type recordFields struct {
	Timestamp  json.Number     `json:"timestamp"`
	ReceivedAt string          `json:"received_at"`
	Data       json.RawMessage `json:"data"`
}

func (s *Sink) buildRows(batch []sink.Record) ([][]any, error) {
	rows := s.rows[:0]
	for i, r := range batch {
		switch {
		case len(r.JSON) == 0:
			return nil, fmt.Errorf("record %d (id %q): empty JSON: %w", i, r.ID, sink.ErrBadRecord)
		case bytes.ContainsAny(r.JSON, "\r\n"):
			return nil, fmt.Errorf("record %d (id %q): JSON spans lines: %w", i, r.ID, sink.ErrBadRecord)
		}
		var f recordFields
		if err := json.Unmarshal(r.JSON, &f); err != nil {
			return nil, fmt.Errorf("record %d (id %q): not a JSON object: %w", i, r.ID, sink.ErrBadRecord)
		}
		ts, ok := timestamp(f.Timestamp)
		if !ok {
			return nil, fmt.Errorf("record %d (id %q): timestamp: not a time: %w", i, r.ID, sink.ErrBadRecord)
		}
		var recv any
		if t, err := time.Parse(time.RFC3339Nano, f.ReceivedAt); err == nil {
			recv = t
		}
		var data any
		if len(f.Data) > 0 && string(f.Data) != "null" {
			data = []byte(f.Data)
		}
		row := []any{i, r.ID, r.DeviceID, nullable(r.KeyID), nullable(r.KeyVersion), ts, recv, r.JSON, data}
		if len(s.cols) > 0 {
			var doc any
			dec := json.NewDecoder(bytes.NewReader(r.JSON))
			dec.UseNumber()
			if err := dec.Decode(&doc); err != nil {
				return nil, fmt.Errorf("record %d (id %q): %w", i, r.ID, sink.ErrBadRecord)
			}
			for _, c := range s.cols {
				v, _ := c.ptr.Get(doc)
				row = append(row, convert(v, c.Type))
			}
		}
		rows = append(rows, row)
	}
	s.rows = rows[:0]
	return rows, nil
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// timestamp reads the spec's timestamp: seconds, or milliseconds above 1e11.
func timestamp(n json.Number) (time.Time, bool) {
	v, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil || v < 0 {
		return time.Time{}, false
	}
	if v > 1e11 {
		return time.UnixMilli(v).UTC(), true
	}
	return time.Unix(v, 0).UTC(), true
}

// convert turns a decoded JSON value into the column's type, nil when it
// does not convert.
func convert(v any, typ string) any {
	switch typ {
	case "text":
		switch x := v.(type) {
		case string:
			return x
		case json.Number:
			return x.String()
		case bool:
			return strconv.FormatBool(x)
		case nil:
			return nil
		default:
			b, err := json.Marshal(x)
			if err != nil {
				return nil
			}
			return string(b)
		}
	case "integer", "bigint":
		n, ok := v.(json.Number)
		if !ok {
			return nil
		}
		if i, err := n.Int64(); err == nil {
			return i
		}
		if f, err := n.Float64(); err == nil && f == math.Trunc(f) && math.Abs(f) < 1<<63 {
			return int64(f)
		}
		return nil
	case "double":
		n, ok := v.(json.Number)
		if !ok {
			return nil
		}
		f, err := n.Float64()
		if err != nil {
			return nil
		}
		return f
	case "numeric":
		n, ok := v.(json.Number)
		if !ok {
			return nil
		}
		return string(n) // the text, exactly: PostgreSQL parses it
	case "boolean":
		b, ok := v.(bool)
		if !ok {
			return nil
		}
		return b
	case "timestamptz":
		switch x := v.(type) {
		case json.Number:
			if t, ok := timestamp(x); ok {
				return t
			}
		case string:
			if t, err := time.Parse(time.RFC3339Nano, x); err == nil {
				return t
			}
		}
	}
	return nil
}

// Flush has nothing to do: a Write that returned nil is committed.
func (s *Sink) Flush(ctx context.Context) error {
	if s.closed {
		return sink.ErrClosed
	}
	return nil
}

// Close closes the connection. Closing again returns nil.
func (s *Sink) Close(ctx context.Context) error {
	if s.closed {
		return nil
	}
	s.closed = true
	if s.conn != nil {
		err := s.conn.Close(ctx)
		s.conn = nil
		if err != nil {
			return fmt.Errorf("postgres sink %q: close: %w", s.name, err)
		}
	}
	return nil
}

func (s *Sink) ctxErr(ctx context.Context) error {
	ce := ctx.Err()
	if ce == nil {
		return nil
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, ce) {
		return fmt.Errorf("postgres sink %q: %w (%w)", s.name, ce, cause)
	}
	return fmt.Errorf("postgres sink %q: %w", s.name, ce)
}

var _ sink.Sink = (*Sink)(nil)
