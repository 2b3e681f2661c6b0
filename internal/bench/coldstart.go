package bench

import (
	"context"
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
	"github.com/decryptd/decryptd/internal/fleet"
	"github.com/decryptd/decryptd/internal/kms/keyprotect"
	"github.com/decryptd/decryptd/internal/kpemu"
	"github.com/decryptd/decryptd/internal/pki"
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
	kms, err := startColdKMS()
	if err != nil {
		return nil, err
	}
	defer kms.close()
	b, err := StartBroker(BrokerOptions{Dir: filepath.Join(o.Dir, "broker"), MaxInflight: o.MaxInFlight, MaxQueued: 2*o.Devices + 1000, Autosave: 60})
	if err != nil {
		return nil, err
	}
	defer b.Stop()
	_, pubTLS, err := b.ClientTLS("telemsim")
	if err != nil {
		return nil, err
	}
	clientFiles, clientTLS, err := b.ClientTLS("decryptd")
	if err != nil {
		return nil, err
	}

	say("cold start: provisioning %d device keys through Key Protect (emulated, no latency yet)", o.Devices)
	pstart := time.Now()
	f, regFile, err := kms.provision(ctx, o)
	if err != nil {
		return nil, err
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

	d, reg, records, err := kms.newDaemon(ctx, o, b.URL, clientFiles, id, regFile)
	if err != nil {
		return nil, err
	}
	tail, err := openTail(records)
	if err != nil {
		_ = d.Close(context.Background())
		return nil, err
	}
	defer tail.close()

	kms.emu.SetFaults(kpemu.Faults{Latency: o.KMSLatency})
	kms.emu.ResetCalls()
	kms.gauge.peak.Store(0)
	settle()
	res.IdleHeap, res.IdleRSS = heapLive(), rss()
	if err := resetPeakRSS(); err != nil {
		return nil, err
	}

	start := time.Now()
	stopDaemon := runDaemon(ctx, d)
	stopProgress := reportEvery(o.Progress, 2*time.Second, func() string {
		return fmt.Sprintf("cold start: %d/%d keys unwrapped, %d records delivered, %d unwraps in flight (peak %d)",
			d.KMSUnwraps(), o.Devices, tail.lines.Load(), kms.gauge.now.Load(), kms.gauge.peak.Load())
	})
	shutdown := func() error {
		stopProgress()
		return stopDaemon()
	}
	cached, err := waitColdStart(ctx, d, tail, o.Devices, start)
	if err != nil {
		_ = shutdown()
		return nil, err
	}
	res.AllCachedSeconds = cached.Seconds()
	res.AllDeliveredSeconds = time.Since(start).Seconds()
	res.PeakRSS = peakRSS()
	res.Unwraps = kms.emu.Calls(kpemu.OpUnwrap)
	res.DaemonUnwraps = d.KMSUnwraps()
	res.PeakInFlight = kms.gauge.peak.Load()
	res.CacheEntries, _ = metricSum(reg, "decryptd_dek_cache_entries")
	res.DeadLetters, _ = metricSum(reg, "decryptd_dead_letters_total")
	settle()
	res.LoadedHeap, res.LoadedRSS = heapLive(), rss()
	res.HeapPerDEK = float64(res.LoadedHeap-res.IdleHeap) / float64(o.Devices)
	res.RSSPerDEK = float64(res.LoadedRSS-res.IdleRSS) / float64(o.Devices)
	res.CapRespected = res.PeakInFlight <= int64(o.MaxConcurrentUnwraps)
	res.UnwrapsMatch = res.Unwraps == int64(o.Devices)
	kms.emu.SetFaults(kpemu.Faults{})
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

// coldKMS is the cold start's Key Protect: the emulator behind an HTTP
// server on loopback, counting the unwraps it holds at once, with one root
// key.
type coldKMS struct {
	emu    *kpemu.Emulator
	gauge  *unwrapGauge
	srv    *http.Server
	kpCfg  keyprotect.Config
	rootID string
}

// coldAPIKeyEnv names the variable the daemon reads the emulator's API key
// from (answered by the daemon's Env, never set in the process).
const coldAPIKeyEnv = "DECRYPTD_BENCH_KP_API_KEY"

func startColdKMS() (*coldKMS, error) {
	emu := kpemu.New(kpemu.Options{})
	k := &coldKMS{emu: emu, gauge: &unwrapGauge{next: emu}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		emu.Close()
		return nil, err
	}
	k.srv = &http.Server{Handler: k.gauge, ReadHeaderTimeout: 10 * time.Second}
	go k.srv.Serve(ln)
	k.rootID, err = emu.CreateRootKey("bench-root")
	if err != nil {
		k.close()
		return nil, err
	}
	base := "http://" + ln.Addr().String()
	k.kpCfg = keyprotect.Config{BaseURL: base, TokenURL: base + kpemu.TokenPath, InstanceID: emu.InstanceID(), RootKeyID: k.rootID, APIKeyEnv: coldAPIKeyEnv}
	return k, nil
}

func (k *coldKMS) close() {
	k.srv.Close()
	k.emu.Close()
}

// provision makes o.Devices device keys through the real keyprotect
// provider into a file registry, whose path it returns with the fleet.
func (k *coldKMS) provision(ctx context.Context, o ColdStartOptions) (*fleet.Fleet, string, error) {
	kp, err := keyprotect.New(ctx, k.kpCfg, keyprotect.WithGetenv(func(string) string { return kpemu.DefaultAPIKey }))
	if err != nil {
		return nil, "", err
	}
	defer kp.Close()
	keysDir := filepath.Join(o.Dir, "keys")
	if err := os.MkdirAll(keysDir, 0o700); err != nil {
		return nil, "", err
	}
	regFile := filepath.Join(keysDir, "registry.json")
	f, err := provision(ctx, o.Devices, kp, regFile, 32, nil)
	if err != nil {
		return nil, "", fmt.Errorf("bench: provision: %w", err)
	}
	return f, regFile, nil
}

// newDaemon builds the cold start's daemon (not yet running) on this Key
// Protect and the provisioned registry; records is its sink's file.
func (k *coldKMS) newDaemon(ctx context.Context, o ColdStartOptions, brokerURL string, client pki.Files, id, regFile string) (_ *daemon.Daemon, _ *prometheus.Registry, records string, _ error) {
	dir := filepath.Join(o.Dir, "decryptd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, "", err
	}
	cfg := daemonConfig(dir, brokerURL, client, id, o.Workers, o.MaxInFlight, regFile)
	cfg.KMS = config.KMS{Provider: config.ProviderKeyProtect, KeyProtect: config.KeyProtect{
		BaseURL: k.kpCfg.BaseURL, TokenURL: k.kpCfg.TokenURL, InstanceID: k.kpCfg.InstanceID, RootKeyID: k.rootID,
		APIKeyEnv: coldAPIKeyEnv, Timeout: config.DefaultKeyProtectTimeout}}
	if o.AuditDir != "" {
		cfg.Audit.Path = filepath.Join(o.AuditDir, "audit-cold.log")
	}
	cfg.Cache.MaxConcurrentUnwraps = o.MaxConcurrentUnwraps
	cfg.Cache.MaxEntries = max(cfg.Cache.MaxEntries, o.Devices)
	if err := cfg.Validate(); err != nil {
		return nil, nil, "", fmt.Errorf("config: %w", err)
	}
	reg := prometheus.NewRegistry()
	d, err := daemon.New(ctx, daemon.Options{Config: cfg, Registry: reg, Logger: o.Logger, Version: "bench",
		Env: func(name string) (string, bool) {
			if name == coldAPIKeyEnv {
				return kpemu.DefaultAPIKey, true
			}
			return "", false
		}})
	if err != nil {
		return nil, nil, "", fmt.Errorf("daemon.New: %w", err)
	}
	return d, reg, filepath.Join(dir, "records.jsonl"), nil
}

// waitColdStart waits until every device's key is cached and every first
// message delivered; it returns when the last key was cached.
func waitColdStart(ctx context.Context, d *daemon.Daemon, tail *tailer, devices int, start time.Time) (time.Duration, error) {
	deadline := time.Now().Add(30 * time.Minute)
	var cached time.Duration
	for {
		if err := tail.poll(); err != nil {
			return 0, err
		}
		if cached == 0 && d.KMSUnwraps() >= uint64(devices) {
			cached = time.Since(start)
		}
		if cached != 0 && tail.lines.Load() >= int64(devices) {
			return cached, nil
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("after 30 minutes: %d unwraps, %d records", d.KMSUnwraps(), tail.lines.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
