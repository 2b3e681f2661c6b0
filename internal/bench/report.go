package bench

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Results is everything one benchmark run measured; the command writes it
// as JSON.
type Results struct {
	Date      time.Time        `json:"date"`
	Command   string           `json:"command"`
	Machine   Machine          `json:"machine"`
	Micro     []Micro          `json:"micro,omitempty"`
	Drain     *DrainResult     `json:"drain,omitempty"`
	ColdStart *ColdStartResult `json:"cold_start,omitempty"`
	Sinks     *SinkDrainResult `json:"sinks,omitempty"`
	// KafkaDrain is the drain of a Kafka backlog (decryptd-bench -input).
	KafkaDrain *KafkaDrainResult `json:"kafka_drain,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs      int    `json:"nproc"`
	CPUModel  string `json:"cpu_model"`
	MemTotal  int64  `json:"mem_total_bytes"`
	GoVersion string `json:"go_version"`
	Mosquitto string `json:"mosquitto_version"`
	Kernel    string `json:"kernel"`
}

// DescribeMachine reads /proc and asks Mosquitto for its version.
func DescribeMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if f := strings.Fields(rest); len(f) > 0 {
					kb, _ := strconv.ParseInt(f[0], 10, 64)
					m.MemTotal = kb << 10
				}
			}
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	// mosquitto -h prints its version first and exits non-zero.
	out, _ := exec.Command(mosquittoBin(), "-h").CombinedOutput()
	if line, _, _ := strings.Cut(string(out), "\n"); strings.HasPrefix(line, "mosquitto version") {
		m.Mosquitto = strings.TrimSpace(strings.TrimPrefix(line, "mosquitto version"))
	}
	return m
}

// Micro is one Go benchmark result line.
type Micro struct {
	Name       string             `json:"name"`
	Iterations int64              `json:"iterations"`
	Metrics    map[string]float64 `json:"metrics"` // unit -> value (ns/op, B/op, allocs/op, custom)
}

// ParseGoBench reads `go test -bench` output and returns its result lines.
func ParseGoBench(r io.Reader) ([]Micro, error) {
	var out []Micro
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		m := Micro{Name: f[0], Iterations: n, Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			m.Metrics[f[i+1]] = v
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// WriteSummary prints the figures a reader looks for first.
func (r *Results) WriteSummary(w io.Writer) {
	fmt.Fprintf(w, "decryptd benchmarks, %s\n", r.Date.Format("2006-01-02 15:04 MST"))
	m := r.Machine
	fmt.Fprintf(w, "machine: %d CPUs (%s), %.1f GiB, %s, Mosquitto %s, Linux %s\n", m.CPUs, m.CPUModel, float64(m.MemTotal)/(1<<30), m.GoVersion, m.Mosquitto, m.Kernel)
	if len(r.Micro) > 0 {
		fmt.Fprintln(w, "\nmicro-benchmarks:")
		for _, b := range r.Micro {
			var parts []string
			for _, u := range []string{"ns/op", "B/op", "allocs/op", "B/entry", "cpu-ns/op"} {
				if v, ok := b.Metrics[u]; ok {
					parts = append(parts, fmt.Sprintf("%.1f %s", v, u))
				}
			}
			for u, v := range b.Metrics {
				switch u {
				case "ns/op", "B/op", "allocs/op", "B/entry", "cpu-ns/op":
				default:
					parts = append(parts, fmt.Sprintf("%.1f %s", v, u))
				}
			}
			fmt.Fprintf(w, "  %-50s %s\n", b.Name, strings.Join(parts, ", "))
		}
	}
	if d := r.Drain; d != nil {
		transport := "mutual TLS"
		if d.Plain {
			transport = "plain TCP"
		}
		fmt.Fprintf(w, "\ndrain: %d messages, %d devices, broker max_inflight_messages %d, decryptd workers %d, max_in_flight %d, connections %d, GOMAXPROCS %d, %s\n",
			d.Messages, d.Devices, d.BrokerInflight, d.Workers, d.MaxInFlight, d.Connections, d.GOMAXPROCS, transport)
		fmt.Fprintf(w, "  %-5s %-13s %9s %8s %10s %10s %10s %10s %9s %8s\n", "round", "side", "msg/s", "s", "p50 ms", "p99 ms", "CPU µs/msg", "broker µs", "peak MiB", "unwraps")
		for _, run := range d.Runs {
			p50, p99 := fmt.Sprintf("%.0f", run.Receipt.P50), fmt.Sprintf("%.0f", run.Receipt.P99)
			if run.Receipt.Count == 0 {
				p50, p99 = "-", "-" // mosquitto_sub: not measured
			}
			fmt.Fprintf(w, "  %-5d %-13s %9.0f %8.2f %10s %10s %10.1f %10.1f %9.1f %8d\n", run.Round, run.Side, run.Rate, run.Seconds,
				p50, p99, run.CPUPerMsgUS, run.BrokerCPUPerMsgUS, float64(run.PeakRSS)/(1<<20), run.KMSUnwraps)
		}
		verdict := "MET"
		if d.Ratio < 0.85 {
			verdict = "NOT MET"
		}
		fmt.Fprintf(w, "  median bare %.0f msg/s, decryptd %.0f msg/s: ratio %.2f (criterion ≥ 0.85: %s); per round %s\n",
			d.BareMedian, d.DecryptdMedian, d.Ratio, verdict, fmtRatios(d.RoundRatios))
		if d.CSubMedian > 0 {
			verdict := "MET"
			if d.CSubRatio < 0.9 {
				verdict = "NOT MET"
			}
			fmt.Fprintf(w, "  median mosquitto_sub %.0f msg/s, decryptd %.0f msg/s: ratio %.2f (issue 17 criterion ≥ 0.9: %s); per round %s\n",
				d.CSubMedian, d.DecryptdMedian, d.CSubRatio, verdict, fmtRatios(d.CSubRoundRatios))
		}
		if len(d.CPUMedianUS) > 0 {
			var parts []string
			for _, side := range []string{"bare", SideCSub, "decryptd"} {
				if v, ok := d.CPUMedianUS[side]; ok {
					parts = append(parts, fmt.Sprintf("%s %.1f", side, v))
				}
			}
			fmt.Fprintf(w, "  median CPU µs/msg (GOMAXPROCS %d): %s\n", d.GOMAXPROCS, strings.Join(parts, ", "))
		}
		fmt.Fprintf(w, "  KMS unwraps equal the %d distinct key versions in every run: %t\n", d.DistinctKeys, d.UnwrapsMatch)
	}
	if c := r.ColdStart; c != nil {
		fmt.Fprintf(w, "\ncold start: %d devices, Key Protect emulator at %.0f ms, unwrap cap %d, workers %d\n", c.Devices, c.KMSLatencyMS, c.MaxConcurrentUnwraps, c.Workers)
		fmt.Fprintf(w, "  unwraps %d (one per key: %t), peak in flight %d (cap respected: %t)\n", c.Unwraps, c.UnwrapsMatch, c.PeakInFlight, c.CapRespected)
		fmt.Fprintf(w, "  every key cached after %.1f s (cap's bound %.1f s), every record delivered after %.1f s\n", c.AllCachedSeconds, c.LowerBoundSeconds, c.AllDeliveredSeconds)
		fmt.Fprintf(w, "  memory: idle heap %.1f MiB, loaded %.1f MiB (%.0f B/DEK); idle RSS %.1f MiB, loaded %.1f MiB (%.0f B/DEK); peak RSS %.1f MiB\n",
			mib(c.IdleHeap), mib(c.LoadedHeap), c.HeapPerDEK, mib(c.IdleRSS), mib(c.LoadedRSS), c.RSSPerDEK, mib(c.PeakRSS))
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func fmtRatios(rs []float64) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = fmt.Sprintf("%.2f", r)
	}
	return strings.Join(s, ", ")
}
