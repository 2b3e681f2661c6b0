package kafkainput

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/decryptd/decryptd/internal/intake"
)

// coldKeyWindow is a Window whose first Remember of each device waits
// delay, as the decryptor waits for a cold key's KMS round trip. It checks
// the rebuild's routing contract: a device's records come from one
// goroutine at a time in offset order, so its key is "loaded" once. Every
// failEvery-th device (0: none) answers its first Remember with a key
// fault, which the rebuild must retry. kms, when set, bounds the loads
// in flight as the key cache's MaxConcurrentUnwraps does (16 by default).
type coldKeyWindow struct {
	t         testing.TB
	delay     time.Duration
	failEvery int
	kms       chan struct{}

	mu      sync.Mutex
	loaded  map[string]bool
	failed  map[string]bool
	busy    map[string]bool
	last    map[string]int
	loads   int
	records int
	faults  int
}

func newColdKeyWindow(t testing.TB, delay time.Duration, failEvery int) *coldKeyWindow {
	return &coldKeyWindow{t: t, delay: delay, failEvery: failEvery,
		loaded: map[string]bool{}, failed: map[string]bool{}, busy: map[string]bool{}, last: map[string]int{}}
}

var errKeyFault = errors.New("key fault (test)")

func (w *coldKeyWindow) Remember(ctx context.Context, m intake.Message) error {
	_, seq := parseValue(w.t, m.Payload)
	dev := m.DeviceID
	w.mu.Lock()
	if w.busy[dev] {
		w.t.Errorf("device %s remembered by two goroutines at once", dev)
	}
	w.busy[dev] = true
	cold := !w.loaded[dev]
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.busy[dev] = false
		w.mu.Unlock()
	}()
	if cold {
		if w.kms != nil {
			select {
			case w.kms <- struct{}{}:
				defer func() { <-w.kms }()
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		select {
		case <-time.After(w.delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if cold {
		w.loads++
		if w.failEvery > 0 && !w.failed[dev] && len(w.failed)%w.failEvery == 0 {
			// A transient fault: the key stays cold, the record
			// unremembered; the rebuild retries.
			w.failed[dev] = true
			w.faults++
			return errKeyFault
		}
		w.failed[dev] = true
		w.loaded[dev] = true
	}
	if l, ok := w.last[dev]; ok && seq <= l {
		w.t.Errorf("device %s: seq %d remembered after %d", dev, seq, l)
	}
	w.last[dev] = seq
	w.records++
	return nil
}

func (w *coldKeyWindow) counts() (records, loads, faults, devices int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.records, w.loads, w.faults, len(w.loaded)
}

// coldRebuild produces parts partitions of perPart records over devices
// devices each and rebuilds all of them (committed offset: their end)
// into a fresh coldKeyWindow; it returns the window and the input.
func coldRebuild(t testing.TB, parts int32, perPart, devices, workers int, delay, timeout time.Duration, failEvery, kms int, mods ...func(*Options)) (*coldKeyWindow, *Input) {
	c := fakeCluster(t, parts)
	produce(t, c, parts, perPart, devices)
	win := newColdKeyWindow(t, delay, failEvery)
	if kms > 0 {
		win.kms = make(chan struct{}, kms)
	}
	in := newInput(t, c, newFakeProc(t, 0), func(o *Options) {
		o.Window = win
		o.ReplayRebuildWorkers = workers
		o.ReplayRebuildTimeout = timeout
		for _, m := range mods {
			m(o)
		}
	})
	var rp []rebuildPart
	for p := range parts {
		rp = append(rp, rebuildPart{tp: tp{testTopic, p}, end: int64(perPart)})
	}
	in.rebuild(context.Background(), rp)
	return win, in
}

// TestRebuildColdKeysConcurrent: 1,000 devices over 4 partitions, 3,000
// records, each device's key taking 25 ms to load (25 s one device after
// another), at most 16 loads at once (the key cache's default
// MaxConcurrentUnwraps). With the default worker pool the rebuild
// remembers every record within a 10 s timeout (it needs about 1,000/16
// x 25 ms = 1.6 s), each device's key loaded once, its records in order,
// every 50th device's first key fault retried; the truncation metric
// stays 0.
func TestRebuildColdKeysConcurrent(t *testing.T) {
	const parts, perPart, devices = 4, 750, 250
	win, in := coldRebuild(t, parts, perPart, devices, 0, 25*time.Millisecond, 10*time.Second, 50, 16)
	records, loads, faults, devs := win.counts()
	if tr := testutil.ToFloat64(in.m.rebuildTruncated); tr != 0 {
		t.Fatalf("rebuild truncated %v partitions (remembered %d of %d records)", tr, records, parts*perPart)
	}
	if records != parts*perPart || devs != parts*devices {
		t.Fatalf("remembered %d records of %d devices, want %d of %d", records, devs, parts*perPart, parts*devices)
	}
	if got := testutil.ToFloat64(in.m.rebuilt); got != parts*perPart {
		t.Errorf("decryptd_kafka_replay_rebuild_records_total %v, want %d", got, parts*perPart)
	}
	if faults == 0 || loads != devs+faults {
		t.Errorf("%d key loads for %d devices with %d faults: a key loaded more than once", loads, devs, faults)
	}
}

// TestRebuildColdKeysSerialTruncates is the same rebuild one record at a
// time (one worker, the former behaviour): 1,000 cold keys at 25 ms need
// 25 s, so within a 1 s timeout it stops early and counts the partitions
// truncated. It shows what the concurrent test's figure is measured
// against.
func TestRebuildColdKeysSerialTruncates(t *testing.T) {
	const parts, perPart, devices = 4, 750, 250
	core, logs := observer.New(zap.WarnLevel)
	win, in := coldRebuild(t, parts, perPart, devices, 1, 25*time.Millisecond, time.Second, 0, 16,
		func(o *Options) { o.Logger = zap.New(core) })
	records, _, _, _ := win.counts()
	tr := testutil.ToFloat64(in.m.rebuildTruncated)
	if tr == 0 {
		t.Fatalf("a serial rebuild of 1,000 cold keys fit in 1 s (%d records)", records)
	}
	// The warning names the partitions truncated (topic and numbers,
	// as many as counted) and nothing of their records.
	warns := logs.FilterMessageSnippet("replay window rebuild stopped").All()
	if len(warns) != 1 {
		t.Fatalf("%d truncation warnings, want 1", len(warns))
	}
	named, _ := warns[0].ContextMap()["partitions"].(map[string][]int32)
	if ps := named[testTopic]; len(named) != 1 || float64(len(ps)) != tr || !slices.IsSorted(ps) || ps[0] < 0 || ps[len(ps)-1] >= parts {
		t.Errorf("warning names partitions %v; want the %v truncated of %s, sorted", named, tr, testTopic)
	}
	if line := fmt.Sprint(warns[0].ContextMap()); strings.Contains(line, "dev/") {
		t.Errorf("warning carries record data: %s", line)
	}
	if records >= parts*perPart {
		t.Fatalf("remembered all %d records, yet truncated", records)
	}
	t.Logf("serial: %d of %d records remembered before the 1 s timeout, %v partitions truncated",
		records, parts*perPart, testutil.ToFloat64(in.m.rebuildTruncated))
}

// BenchmarkRebuildColdKeys: a rebuild of 200 devices (400 records, 2
// partitions) whose keys take 5 ms each to load, by worker count, with
// loads unbounded and bounded to 16 at once (the key cache's default
// MaxConcurrentUnwraps). Wall time per rebuild is the figure (it waits
// for keys, not the CPU).
func BenchmarkRebuildColdKeys(b *testing.B) {
	for _, bc := range []struct{ workers, kms int }{{1, 0}, {8, 0}, {64, 0}, {64, 16}} {
		b.Run(fmt.Sprintf("workers=%d/kms=%d", bc.workers, bc.kms), func(b *testing.B) {
			const parts, perPart, devices = 2, 200, 100
			c := fakeCluster(b, parts)
			produce(b, c, parts, perPart, devices)
			var rp []rebuildPart
			for p := range int32(parts) {
				rp = append(rp, rebuildPart{tp: tp{testTopic, p}, end: perPart})
			}
			for b.Loop() {
				win := newColdKeyWindow(b, 5*time.Millisecond, 0)
				if bc.kms > 0 {
					win.kms = make(chan struct{}, bc.kms)
				}
				in := newInput(b, c, newFakeProc(b, 0), func(o *Options) {
					o.Window = win
					o.ReplayRebuildWorkers = bc.workers
					o.ReplayRebuildTimeout = time.Minute
				})
				in.rebuild(context.Background(), append([]rebuildPart(nil), rp...))
				if r, _, _, _ := win.counts(); r != parts*perPart {
					b.Fatalf("remembered %d of %d", r, parts*perPart)
				}
			}
		})
	}
}

// BenchmarkRebuildWarmCPU: the pool's CPU cost when no key waits (every
// key warm after its first record, no delay): 20,000 records of 500
// devices, by worker count. cpu-ns/record is the process's user+system
// CPU (the in-process broker's included, the same for both) per record
// remembered.
func BenchmarkRebuildWarmCPU(b *testing.B) {
	for _, workers := range []int{1, 64} {
		b.Run(map[int]string{1: "workers=1", 64: "workers=64"}[workers], func(b *testing.B) {
			const parts, perPart, devices = 2, 10_000, 250
			c := fakeCluster(b, parts)
			produce(b, c, parts, perPart, devices)
			var rp []rebuildPart
			for p := range int32(parts) {
				rp = append(rp, rebuildPart{tp: tp{testTopic, p}, end: perPart})
			}
			cpu0 := cpuTime()
			for b.Loop() {
				win := newColdKeyWindow(b, 0, 0)
				in := newInput(b, c, newFakeProc(b, 0), func(o *Options) {
					o.Window = win
					o.ReplayRebuildWorkers = workers
					o.ReplayRebuildTimeout = time.Minute
				})
				in.rebuild(context.Background(), append([]rebuildPart(nil), rp...))
				if r, _, _, _ := win.counts(); r != parts*perPart {
					b.Fatalf("remembered %d of %d", r, parts*perPart)
				}
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N*parts*perPart), "cpu-ns/record")
		})
	}
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRebuildColdKeysLookback: the default replay_lookback's worth,
// 100,000 records of 5,000 devices over 4 partitions, every key cold (25
// ms, Key Protect's order), at most 16 loads at once; the default 64
// workers. One record at a time this is 5,000 x 25 ms = 125 s, past the
// 30 s default timeout. Run it with -benchtime=1x.
func BenchmarkRebuildColdKeysLookback(b *testing.B) {
	const parts, perPart, devices = 4, 25_000, 1_250
	c := fakeCluster(b, parts)
	produce(b, c, parts, perPart, devices)
	var rp []rebuildPart
	for p := range int32(parts) {
		rp = append(rp, rebuildPart{tp: tp{testTopic, p}, end: perPart})
	}
	for b.Loop() {
		win := newColdKeyWindow(b, 25*time.Millisecond, 0)
		win.kms = make(chan struct{}, 16)
		in := newInput(b, c, newFakeProc(b, 0), func(o *Options) { o.Window = win })
		in.rebuild(context.Background(), append([]rebuildPart(nil), rp...))
		if tr := testutil.ToFloat64(in.m.rebuildTruncated); tr != 0 {
			b.Fatalf("truncated %v partitions", tr)
		}
		if r, _, _, _ := win.counts(); r != parts*perPart {
			b.Fatalf("remembered %d of %d", r, parts*perPart)
		}
	}
}
