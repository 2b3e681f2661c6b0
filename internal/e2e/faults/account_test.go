package faults_test

import (
	"crypto/sha256"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/fleet"
)

// result is one row of the table.
type result struct {
	Fault        string
	Sent         int            // messages the broker acknowledged (good + bad)
	Delivered    int            // unique good records in the sink
	Duplicates   int            // sink lines beyond the first of an id
	DeadLettered map[string]int // correctly dead-lettered, by reason
	Lost         int            // good messages decryptd received and did not deliver (must be 0)
	LostBroker   int            // good messages acknowledged by the broker that never reached decryptd
	Recover      time.Duration  // fault over -> delivery resumed
	RecoverBound time.Duration
	Swapped      int  // replays decryptd took before their originals
	Held         bool // the scenario's assertions held (so far: the log scan runs after)
	PeakRSS      int64
	Budget       int64
	Note         string
}

var (
	tableMu   sync.Mutex
	table     []result
	scanLines int
	scanKeys  int
	scanHits  int
)

func record(r result) {
	tableMu.Lock()
	defer tableMu.Unlock()
	table = append(table, r)
}

func recordSecretScan(lines, secrets, hits int) {
	tableMu.Lock()
	defer tableMu.Unlock()
	scanLines += lines
	scanKeys += secrets
	scanHits += hits
}

// account counts what the sink(s) and the dead-letter file hold against
// what the gateways sent, and checks the books: every sink record was
// sent, every dead letter is a bad message with its expected reason, no
// good message dead-lettered. missing is the set of good ids not in any
// sink.
func account(t *testing.T, s *sender, sinks []string, deadLetters []string) (r result, missing []string) {
	t.Helper()
	s.mu.Lock()
	good := make(map[string]string, len(s.good))
	for k, v := range s.good {
		good[k] = v
	}
	bad := make(map[[32]byte]badSent, len(s.bad))
	nbad := 0
	for k, v := range s.bad {
		bad[k] = v
		nbad += v.n
	}
	s.mu.Unlock()
	r.Sent = len(good) + nbad
	have := map[string]int{}
	lines := 0
	for _, p := range sinks {
		sr := readSink(p)
		lines += len(sr.ids)
		for _, id := range sr.ids {
			have[id]++
		}
	}
	for id := range have {
		if _, ok := good[id]; !ok {
			t.Errorf("record %s in the sink was never sent", id)
		}
	}
	for id := range good {
		if have[id] > 0 {
			r.Delivered++
		} else {
			missing = append(missing, id)
		}
	}
	r.Duplicates = lines - len(have)
	r.DeadLettered = map[string]int{}
	wrong := map[string]int{}
	seenBad := map[[32]byte]int{}
	for _, p := range deadLetters {
		for _, dl := range readDeadLetters(p) {
			want, ok := bad[dl.payload]
			if !ok && dl.reason == "replay" {
				// A replay and its original raced (decryptd's workers
				// took the copy first): the original is dead-lettered as
				// the replay, the copy delivered under the same record
				// id. Counted as the copy's dead letter.
				if h := sha256.Sum256(fleet.ReplayOf(dl.raw)); bad[h].reason == "replay" {
					dl.payload, want, ok = h, bad[h], true
					r.Swapped++
				}
			}
			switch {
			case !ok:
				wrong["not a bad message ("+dl.reason+")"]++
			case want.reason != dl.reason:
				wrong[fmt.Sprintf("%s, want %s", dl.reason, want.reason)]++
			case seenBad[dl.payload] >= want.n:
				// The same bad message dead-lettered again (a
				// redelivery after a kill): not a new one.
				r.Duplicates++
			default:
				seenBad[dl.payload]++
				r.DeadLettered[dl.reason]++
			}
		}
	}
	for k, v := range wrong {
		t.Errorf("dead letters: %d %s", v, k)
	}
	dl := 0
	for _, n := range seenBad {
		dl += n
	}
	if n := nbad - dl; n != 0 {
		t.Errorf("%d bad messages sent but not dead-lettered", n)
	}
	return r, missing
}

