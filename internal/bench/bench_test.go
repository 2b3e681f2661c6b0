package bench

import (
	"bytes"
	"context"
	"encoding/xml"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

func TestQuantiles(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []float64
		q      float64
		want   float64
	}{
		{"median of odd", []float64{3, 1, 2}, .5, 2},
		{"p99 of 100", seq(100), .99, 99},
		{"p50 of 100", seq(100), .5, 50},
		{"max", seq(10), 1, 10},
		{"min", seq(10), 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := append([]float64(nil), tc.values...)
			summarise(s)
			if got := quantile(s, tc.q); got != tc.want {
				t.Fatalf("quantile(%v) = %v, want %v", tc.q, got, tc.want)
			}
		})
	}
	if got := quantile(nil, .5); !math.IsNaN(got) {
		t.Fatalf("quantile of nothing = %v, want NaN", got)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Fatalf("median = %v, want 2.5", m)
	}
}

func seq(n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[n-1-i] = float64(i + 1)
	}
	return out
}

func TestHistogramQuantile(t *testing.T) {
	bounds := []float64{1, 2, 4, math.Inf(1)}
	cum := []uint64{10, 30, 40, 40}
	for _, tc := range []struct {
		q, want float64
	}{{.25, 1}, {.5, 1.5}, {1, 4}} {
		if got := histogramQuantile(tc.q, bounds, cum); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("q %v: %v, want %v", tc.q, got, tc.want)
		}
	}
}

func TestTimestampOf(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{`{"device_id":"d","timestamp":1700000000123,"key_version":"v1"}`, 1700000000123},
		{`{"encrypted_data":"x","metadata":{"device_id":"d","timestamp":17}}`, 17},
		{`{"device_id":"d"}`, 0},
	} {
		if got := timestampOf([]byte(tc.in)); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestParseGoBench(t *testing.T) {
	in := `goos: linux
BenchmarkDecrypt/shapeA-2   	  100000	     10523 ns/op	   4200 cpu-ns/op	     512 B/op	       3 allocs/op
BenchmarkCacheMemory-2      	       1	1234567890 ns/op	       812.5 B/entry
PASS
`
	got, err := ParseGoBench(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "BenchmarkDecrypt/shapeA-2" || got[0].Metrics["B/op"] != 512 || got[0].Metrics["cpu-ns/op"] != 4200 || got[1].Metrics["B/entry"] != 812.5 {
		t.Fatalf("parsed %+v", got)
	}
}

func TestSVGIsWellFormed(t *testing.T) {
	lat := summarise([]float64{5, 10, 20, 40})
	r := &Results{Date: time.Now(), Machine: Machine{CPUs: 2, CPUModel: "test <cpu> & co"}, Drain: &DrainResult{
		Messages: 4, Devices: 2, BareMedian: 100, DecryptdMedian: 90, Ratio: .9, RoundRatios: []float64{.9},
		Runs: []DrainRun{{Side: "bare", Round: 1, Rate: 100, Receipt: lat}, {Side: "decryptd", Round: 1, Rate: 90, Receipt: lat, Sink: &lat}},
	}}
	// A CPU model with markup in it must not break the document.
	var buf bytes.Buffer
	if err := r.WriteSVG(&buf); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(&buf)
	for {
		_, err := dec.Token()
		if err != nil {
			if err.Error() == "EOF" {
				break
			}
			t.Fatalf("SVG is not well-formed XML: %v", err)
		}
	}
}

// TestDrainSmall runs the whole drain on a tiny backlog against a real
// Mosquitto: both sides drain everything, decryptd unwraps each key once,
// and nothing is dead-lettered.
func TestDrainSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	csub := MosquittoSub() != ""
	if !csub && os.Getenv("CI") == "true" {
		t.Fatal("no mosquitto_sub: scripts/test-deps.sh installs mosquitto-clients")
	}
	// Two decryptd connections: the backlog is split over two sessions.
	res, err := Drain(ctx, DrainOptions{Dir: t.TempDir(), Messages: 2000, Devices: 50, Rounds: 1, Workers: 16, MaxInFlight: 256, Connections: 2})
	if err != nil {
		t.Fatal(err)
	}
	want := 2
	if csub {
		want = 3
	}
	if len(res.Runs) != want || res.Connections != 2 {
		t.Fatalf("runs: %+v", res.Runs)
	}
	for _, run := range res.Runs {
		if run.Side == SideCSub {
			if run.Rate <= 0 || run.Messages != 2000 {
				t.Errorf("%s: rate %v", run.Side, run.Rate)
			}
			continue
		}
		if run.Rate <= 0 || run.Receipt.Count != 2000 {
			t.Errorf("%s: rate %v, %d latencies", run.Side, run.Rate, run.Receipt.Count)
		}
	}
	if csub && (res.CSubMedian <= 0 || res.CSubRatio <= 0 || len(res.CSubRoundRatios) != 1) {
		t.Errorf("mosquitto_sub figures missing: %+v", res)
	}
	if len(res.CPUMedianUS) != want {
		t.Errorf("CPU medians %v", res.CPUMedianUS)
	}
	dec := res.Runs[len(res.Runs)-1]
	if dec.Side != "decryptd" || dec.KMSUnwraps != 50 || !res.UnwrapsMatch || dec.DeadLetters != 0 || dec.Delivered != 2000 {
		t.Fatalf("decryptd run: %+v", dec)
	}
	if dec.Sink == nil || dec.Sink.Count != 2000 {
		t.Fatalf("sink latencies: %+v", dec.Sink)
	}
}
