package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/sink/sinktest"
	"github.com/decryptd/decryptd/internal/testutil/pgtest"
)

func newSink(t testing.TB, dsn string, mod func(*Config)) *Sink {
	t.Helper()
	cfg := Config{Name: "warehouse", DSN: dsn}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func TestContract(t *testing.T) {
	sinktest.Run(t, func(t *testing.T) sinktest.Subject {
		dsn := pgtest.New(t)
		s := newSink(t, dsn, nil)
		reader := connect(t, dsn)
		return sinktest.Subject{
			Sink: s,
			Read: func(t *testing.T) [][]byte {
				rows, err := reader.Query(context.Background(), "SELECT record::text FROM decryptd_records ORDER BY seq")
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]byte, error) {
					var s string
					err := r.Scan(&s)
					return []byte(s), err
				})
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				return out
			},
			// A session holding the table's lock stalls every insert.
			Stall: func(t *testing.T) func() {
				locker := connect(t, dsn)
				tx, err := locker.Begin(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(context.Background(), "LOCK TABLE decryptd_records IN ACCESS EXCLUSIVE MODE"); err != nil {
					t.Fatal(err)
				}
				return func() { _ = tx.Rollback(context.Background()) }
			},
		}
	})
}

func TestColumnsAndDedup(t *testing.T) {
	dsn := pgtest.New(t)
	cols := []Column{
		{Name: "heart_rate", Pointer: "/data/heart_rate", Type: "numeric"},
		{Name: "hr_int", Pointer: "/data/heart_rate", Type: "integer"},
		{Name: "seq_no", Pointer: "/data/seq", Type: "integer"},
		{Name: "note", Pointer: "/data/note", Type: "text"},
		{Name: "missing", Pointer: "/data/nothing", Type: "double"},
		{Name: "flag", Pointer: "/data/note", Type: "boolean"}, // a string: NULL
	}
	s := newSink(t, dsn, func(c *Config) { c.Table = "analytics.readings"; c.Columns = cols })
	recs := sinktest.Records("cols", 10)
	for i := range recs {
		recs[i].KeyID, recs[i].KeyVersion = "device/"+recs[i].DeviceID, "v2"
	}
	for range 3 { // a redelivered batch makes no second row
		if err := s.Write(t.Context(), recs); err != nil {
			t.Fatalf("Write: %v", err)
		}
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Restarting on the same table migrates nothing and keeps the rows.
	s2 := newSink(t, dsn, func(c *Config) { c.Table = "analytics.readings"; c.Columns = cols })
	if err := s2.Write(t.Context(), recs[:2]); err != nil {
		t.Fatalf("Write after restart: %v", err)
	}
	c := connect(t, dsn)
	var n, distinct int
	if err := c.QueryRow(t.Context(), "SELECT count(*), count(DISTINCT id) FROM analytics.readings").Scan(&n, &distinct); err != nil {
		t.Fatal(err)
	}
	if n != 10 || distinct != 10 {
		t.Fatalf("table holds %d rows (%d ids), want 10", n, distinct)
	}
	var hr string
	var hrInt, seqNo *int64
	var note *string
	var missing *float64
	var flag *bool
	var keyV string
	var ts time.Time
	var dataHR string
	err := c.QueryRow(t.Context(), `SELECT heart_rate::text, hr_int, seq_no, note, missing, flag, key_version, ts, data->>'heart_rate'
		FROM analytics.readings WHERE id = $1`, recs[3].ID).Scan(&hr, &hrInt, &seqNo, &note, &missing, &flag, &keyV, &ts, &dataHR)
	if err != nil {
		t.Fatal(err)
	}
	if hr != "72.50" || hrInt != nil || seqNo == nil || *seqNo != 3 || note == nil || !strings.Contains(*note, "quoted") ||
		missing != nil || flag != nil || keyV != "v2" || ts.Unix() != 1634567893 || dataHR != "72.50" {
		t.Fatalf("row: heart_rate %s hr_int %v seq %v note %v missing %v flag %v key_version %s ts %v data %s",
			hr, hrInt, seqNo, note, missing, flag, keyV, ts, dataHR)
	}
	// A column whose type changed is refused at start.
	_, err = New(t.Context(), Config{Name: "w", DSN: dsn, Table: "analytics.readings",
		Columns: []Column{{Name: "seq_no", Pointer: "/data/seq", Type: "text"}}})
	if err == nil || !strings.Contains(err.Error(), "seq_no") {
		t.Fatalf("changed column type: got %v", err)
	}
}

func TestValidate(t *testing.T) {
	ok := Config{Name: "w", DSN: "postgres://decryptd@db:5432/analytics", Table: "analytics.records",
		Columns: []Column{{Name: "heart_rate", Pointer: "/data/heart_rate", Type: "integer"}}}
	if err := ok.Validate(sink.Env{}); err != nil {
		t.Fatalf("valid: %v", err)
	}
	for _, tc := range []struct {
		field string
		mod   func(*Config)
	}{
		{"dsn", func(c *Config) { c.DSN = "" }},
		{"dsn", func(c *Config) { c.DSNEnv = "PG_DSN" }},
		{"dsn", func(c *Config) { c.DSN = "postgres://u:pw@db/x" }},
		{"dsn", func(c *Config) { c.DSN = "host=db password=pw" }},
		{"table", func(c *Config) { c.Table = "Records; drop" }},
		{"timescale", func(c *Config) { c.Timescale = "yes" }},
		{"columns[0].name", func(c *Config) { c.Columns[0].Name = "id" }},
		{"columns[0].name", func(c *Config) { c.Columns[0].Name = "Bad-Name" }},
		{"columns[0].type", func(c *Config) { c.Columns[0].Type = "uuid" }},
		{"columns[0].pointer", func(c *Config) { c.Columns[0].Pointer = "data/x" }},
		{"columns[0].pointer", func(c *Config) { c.Columns[0].Pointer = "/data/r/*/x" }},
		{"columns[1].name", func(c *Config) { c.Columns = append(c.Columns, c.Columns[0]) }},
	} {
		c := ok
		c.Columns = append([]Column(nil), ok.Columns...)
		tc.mod(&c)
		if err := c.Validate(sink.Env{}); err == nil || !strings.Contains(err.Error(), tc.field+":") {
			t.Errorf("%s: got %v", tc.field, err)
		}
	}
}

func TestBadTimestampRefused(t *testing.T) {
	s := newSink(t, pgtest.New(t), nil)
	b, _ := json.Marshal(map[string]any{"id": "x", "device_id": "d", "timestamp": "soon", "data": map[string]any{}})
	err := s.Write(t.Context(), []sink.Record{{ID: "x", DeviceID: "d", JSON: b}})
	if !errors.Is(err, sink.ErrBadRecord) {
		t.Fatalf("got %v, want sink.ErrBadRecord", err)
	}
}
