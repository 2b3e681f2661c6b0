package sinktest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/sink"
)

// waitLimit is how long the suite waits for records to show on an
// asynchronous medium, or for a Write that should give up, before failing.
// Generous on purpose: it detects a hang, it measures nothing.
const waitLimit = 10 * time.Second

// Subject is one fresh sink under test and a view of its medium.
type Subject struct {
	Sink sink.Sink

	// Read returns every JSON object the medium holds now, in the order
	// held, duplicates included. It is called after Write returns and after
	// Close, and must not depend on the sink being open.
	Read func(t *testing.T) [][]byte

	// Async says the medium may show records some time after Write returned
	// (an MQTT subscriber receives after the broker's PUBACK). The suite then
	// polls Read for up to 10 s; otherwise it reads once, right after Write.
	Async bool

	// Stall, if set, makes the medium stop acknowledging (an HTTP server
	// that does not answer, a broker that does not PUBACK) until release is
	// called. The suite checks that Write then returns the context's error
	// when its deadline passes.
	Stall func(t *testing.T) (release func())
}

// Factory returns a fresh Subject (a new sink on a new, empty medium). It
// registers its own cleanup with t.Cleanup; the suite closes the sink.
type Factory func(t *testing.T) Subject

// Records returns n valid records with ids derived from prefix (so the same
// prefix gives the same ids), spread over three devices, whose JSON carries
// characters that trip naive encoders (quotes, escapes, non-ASCII, U+2028).
func Records(prefix string, n int) []sink.Record {
	devices := [...]string{"sensor-001", "sensor-002", "pump_7.a"}
	out := make([]sink.Record, n)
	for i := range out {
		sum := sha256.Sum256(fmt.Appendf(nil, "%s/%d", prefix, i))
		id := hex.EncodeToString(sum[:])
		dev := devices[i%len(devices)]
		obj := map[string]any{
			"id":          id,
			"device_id":   dev,
			"timestamp":   1634567890 + i,
			"key_id":      dek.DeviceKeyID(dev),
			"key_version": "v2",
			"data": map[string]any{
				"seq":        i,
				"heart_rate": json.Number("72.50"),
				"note":       "\"quoted\" \\ ünïcode \u2028 <tag> \t",
			},
		}
		b, err := json.Marshal(obj)
		if err != nil {
			panic(err) // static shape: cannot happen
		}
		out[i] = sink.Record{ID: id, DeviceID: dev, JSON: b}
	}
	return out
}

