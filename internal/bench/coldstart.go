package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/kms/keyprotect"
	"github.com/decryptd/decryptd/internal/kpemu"
)

// ColdStartOptions configure the cold start benchmark.
type ColdStartOptions struct {
	Dir     string
	Devices int // distinct device keys, one first message each (default 20,000)
	// KMSLatency is the emulated Key Protect's answer delay (default 20ms).
	KMSLatency time.Duration
	// MaxConcurrentUnwraps is the key cache's cap (default the
	// configuration's, 16).
	MaxConcurrentUnwraps int
	// Workers and MaxInFlight as for the drain (defaults the
	// configuration's, which keep enough first messages in progress at once
	// to reach the cap).
	Workers, MaxInFlight int
	PublishConns         int
	// AuditDir: as DrainOptions.AuditDir.
	AuditDir string
	Progress io.Writer
	Logger   *zap.Logger
}

func (o *ColdStartOptions) defaults() {
	if o.Devices <= 0 {
		o.Devices = 20_000
	}
	if o.KMSLatency <= 0 {
		o.KMSLatency = 20 * time.Millisecond
	}
	if o.MaxConcurrentUnwraps <= 0 {
		o.MaxConcurrentUnwraps = config.DefaultMaxUnwraps
	}
	daemonDefaults(&o.Workers, &o.MaxInFlight)
	if o.PublishConns <= 0 {
		o.PublishConns = 8
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
}

// ColdStartResult is the cold start benchmark.
type ColdStartResult struct {
	Devices              int     `json:"devices"`
	KMSLatencyMS         float64 `json:"kms_latency_ms"`
	MaxConcurrentUnwraps int     `json:"max_concurrent_unwraps"`
	Workers              int     `json:"workers"`
	MaxInFlight          int     `json:"max_in_flight"`
	// Unwraps is what the emulator counted; DaemonUnwraps what the daemon
	// audited.
	Unwraps       int64  `json:"kms_unwraps"`
	DaemonUnwraps uint64 `json:"daemon_unwraps"`
	// PeakInFlight is the most unwrap requests the emulator held at once.
	PeakInFlight int64 `json:"peak_unwraps_in_flight"`
	// AllCachedSeconds: from the daemon's start to its last unwrap (every
	// key cached); AllDeliveredSeconds to the sink holding every record.
	AllCachedSeconds    float64 `json:"all_keys_cached_s"`
	AllDeliveredSeconds float64 `json:"all_delivered_s"`
	// LowerBoundSeconds is Devices × latency / cap, the best the cap
	// allows.
	LowerBoundSeconds float64 `json:"lower_bound_s"`
	CacheEntries      float64 `json:"cache_entries"`
	// Memory: the daemon built and idle (registry loaded, cache empty)
	// versus every key cached, after a full GC each: Go heap and RSS.
	IdleHeap       int64   `json:"idle_heap_bytes"`
	LoadedHeap     int64   `json:"loaded_heap_bytes"`
	IdleRSS        int64   `json:"idle_rss_bytes"`
	LoadedRSS      int64   `json:"loaded_rss_bytes"`
	PeakRSS        int64   `json:"peak_rss_bytes"`
	HeapPerDEK     float64 `json:"heap_bytes_per_dek"`
	RSSPerDEK      float64 `json:"rss_bytes_per_dek"`
	ProvisionSecs  float64 `json:"provision_s"`
	DeadLetters    float64 `json:"dead_letters"`
	CapRespected   bool    `json:"cap_respected"`
	UnwrapsMatch   bool    `json:"unwraps_match_devices"`
	KeyProtectPath string  `json:"kms_path"`
}

// unwrapGauge wraps the emulator's handler and records how many unwrap
// requests it holds at once, and the most ever.
type unwrapGauge struct {
	next      http.Handler
	now, peak atomic.Int64
}

func (g *unwrapGauge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/actions/unwrap") {
		n := g.now.Add(1)
		for {
			p := g.peak.Load()
			if n <= p || g.peak.CompareAndSwap(p, n) {
				break
			}
		}
		defer g.now.Add(-1)
	}
	g.next.ServeHTTP(w, r)
}

