package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRecordLatencies dates each line by the first size sample that holds
// its end, newline included: a sample in the middle of a line does not
// count for it.
func TestRecordLatencies(t *testing.T) {
	start := time.UnixMilli(1_700_000_000_000).UTC()
	recv := start.Add(5 * time.Millisecond).Format(time.RFC3339Nano)
	var lines []string
	for range 3 {
		lines = append(lines, fmt.Sprintf(`{"device_id":"d","timestamp":%d,"received_at":%q}`+"\n", start.UnixMilli(), recv))
	}
	lines = append(lines, `{"device_id":"no timestamp"}`+"\n")
	path := filepath.Join(t.TempDir(), "records.jsonl")
	var data []byte
	for _, l := range lines {
		data = append(data, l...)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	end := func(k int) int64 { // end offset of line k (0-based)
		var n int64
		for _, l := range lines[:k+1] {
			n += int64(len(l))
		}
		return n
	}
	samples := []sizeSample{
		{at: 10 * time.Millisecond, size: end(0) - 1}, // line 0 without its newline
		{at: 20 * time.Millisecond, size: end(1)},
		{at: 30 * time.Millisecond, size: end(3)},
	}
	receipt, sink, n, err := recordLatencies(path, samples, start)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Fatalf("%d lines, want 4", n)
	}
	if receipt.Count != 3 || receipt.P50 != 5 || receipt.Max != 5 {
		t.Errorf("receipt %+v, want 3 of 5 ms", receipt)
	}
	// Lines 0 and 1 at 20 ms, line 2 at 30 ms.
	if sink.Count != 3 || sink.P50 != 20 || sink.Max != 30 {
		t.Errorf("sink %+v, want 20, 20, 30 ms", sink)
	}
}

func TestSizeTimeline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "records.jsonl")
	w, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	st, err := openSizeTimeline(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	start := time.Now()
	poll := func() {
		t.Helper()
		if err := st.poll(start); err != nil {
			t.Fatal(err)
		}
	}
	poll() // empty: no sample
	if _, err := w.WriteString("a\nbb\n"); err != nil {
		t.Fatal(err)
	}
	poll()
	poll() // unchanged: no sample
	if _, err := w.WriteString("ccc\n"); err != nil {
		t.Fatal(err)
	}
	poll()
	if len(st.samples) != 2 || st.samples[0].size != 5 || st.samples[1].size != 9 || st.samples[1].at < st.samples[0].at {
		t.Fatalf("samples %+v, want sizes 5 and 9", st.samples)
	}
}

func TestCheckIn(t *testing.T) {
	for _, tc := range []struct {
		remaining, rate float64
		want            time.Duration
	}{
		{0, 1000, pollEvery},  // delivered: the acknowledgements follow
		{-5, 0, pollEvery},    // more than asked for
		{100, 0, sampleEvery}, // no pace yet
		{1000, 10_000, 50 * time.Millisecond},
		{10, 10_000, pollEvery},        // half of 1 ms, held to a poll
		{100_000, 10_000, sampleEvery}, // far off
	} {
		if got := checkIn(tc.remaining, tc.rate); got != tc.want {
			t.Errorf("checkIn(%v, %v) = %v, want %v", tc.remaining, tc.rate, got, tc.want)
		}
	}
}
