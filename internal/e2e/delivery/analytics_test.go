package delivery_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/e2e/e2etest"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/pgtest"
)

// pgIDs returns the table's row count and its ids.
func pgIDs(ctx context.Context, conn *pgx.Conn) (rows int, ids map[string]int, err error) {
	r, err := conn.Query(ctx, "SELECT id FROM decryptd_records")
	if err != nil {
		return 0, nil, err
	}
	got, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		return 0, nil, err
	}
	return len(got), e2etest.Counts(got), nil
}

// A decryptd writing to PostgreSQL, SIGKILLed mid-stream and started again,
// leaves a table holding exactly the unique record ids: every published
// record once, none missing, no second row for what the broker redelivered.
func TestPostgresSinkKilledRestartedExactlyUnique(t *testing.T) {
	const (
		devices  = 50
		messages = 4000
	)
	dsn := pgtest.New(t)
	// The DSN may carry the test role's password: it goes through the
	// environment (dsn_env), as the sink requires.
	t.Setenv("PGSINK_E2E_DSN", dsn)
	bin := e2etest.BuildDecryptd(t)
	b := mosquittotest.Start(t, mosquittotest.Options{MaxInflight: 100})
	f := newFleet(t, b, devices)
	rf := f.writeConfig(t, replicaConfig{ClientID: "replica-pg", MaxInFlight: 200,
		Sinks: "  - name: warehouse\n    type: postgres\n    dsn_env: PGSINK_E2E_DSN\n" +
			"    columns: [{name: heart_rate, pointer: /data/heart_rate, type: integer}]\n"})
	first := startProcess(t, bin, rf)
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	ids := make([]string, messages)
	pub := newPublisher(t, f, "gateway-pg")
	pubDone := make(chan error, 1)
	go func() { pubDone <- pub.publish(0, messages, ids) }()

	waitUntil(t, 90*time.Second, "half the messages in the table", func() (bool, string) {
		n, _, err := pgIDs(t.Context(), conn)
		if err != nil {
			return false, err.Error()
		}
		return n >= messages/2, fmt.Sprintf("%d rows", n)
	})
	first.Kill()
	atKill, _, err := pgIDs(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	if atKill >= messages {
		t.Fatalf("the kill came after the whole stream (%d rows)", atKill)
	}
	select {
	case err := <-pubDone:
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("publisher did not finish within 90s")
	}

	second := startProcess(t, bin, rf)
	waitUntil(t, 90*time.Second, "every published record in the table", func() (bool, string) {
		_, have, err := pgIDs(t.Context(), conn)
		if err != nil {
			return false, err.Error()
		}
		miss := missing(ids, have)
		return len(miss) == 0, fmt.Sprintf("%d of %d missing", len(miss), messages)
	})
	var m metrics
	waitUntil(t, 30*time.Second, "the second process acknowledges everything", func() (bool, string) {
		if m, err = scrape(second.addr); err != nil {
			return false, err.Error()
		}
		n := m.Sum("decryptd_inflight_messages")
		return n == 0, fmt.Sprintf("decryptd_inflight_messages %v", n)
	})
	if err := second.Terminate(30 * time.Second); err != nil {
		t.Errorf("second process: graceful stop: %v", err)
	}
	rows, have, err := pgIDs(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	published := e2etest.Counts(ids)
	for id := range have {
		if published[id] == 0 {
			t.Errorf("row %s was never published", id)
		}
	}
	if miss := missing(ids, have); len(miss) != 0 || rows != messages || len(have) != messages {
		t.Fatalf("table holds %d rows, %d distinct ids, %d published missing; want exactly %d", rows, len(have), len(miss), messages)
	}
	var typed int
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM decryptd_records WHERE heart_rate BETWEEN 60 AND 99").Scan(&typed); err != nil || typed != messages {
		t.Fatalf("typed column heart_rate filled on %d rows (%v), want %d", typed, err, messages)
	}
	t.Logf("killed with %d rows in the table; after the restart %d rows = %d distinct ids = every published record; second process received %v, delivered %v (redeliveries written again land on ON CONFLICT DO NOTHING)",
		atKill, rows, len(have), m.Sum("decryptd_mqtt_messages_received_total"), m.Sum("decryptd_messages_processed_total", "outcome", "delivered"))
}

// pseudonymized reads an analytics sink file: heart rate token by record
// id, and the tokens' versions.
func pseudonymized(t *testing.T, path string) map[string]string {
	t.Helper()
	out := map[string]string{}
	fh, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return out
		}
		t.Fatal(err)
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		var r struct {
			ID       string          `json:"id"`
			Metadata json.RawMessage `json:"metadata"`
			Data     struct {
				HeartRate any `json:"heart_rate"`
				Seq       int `json:"seq"`
			} `json:"data"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue // a line being written
		}
		if r.Metadata != nil {
			t.Fatalf("dropped metadata reached the analytics sink: %s", sc.Bytes())
		}
		tok, ok := r.Data.HeartRate.(string)
		if !ok || !strings.HasPrefix(tok, "pn:") {
			t.Fatalf("heart_rate not pseudonymized: %s", sc.Bytes())
		}
		out[r.ID] = fmt.Sprintf("%d=%s", 60+r.Data.Seq%40, tok)
	}
	return out
}

// auditHas reports whether a daemon's audit log holds an event matching.
func auditHas(path string, match func(audit.Event) bool) bool {
	fh, err := os.Open(path)
	if err != nil {
		return false
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		var ev audit.Event
		if json.Unmarshal(sc.Bytes(), &ev) == nil && match(ev) {
			return true
		}
	}
	return false
}

// Two daemons sharing the registry (one shared subscription, the load
// split) give equal pseudonyms for equal values; after the
// pseudonymization key is rotated, both give new ones (also equal). Each
// daemon's audit log records the policy in force at start and every load
// of the key.
func TestPseudonymsAcrossReplicasAndRotation(t *testing.T) {
	const devices, wave = 20, 1500
	b := mosquittotest.Start(t, mosquittotest.Options{MaxInflight: 100})
	f := newFleet(t, b, devices)

	// The operator creates the key, as dekctl does.
	ctx := t.Context()
	lp, err := local.Open(f.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	store, err := filestore.Open(ctx, f.registry, filestore.WithoutFSNotify())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	aw, err := audit.Open(ctx, filepath.Join(f.dir, "dekctl-audit.log"), audit.WithActor("dekctl"))
	if err != nil {
		t.Fatal(err)
	}
	defer aw.Close()
	ops, err := keyops.New(keyops.Options{KMS: lp, Roots: lp, Registry: store, Audit: aw, Operator: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ops.RotatePseudonymKey(ctx, "analytics"); err != nil {
		t.Fatal(err)
	}

	var files [2]replicaFiles
	var analytics [2]string
	for i := range files {
		name := fmt.Sprintf("replica-ps%d", i)
		analytics[i] = filepath.Join(f.dir, name+"-analytics.jsonl")
		files[i] = f.writeConfig(t, replicaConfig{ClientID: name, Sinks: fmt.Sprintf(
			"  - name: analytics\n    type: file\n    path: %q\n    policy:\n      pseudonym_key: analytics\n      rules:\n"+
				"        - {pointer: /data/heart_rate, action: pseudonymize}\n        - {pointer: /metadata, action: drop}\n", analytics[i])})
		startInProcess(t, files[i])
	}
	auditLog := func(i int) string { return filepath.Join(filepath.Dir(files[i].Config), "audit.log") }
	for i := range files {
		if !auditHas(auditLog(i), func(ev audit.Event) bool {
			return ev.Action == "field_policy" && strings.Contains(ev.Detail, "rule 0: pseudonymize /data/heart_rate")
		}) {
			t.Fatalf("replica %d's audit log does not record the policy in force", i)
		}
	}

	// check publishes a wave and returns value→token as both replicas gave
	// it, failing on any disagreement.
	pub := newPublisher(t, f, "gateway-ps")
	seq := 0
	check := func(version string) map[string]string {
		all := make([]string, seq+wave) // publish fills ids by sequence number
		if err := pub.publish(seq, seq+wave, all); err != nil {
			t.Fatal(err)
		}
		ids := all[seq:]
		seq += wave
		var got [2]map[string]string
		waitUntil(t, 60*time.Second, "the wave in the analytics sinks", func() (bool, string) {
			got[0], got[1] = pseudonymized(t, analytics[0]), pseudonymized(t, analytics[1])
			n := 0
			for _, id := range ids {
				if got[0][id] != "" || got[1][id] != "" {
					n++
				}
			}
			return n == wave, fmt.Sprintf("%d of %d", n, wave)
		})
		tokens := map[string]string{}
		from := [2]int{}
		for _, id := range ids {
			for i := range got {
				vt, ok := got[i][id]
				if !ok {
					continue
				}
				from[i]++
				v, tok, _ := strings.Cut(vt, "=")
				if !strings.HasPrefix(tok, "pn:"+version+":") {
					t.Fatalf("replica %d: token %s, want key version %s", i, tok, version)
				}
				if prev, ok := tokens[v]; ok && prev != tok {
					t.Fatalf("heart rate %s has two tokens: %s and %s", v, prev, tok)
				}
				tokens[v] = tok
			}
		}
		if from[0] == 0 || from[1] == 0 {
			t.Fatalf("one replica took the whole wave (%v): nothing compared", from)
		}
		t.Logf("key %s: %d heart-rate values, one token each on both replicas; records per replica %v", version, len(tokens), from)
		return tokens
	}
	v1 := check("v1")

	if _, err := ops.RotatePseudonymKey(ctx, "analytics"); err != nil {
		t.Fatal(err)
	}
	for i := range files {
		waitUntil(t, 30*time.Second, "the replica loads the rotated key", func() (bool, string) {
			return auditHas(auditLog(i), func(ev audit.Event) bool {
				return ev.Action == audit.ActionUnwrap && ev.KeyID == "pseudonym/analytics" && ev.KeyVersion == "v2" && ev.Result == "ok"
			}), "no unwrap of pseudonym/analytics v2 in " + auditLog(i)
		})
	}
	v2 := check("v2")
	for v, tok := range v2 {
		if old, ok := v1[v]; ok && old[len("pn:v1:"):] == tok[len("pn:v2:"):] {
			t.Fatalf("heart rate %s: same token under the rotated key", v)
		}
	}
}