// ColdStart provisions Devices keys in the Key Protect emulator (through
// the real keyprotect provider), queues one first message per device in
// decryptd's session, then starts decryptd with the emulator answering
// after KMSLatency and measures the unwraps, their peak concurrency, the
// time until every key is cached, and the memory the cached keys take.
func ColdStart(ctx context.Context, o ColdStartOptions) (*ColdStartResult, error) {
	o.defaults()
	say := func(format string, args ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", args...)
		}
	}
	emu := kpemu.New(kpemu.Options{})
	defer emu.Close()
	gauge := &unwrapGauge{next: emu}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: gauge, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	base := "http://" + ln.Addr().String()
	rootID, err := emu.CreateRootKey("bench-root")
	if err != nil {
		return nil, err
	}
	const apiKeyEnv = "DECRYPTD_BENCH_KP_API_KEY"
	getenv := func(string) string { return kpemu.DefaultAPIKey }
	kpCfg := keyprotect.Config{BaseURL: base, TokenURL: base + kpemu.TokenPath, InstanceID: emu.InstanceID(), RootKeyID: rootID, APIKeyEnv: apiKeyEnv}
	kp, err := keyprotect.New(ctx, kpCfg, keyprotect.WithGetenv(getenv))
	if err != nil {
		return nil, err
	}

	b, err := StartBroker(BrokerOptions{Dir: filepath.Join(o.Dir, "broker"), MaxInflight: o.MaxInFlight, MaxQueued: 2*o.Devices + 1000, Autosave: 60})
	if err != nil {
		kp.Close()
		return nil, err
	}
	defer b.Stop()
	_, pubTLS, err := b.ClientTLS("telemsim")
	if err != nil {
		kp.Close()
		return nil, err
	}
	clientFiles, clientTLS, err := b.ClientTLS("decryptd")
	if err != nil {
		kp.Close()
		return nil, err
	}

	keysDir := filepath.Join(o.Dir, "keys")
	if err := os.MkdirAll(keysDir, 0o700); err != nil {
		kp.Close()
		return nil, err
	}
	regFile := filepath.Join(keysDir, "registry.json")
	say("cold start: provisioning %d device keys through Key Protect (emulated, no latency yet)", o.Devices)
	pstart := time.Now()
	f, err := provision(ctx, o.Devices, kp, regFile, 32, nil)
	kp.Close()
	if err != nil {
		return nil, fmt.Errorf("bench: provision: %w", err)
	}
	res := &ColdStartResult{Devices: o.Devices, KMSLatencyMS: float64(o.KMSLatency.Microseconds()) / 1000,
		MaxConcurrentUnwraps: o.MaxConcurrentUnwraps, Workers: o.Workers, MaxInFlight: o.MaxInFlight,
		ProvisionSecs: time.Since(pstart).Seconds(), KeyProtectPath: "internal/kms/keyprotect → HTTP → internal/kpemu"}
	res.LowerBoundSeconds = float64(o.Devices) * o.KMSLatency.Seconds() / float64(o.MaxConcurrentUnwraps)
	say("cold start: provisioned in %.1f s", res.ProvisionSecs)

	const id = "bench-cold"
	if err := prepareSession(b.URL, clientTLS, id); err != nil {
		return nil, err
	}
	// One message per device: a backlog of exactly Devices messages over a
	// fleet of Devices devices is each device's first message.
	if _, err := publishBacklog(ctx, b.URL, pubTLS, f, o.Devices, o.PublishConns, 7, o.Progress, "cold start"); err != nil {
		return nil, err
	}
	f = nil // drop the fleet's ciphers before the idle measurement
	say("cold start: %d first messages queued", o.Devices)

	dir := filepath.Join(o.Dir, "decryptd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cfg := daemonConfig(dir, b.URL, clientFiles, id, o.Workers, o.MaxInFlight, regFile)
	cfg.KMS = config.KMS{Provider: config.ProviderKeyProtect, KeyProtect: config.KeyProtect{
		BaseURL: kpCfg.BaseURL, TokenURL: kpCfg.TokenURL, InstanceID: kpCfg.InstanceID, RootKeyID: rootID,
		APIKeyEnv: apiKeyEnv, Timeout: config.DefaultKeyProtectTimeout}}
	if o.AuditDir != "" {
		cfg.Audit.Path = filepath.Join(o.AuditDir, "audit-cold.log")
	}
	cfg.Cache.MaxConcurrentUnwraps = o.MaxConcurrentUnwraps
	cfg.Cache.MaxEntries = max(cfg.Cache.MaxEntries, o.Devices)
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	reg := prometheus.NewRegistry()
	d, err := daemon.New(ctx, daemon.Options{Config: cfg, Registry: reg, Logger: o.Logger, Version: "bench",
		Env: func(name string) (string, bool) {
			if name == apiKeyEnv {
				return kpemu.DefaultAPIKey, true
			}
			return "", false
		}})
	if err != nil {
		return nil, fmt.Errorf("daemon.New: %w", err)
	}
	tail, err := openTail(filepath.Join(dir, "records.jsonl"))
	if err != nil {
		_ = d.Close(context.Background())
		return nil, err
	}
	defer tail.close()

	emu.SetFaults(kpemu.Faults{Latency: o.KMSLatency})
	emu.ResetCalls()
	gauge.peak.Store(0)
	settle()
	res.IdleHeap, res.IdleRSS = heapLive(), rss()
	if err := resetPeakRSS(); err != nil {
		return nil, err
	}

	start := time.Now()
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRun()
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(runCtx) }()
	stopProgress := reportEvery(o.Progress, 2*time.Second, func() string {
		return fmt.Sprintf("cold start: %d/%d keys unwrapped, %d records delivered, %d unwraps in flight (peak %d)",
			d.KMSUnwraps(), o.Devices, tail.lines.Load(), gauge.now.Load(), gauge.peak.Load())
	})
	shutdown := func() error {
		stopProgress()
		stopRun()
		select {
		case err := <-runErr:
			return err
		case <-time.After(time.Minute):
			return errors.New("daemon did not stop within a minute")
		}
	}
	deadline := time.Now().Add(30 * time.Minute)
	var cached time.Duration
	for {
		if err := tail.poll(); err != nil {
			_ = shutdown()
			return nil, err
		}
		if cached == 0 && d.KMSUnwraps() >= uint64(o.Devices) {
			cached = time.Since(start)
		}
		if cached != 0 && tail.lines.Load() >= int64(o.Devices) {
			break
		}
		if err := ctx.Err(); err != nil {
			_ = shutdown()
			return nil, err
		}
		if time.Now().After(deadline) {
			_ = shutdown()
			return nil, fmt.Errorf("after 30 minutes: %d unwraps, %d records", d.KMSUnwraps(), tail.lines.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	res.AllCachedSeconds = cached.Seconds()
	res.AllDeliveredSeconds = time.Since(start).Seconds()
	res.PeakRSS = peakRSS()
	res.Unwraps = emu.Calls(kpemu.OpUnwrap)
	res.DaemonUnwraps = d.KMSUnwraps()
	res.PeakInFlight = gauge.peak.Load()
	res.CacheEntries, _ = metricSum(reg, "decryptd_dek_cache_entries")
	res.DeadLetters, _ = metricSum(reg, "decryptd_dead_letters_total")
	settle()
	res.LoadedHeap, res.LoadedRSS = heapLive(), rss()
	res.HeapPerDEK = float64(res.LoadedHeap-res.IdleHeap) / float64(o.Devices)
	res.RSSPerDEK = float64(res.LoadedRSS-res.IdleRSS) / float64(o.Devices)
	res.CapRespected = res.PeakInFlight <= int64(o.MaxConcurrentUnwraps)
	res.UnwrapsMatch = res.Unwraps == int64(o.Devices)
	emu.SetFaults(kpemu.Faults{})
	if err := shutdown(); err != nil {
		return nil, fmt.Errorf("daemon shutdown: %w", err)
	}
	if err := wipeSession(b.URL, clientTLS, id); err != nil {
		return nil, err
	}
	say("cold start: %d unwraps (peak %d in flight, cap %d), every key cached after %.1f s (bound %.1f s), %.0f B heap and %.0f B RSS per cached DEK",
		res.Unwraps, res.PeakInFlight, res.MaxConcurrentUnwraps, res.AllCachedSeconds, res.LowerBoundSeconds, res.HeapPerDEK, res.RSSPerDEK)
	return res, nil
}