// bookkeep finishes a row: the peak RSS against the budget, the recovery
// bound, then records it.
func bookkeep(t *testing.T, r result) {
	t.Helper()
	if r.Lost != 0 {
		t.Errorf("%s: decryptd lost %d records", r.Fault, r.Lost)
	}
	if r.Budget > 0 && r.PeakRSS > r.Budget {
		t.Errorf("%s: peak RSS %s above the configured budget %s", r.Fault, mib(r.PeakRSS), mib(r.Budget))
	}
	if r.RecoverBound > 0 && r.Recover > r.RecoverBound {
		t.Errorf("%s: recovery took %s, bound %s", r.Fault, r.Recover.Round(time.Millisecond), r.RecoverBound)
	}
	if r.Swapped > 0 {
		t.Logf("%s: %d replays were taken before their originals (same device, same connection)", r.Fault, r.Swapped)
		r.Note = strings.TrimSpace(r.Note + fmt.Sprintf(" %d replays taken before their originals", r.Swapped))
	}
	r.Held = !t.Failed()
	t.Logf("%s: sent %d, delivered %d unique, %d duplicates, dead-lettered %v, lost %d (at broker %d), recovered in %s (bound %s), peak RSS %s of budget %s %s",
		r.Fault, r.Sent, r.Delivered, r.Duplicates, r.DeadLettered, r.Lost, r.LostBroker, r.Recover.Round(time.Millisecond), r.RecoverBound, mib(r.PeakRSS), mib(r.Budget), r.Note)
	record(r)
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// writeTable writes DECRYPTD_FAULTS_TABLE (markdown) if set.
func writeTable() error {
	path := os.Getenv("DECRYPTD_FAULTS_TABLE")
	if path == "" {
		return nil
	}
	tableMu.Lock()
	defer tableMu.Unlock()
	sort.SliceStable(table, func(i, j int) bool { return table[i].Fault < table[j].Fault })
	var b strings.Builder
	form := "short form (go test)"
	if full {
		form = "long form (DECRYPTD_FAULTS=full)"
	}
	fmt.Fprintf(&b, "<!-- generated by internal/e2e/faults, %s, %s -->\n\n", form, time.Now().UTC().Format("2006-01-02 15:04 MST"))
	b.WriteString("| fault | sent | unique delivered | duplicates | dead-lettered by reason | lost (decryptd) | lost at broker | time to recover (bound) | peak RSS (budget) | held |\n")
	b.WriteString("|---|--:|--:|--:|---|--:|--:|---|---|---|\n")
	for _, r := range table {
		var dl []string
		for k, v := range r.DeadLettered {
			dl = append(dl, fmt.Sprintf("%s %d", k, v))
		}
		sort.Strings(dl)
		dls := strings.Join(dl, ", ")
		if dls == "" {
			dls = "0"
		}
		fault := r.Fault
		if r.Note != "" {
			fault += " (" + r.Note + ")"
		}
		rec := "n/a (no outage)"
		if r.RecoverBound > 0 {
			rec = fmt.Sprintf("%s (%s)", r.Recover.Round(100*time.Millisecond), r.RecoverBound)
		}
		rss := mib(r.PeakRSS)
		if r.Budget > 0 {
			rss += " (" + mib(r.Budget) + ")"
		}
		held := "yes"
		if !r.Held {
			held = "**no**"
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %s | %d | %d | %s | %s | %s |\n",
			fault, r.Sent, r.Delivered, r.Duplicates, dls, r.Lost, r.LostBroker, rec, rss, held)
	}
	fmt.Fprintf(&b, "\nSecret scan: %d log lines (decryptd, kpemu, Mosquitto), %d planted secrets checked: %d found.\n", scanLines, scanKeys, scanHits)
	// A file holding the markers gets the table between them (the prose
	// around it stays); any other file is the table alone.
	const begin, end = "<!-- faults-table:begin -->\n", "<!-- faults-table:end -->"
	if old, err := os.ReadFile(path); err == nil {
		i, j := strings.Index(string(old), begin), strings.Index(string(old), end)
		if i >= 0 && j > i {
			out := string(old[:i+len(begin)]) + b.String() + string(old[j:])
			return os.WriteFile(path, []byte(out), 0o644)
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
