// Package postgres is the PostgreSQL (and TimescaleDB) sink: each batch is
// copied (COPY) into a session-local staging table, then moved into the
// records table with INSERT … SELECT … ON CONFLICT (id) DO NOTHING, in one
// transaction. A redelivered record (same id) never makes a second row, so
// the table holds exactly the unique records whatever the crashes and
// retries upstream.
//
// Delivery promise (package sink's): Write returns nil only once the
// transaction committed (durable to the server's synchronous_commit
// setting, on by default); any failure, or an ended context, rolls back the
// whole batch and the pipeline retries it. A lost connection is reopened
// on the next Write.
//
// Schema, owned by the sink and migrated by it at start under an advisory
// lock (decryptd_sink_schema records each table's version):
//
//	seq          bigint identity   insertion order
//	id           text primary key  the record id
//	device_id    text
//	key_id       text, key_version text (null when no key opened it)
//	ts           timestamptz       the record's timestamp (s or ms)
//	received_at  timestamptz       when decryptd received the message
//	record       json              the record exactly as delivered
//	data         jsonb             its data member, for queries
//	<columns>    typed columns extracted by JSON Pointer (config)
//
// Typed columns (columns: [{name, pointer, type}]) take the value at an RFC
// 6901 pointer into the record (/data/heart_rate) converted to text,
// bigint, double precision, numeric, boolean or timestamptz; a value that
// is absent or does not convert is NULL (a reading never fails a batch).
// They are added by ALTER TABLE at start; a column of that name with
// another type is refused.
//
// TimescaleDB: with timescale: auto (the default) a new table becomes a
// hypertable on ts when the timescaledb extension is installed in the
// database. A hypertable's unique indexes must include its time column, so
// its key is (id, ts) and conflicts are judged on it; a record id always
// comes with the same timestamp (both are bound by the envelope), so this
// is the same rule. Without the extension (and in the tests) it is a plain
// table. The choice is made once, when the table is created.
//
// The DSN comes from dsn (no password: use PGPASSWORD or PGPASSFILE) or
// from the environment variable named by dsn_env; it never appears in
// errors. Like every sink it holds no metrics and no logger.
package postgres
