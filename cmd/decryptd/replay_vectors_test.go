package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/testutil/keyenv"
	"github.com/decryptd/decryptd/internal/testutil/vectors"
)

// TestReplayCommandVectors runs every public vector, in order, through
// `decryptd replay` as dead letters (the vectors' keys imported as `dekctl
// import` does): each ok case's record comes out once, the exact repeat is
// a duplicate (cause repeat) and nothing more, each failure is
// dead-lettered again under its reason.
func TestReplayCommandVectors(t *testing.T) {
	v := vectors.Load(t)
	dir := t.TempDir()
	keyenv.ImportVectors(t, dir, "", v)
	records, dead := filepath.Join(dir, "records.jsonl"), filepath.Join(dir, "dead-letter.jsonl")
	cfg := fmt.Sprintf(`
mqtt:
  brokers: [ssl://127.0.0.1:8883]
  topics: ["iot-2/type/+/id/+/evt/+/fmt/+"]
kms:
  provider: local
  local: {root_key_file: %q}
registry: {driver: file, path: %q}
sinks:
  - {name: records, type: file, path: %q}
dead_letter: {type: file, path: %q}
audit: {path: %q}
log: {level: error}
`, filepath.Join(dir, "root-key.json"), filepath.Join(dir, "registry.json"), records, dead, filepath.Join(dir, "decryptd-audit.log"))
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var in bytes.Buffer
	wantOK, wantDup, wantReasons := 0, 0, map[string]int{}
	for _, c := range v.Cases {
		d := sink.DeadLetter{Reason: "unknown_key", Error: "before the keys were imported", Message: intake.Message{Topic: c.Topic,
			ReceivedAt: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC), Payload: []byte(c.Message)}}
		in.Write(d.Record().JSON)
		in.WriteByte('\n')
		switch {
		case c.Expect.OK:
			wantOK++
		case c.Expect.Duplicate:
			wantDup++
		default:
			wantReasons[c.Expect.Reason]++
		}
	}
	inPath := filepath.Join(dir, "old-dead-letters.jsonl")
	if err := os.WriteFile(inPath, in.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}

	last, sum := runReplay(t, cfgPath, inPath)
	if sum.Processed != len(v.Cases) || sum.Delivered != wantOK || sum.Duplicates != wantDup ||
		sum.ByCause["repeat"] != wantDup || sum.ByCause["redelivery"] != 0 {
		t.Errorf("summary %s; want %d processed, %d delivered, %d duplicates (repeat)", last, len(v.Cases), wantOK, wantDup)
	}
	for r, n := range sum.Reasons {
		if n != wantReasons[r] {
			t.Errorf("reasons[%s] = %d, want %d", r, n, wantReasons[r])
		}
	}

	// The records, by id: each ok case's once, and nothing else.
	byID := map[string][][]byte{}
	for _, l := range readLines(t, records) {
		var r struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatalf("record line: %v", err)
		}
		byID[r.ID] = append(byID[r.ID], l)
	}
	if len(byID) != wantOK {
		t.Errorf("%d distinct records, want %d", len(byID), wantOK)
	}
	for _, c := range v.Cases {
		if !c.Expect.OK {
			continue
		}
		var id string
		if err := json.Unmarshal(c.Expect.Record["id"], &id); err != nil {
			t.Fatal(err)
		}
		if got := byID[id]; len(got) != 1 {
			t.Errorf("case %s: record written %d times, want once", c.Name, len(got))
		} else if err := vectors.Diff(got[0], c.Expect); err != nil {
			t.Errorf("case %s: %v", c.Name, err)
		}
	}
	if got := len(readLines(t, dead)); got != sum.DeadLettered || got != len(v.Cases)-wantOK-wantDup {
		t.Errorf("%d dead letters written, summary says %d, want %d", got, sum.DeadLettered, len(v.Cases)-wantOK-wantDup)
	}
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) > 0 {
			out = append(out, bytes.Clone(sc.Bytes()))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// replaySummary is the line `decryptd replay` prints last.
type replaySummary struct {
	Processed    int            `json:"processed"`
	Delivered    int            `json:"delivered"`
	DeadLettered int            `json:"dead_lettered"`
	Duplicates   int            `json:"duplicates"`
	ByCause      map[string]int `json:"duplicates_by_cause"`
	Reasons      map[string]int `json:"reasons"`
	KMSUnwraps   *int           `json:"kms_unwraps"`
}

// runReplay runs `decryptd replay --config cfgPath --in inPath`, fails the
// test unless it exits OK, and returns its last line, as printed and
// parsed as the summary.
func runReplay(t *testing.T, cfgPath, inPath string) (string, replaySummary) {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := run([]string{"replay", "--config", cfgPath, "--in", inPath}, &out, &errOut); code != exitOK {
		t.Fatalf("exit %d\nstderr: %s", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	last := lines[len(lines)-1]
	var sum replaySummary
	if err := json.Unmarshal([]byte(last), &sum); err != nil {
		t.Fatalf("last line %q: %v", last, err)
	}
	return last, sum
}