// Run runs the contract suite against sinks from newSubject, each subtest on
// a fresh one.
func Run(t *testing.T, newSubject Factory) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s Subject)
	}{
		{"name", testName},
		{"write_read_back", testWriteReadBack},
		{"order_within_batch", testOrder},
		{"empty_batch", testEmptyBatch},
		{"repeated_batch", testRepeatedBatch},
		{"flush_repeated", testFlushRepeated},
		{"close_keeps_records", testCloseKeeps},
		{"write_after_close", testWriteAfterClose},
		{"cancelled_context", testCancelled},
		{"bad_record_refused_whole", testBadRecord},
		{"sequential_goroutines", testGoroutines},
	}
	// Only a medium that waits on a peer can stall; a file or a buffer
	// cannot, so the check is left out rather than skipped.
	probe := newSubject(t)
	if probe.Stall != nil {
		tests = append(tests, struct {
			name string
			fn   func(t *testing.T, s Subject)
		}{"stalled_medium_deadline", testStall})
	}
	if probe.Sink != nil {
		_ = probe.Sink.Close(context.Background())
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSubject(t)
			if s.Sink == nil || s.Read == nil {
				t.Fatal("factory returned a Subject without Sink or Read")
			}
			t.Cleanup(func() { _ = s.Sink.Close(context.Background()) })
			tc.fn(t, s)
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func write(t *testing.T, s Subject, batch []sink.Record) {
	t.Helper()
	if err := s.Sink.Write(ctxT(t), batch); err != nil {
		t.Fatalf("Write(%d records): %v", len(batch), err)
	}
}

// held is what the medium holds: objects in order, by id.
type held struct {
	ids  []string          // in medium order, duplicates included
	byID map[string][]byte // first object seen per id
}

func readHeld(t *testing.T, s Subject) held {
	t.Helper()
	h := held{byID: map[string][]byte{}}
	for i, obj := range s.Read(t) {
		var v struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(obj, &v); err != nil || v.ID == "" {
			t.Fatalf("medium object %d is not a record with an id (%v): %.200q", i, err, obj)
		}
		h.ids = append(h.ids, v.ID)
		if _, ok := h.byID[v.ID]; !ok {
			h.byID[v.ID] = obj
		}
	}
	return h
}

// firstSeen returns the ids in order of first appearance.
func (h held) firstSeen() []string {
	seen := map[string]bool{}
	var out []string
	for _, id := range h.ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// waitHeld reads the medium until it holds every record of want (polling up
// to waitLimit on an asynchronous medium) and returns what it holds.
func waitHeld(t *testing.T, s Subject, want []sink.Record) held {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		h := readHeld(t, s)
		missing := 0
		for _, r := range want {
			if _, ok := h.byID[r.ID]; !ok {
				missing++
			}
		}
		if missing == 0 {
			return h
		}
		if !s.Async || time.Now().After(deadline) {
			t.Fatalf("medium lacks %d of %d records written (holds %d objects)", missing, len(want), len(h.ids))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkExact checks that the medium holds exactly want, each object
// byte-for-byte the record's JSON, in order, tolerating repeats (at least
// once delivery) but no stranger.
func checkExact(t *testing.T, s Subject, want []sink.Record) {
	t.Helper()
	h := waitHeld(t, s, want)
	wantIDs := make([]string, len(want))
	wantJSON := map[string]string{}
	for i, r := range want {
		wantIDs[i] = r.ID
		wantJSON[r.ID] = string(r.JSON)
	}
	for id, obj := range h.byID {
		w, ok := wantJSON[id]
		if !ok {
			t.Fatalf("medium holds a record never written: id %s", id)
		}
		if string(obj) != w {
			t.Fatalf("record %s altered on the medium:\n got %s\nwant %s", id, obj, w)
		}
	}
	got := h.firstSeen()
	if len(got) != len(wantIDs) {
		t.Fatalf("medium holds %d distinct records, want %d", len(got), len(wantIDs))
	}
	for i := range got {
		if got[i] != wantIDs[i] {
			t.Fatalf("order differs at %d: got id %s, want %s", i, got[i], wantIDs[i])
		}
	}
}

func testName(t *testing.T, s Subject) {
	if s.Sink.Name() == "" {
		t.Fatal("Name() is empty")
	}
}

func testWriteReadBack(t *testing.T, s Subject) {
	a, b := Records("a", 3), Records("b", 50)
	write(t, s, a)
	checkExact(t, s, a)
	write(t, s, b)
	// The batch is the caller's: a sink must not change it.
	for i, r := range Records("b", 50) {
		if b[i].ID != r.ID || b[i].DeviceID != r.DeviceID || string(b[i].JSON) != string(r.JSON) {
			t.Fatalf("Write modified record %d of the caller's batch", i)
		}
	}
	checkExact(t, s, append(a, b...))
}

func testOrder(t *testing.T, s Subject) {
	batch := Records("order", 300)
	write(t, s, batch)
	checkExact(t, s, batch)
}

func testEmptyBatch(t *testing.T, s Subject) {
	if err := s.Sink.Write(ctxT(t), nil); err != nil {
		t.Fatalf("Write(nil): %v", err)
	}
	if err := s.Sink.Write(ctxT(t), []sink.Record{}); err != nil {
		t.Fatalf("Write(empty): %v", err)
	}
	// Nothing on the medium yet; then one record, and only it, shows.
	if h := readHeld(t, s); len(h.ids) != 0 {
		t.Fatalf("empty batches left %d objects on the medium", len(h.ids))
	}
	one := Records("one", 1)
	write(t, s, one)
	checkExact(t, s, one)
}

func testRepeatedBatch(t *testing.T, s Subject) {
	batch := Records("rep", 5)
	write(t, s, batch)
	write(t, s, batch)
	more := Records("rep2", 2)
	write(t, s, more)
	checkExact(t, s, append(batch, more...))
}

func testFlushRepeated(t *testing.T, s Subject) {
	ctx := ctxT(t)
	if err := s.Sink.Flush(ctx); err != nil {
		t.Fatalf("Flush on a fresh sink: %v", err)
	}
	batch := Records("flush", 4)
	write(t, s, batch)
	for i := range 2 {
		if err := s.Sink.Flush(ctx); err != nil {
			t.Fatalf("Flush #%d: %v", i+1, err)
		}
	}
	checkExact(t, s, batch)
}

func testCloseKeeps(t *testing.T, s Subject) {
	batch := Records("close", 7)
	write(t, s, batch)
	if err := s.Sink.Close(ctxT(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	checkExact(t, s, batch)
}

func testWriteAfterClose(t *testing.T, s Subject) {
	ctx := ctxT(t)
	write(t, s, Records("before", 1))
	if err := s.Sink.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Sink.Write(ctx, Records("after", 1)); !errors.Is(err, sink.ErrClosed) {
		t.Fatalf("Write after Close: got %v, want sink.ErrClosed", err)
	}
	if err := s.Sink.Close(ctx); err != nil && !errors.Is(err, sink.ErrClosed) {
		t.Fatalf("second Close: got %v, want nil or sink.ErrClosed", err)
	}
	if err := s.Sink.Flush(ctx); err != nil && !errors.Is(err, sink.ErrClosed) {
		t.Fatalf("Flush after Close: got %v, want nil or sink.ErrClosed", err)
	}
	checkExact(t, s, Records("before", 1))
}

// within runs f on its own goroutine and fails the test if it does not
// return within waitLimit: a sink that ignores its context would hang the
// suite otherwise.
func within(t *testing.T, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(waitLimit):
		t.Fatalf("%s did not return within %v", what, waitLimit)
		return nil
	}
}

func testCancelled(t *testing.T, s Subject) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := within(t, "Write with a cancelled context", func() error {
		return s.Sink.Write(ctx, Records("cancel", 3))
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Write with a cancelled context: got %v, want context.Canceled", err)
	}
	// The sink is still usable; the cancelled batch may or may not be on
	// the medium (a failed Write holds nothing, but may leave repeats).
	good := Records("after-cancel", 2)
	write(t, s, good)
	waitHeld(t, s, good)
}

func testStall(t *testing.T, s Subject) {
	release := s.Stall(t)
	released := false
	defer func() {
		if !released {
			release()
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	err := within(t, "Write to a stalled medium", func() error {
		return s.Sink.Write(ctx, Records("stalled", 2))
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Write to a stalled medium: got %v, want context.DeadlineExceeded", err)
	}
	release()
	released = true
	good := Records("after-stall", 2)
	write(t, s, good)
	waitHeld(t, s, good)
}

func testBadRecord(t *testing.T, s Subject) {
	good := Records("bad", 3)
	cases := []struct {
		name string
		rec  sink.Record
	}{
		{"empty_json", sink.Record{ID: "x1", DeviceID: "sensor-001"}},
		{"newline", sink.Record{ID: "x2", DeviceID: "sensor-001", JSON: []byte("{\"id\":\"x2\",\n\"a\":1}")}},
	}
	for _, c := range cases {
		batch := []sink.Record{good[0], c.rec, good[1]}
		if err := s.Sink.Write(ctxT(t), batch); !errors.Is(err, sink.ErrBadRecord) {
			t.Fatalf("%s: Write: got %v, want sink.ErrBadRecord", c.name, err)
		}
	}
	if h := readHeld(t, s); len(h.ids) != 0 {
		t.Fatalf("refused batches left %d objects on the medium", len(h.ids))
	}
	write(t, s, good)
	checkExact(t, s, good)
}

func testGoroutines(t *testing.T, s Subject) {
	var all []sink.Record
	for i := range 4 {
		batch := Records(fmt.Sprintf("g%d", i), 5)
		all = append(all, batch...)
		err := within(t, "Write", func() error {
			if err := s.Sink.Write(ctxT(t), batch); err != nil {
				return err
			}
			return s.Sink.Flush(ctxT(t))
		})
		if err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
	}
	checkExact(t, s, all)
	if err := within(t, "Close", func() error { return s.Sink.Close(ctxT(t)) }); err != nil {
		t.Fatalf("Close: %v", err)
	}
}
