package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/kpemu"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

const kpAPIKey = "health-test-APIKEY-77d1"

// kpConfig is a daemon configuration whose KMS is a Key Protect emulator
// (started here, with one root key) and whose metrics listener is on a
// port known before New returns; no broker is needed, as New connects
// none. apiKey is what the daemon's key file holds.
func kpConfig(t *testing.T, apiKey string) (*config.Config, *kpemu.Server, string) {
	t.Helper()
	srv, err := kpemu.Start(context.Background(), kpemu.Options{APIKeys: []string{kpAPIKey}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	root, err := srv.CreateRootKey("health-root")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "kp-api-key")
	if err := os.WriteFile(keyFile, []byte(apiKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := ln.Addr().String()
	ln.Close()

	on := true
	cfg := config.Default()
	cfg.MQTT.Brokers = []string{"ssl://127.0.0.1:1"}
	cfg.MQTT.ClientID = "decryptd-health"
	cfg.MQTT.Topics = []string{"iot-2/type/+/id/+/evt/+/fmt/+"}
	cfg.KMS = config.KMS{Provider: config.ProviderKeyProtect, KeyProtect: config.KeyProtect{
		BaseURL: srv.URL, TokenURL: srv.TokenURL, InstanceID: srv.InstanceID(), RootKeyID: root,
		APIKeyFile: keyFile, Timeout: time.Second,
	}}
	cfg.Registry = config.Registry{Driver: config.DriverFile, Path: filepath.Join(dir, "registry.json")}
	cfg.Sinks = []config.Sink{{Name: "records", Type: config.SinkFile, Config: &sink.FileConfig{Path: filepath.Join(dir, "records.jsonl"),
		MaxBytes: config.DefaultSinkMaxBytes, Keep: config.DefaultSinkKeep, Fsync: &on}}}
	cfg.DeadLetter = config.DeadLetter{Type: config.SinkFile, Path: filepath.Join(dir, "dead-letter.jsonl"), Fsync: &on}
	cfg.Metrics.Listen = listen
	cfg.Audit.Path = filepath.Join(dir, "audit.log")
	cfg.ShutdownTimeout = 5 * time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg, srv, "http://" + listen
}

type healthz struct {
	Phase  string `json:"phase"`
	Status string `json:"status"`
	Causes map[string]struct {
		Degraded bool       `json:"degraded"`
		Since    *time.Time `json:"since"`
		Reason   string     `json:"reason"`
	} `json:"causes"`
}

func getHealthz(t *testing.T, base string) (healthz, bool) {
	code, body := httpGet(t, base+"/healthz")
	var h healthz
	if code != http.StatusOK || json.Unmarshal([]byte(body), &h) != nil {
		return h, false
	}
	return h, true
}

// TestStartWaitsForKMS: Key Protect refusing connections at start is
// waited for: meanwhile /healthz answers 200 with phase starting and the
// KMS degraded, /readyz 503 naming the wait, /metrics
// decryptd_degraded{cause="kms"} 1; once it answers, New returns and the
// KMS is no longer degraded.
func TestStartWaitsForKMS(t *testing.T) {
	cfg, srv, base := kpConfig(t, kpAPIKey)
	if err := srv.SetRefuse(true); err != nil {
		t.Fatal(err)
	}
	type result struct {
		d   *daemon.Daemon
		err error
	}
	done := make(chan result, 1)
	go func() {
		d, err := daemon.New(context.Background(), daemon.Options{Config: cfg})
		done <- result{d, err}
	}()
	wait.For(t, "/healthz to report the KMS degraded while starting", func() bool {
		h, ok := getHealthz(t, base)
		return ok && h.Phase == "starting" && h.Status == "degraded" && h.Causes["kms"].Degraded &&
			h.Causes["kms"].Reason == "unreachable at start" && h.Causes["kms"].Since != nil
	})
	if code, body := httpGet(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for kms") {
		t.Errorf("/readyz = %d %q while waiting, want 503 naming the KMS", code, body)
	}
	_, metrics := httpGet(t, base+"/metrics")
	for _, want := range []string{`decryptd_degraded{cause="kms"} 1`, `decryptd_degraded{cause="registry"} 0`,
		`decryptd_degraded{cause="sink"} 0`, `decryptd_degraded{cause="broker"} 0`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	select {
	case r := <-done:
		t.Fatalf("New returned while the KMS was down: %v", r.err)
	default:
	}

	if err := srv.SetRefuse(false); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("New did not return once the KMS answered")
	}
	if r.err != nil {
		t.Fatalf("New: %v", r.err)
	}
	defer r.d.Close(context.Background())
	if h, ok := getHealthz(t, base); !ok || h.Causes["kms"].Degraded || h.Phase != "running" {
		t.Errorf("after the KMS came back: %+v", h)
	}
	if r.d.Ready() {
		t.Error("ready before Run connected the inputs")
	}
}

// TestStartCanceledWhileWaiting: SIGTERM (the context) during the wait
// ends New with ErrStartCanceled, a clean stop, and the HTTP server goes.
func TestStartCanceledWhileWaiting(t *testing.T) {
	cfg, srv, base := kpConfig(t, kpAPIKey)
	if err := srv.SetRefuse(true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		d, err := daemon.New(ctx, daemon.Options{Config: cfg})
		if d != nil {
			d.Close(context.Background())
		}
		done <- err
	}()
	wait.For(t, "the start to wait for the KMS", func() bool {
		h, ok := getHealthz(t, base)
		return ok && h.Causes["kms"].Degraded
	})
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("New did not return after the cancel")
	}
	if !errors.Is(err, daemon.ErrStartCanceled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("New = %v, want ErrStartCanceled", err)
	}
	if code, _ := httpGet(t, base+"/healthz"); code != 0 {
		t.Errorf("/healthz still answers %d after New failed", code)
	}
}

// TestStartRefusedCredentials: an API key the KMS refuses ends the start
// at once with a clear error, not a wait.
func TestStartRefusedCredentials(t *testing.T) {
	cfg, _, _ := kpConfig(t, "not-the-key")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := daemon.New(ctx, daemon.Options{Config: cfg})
	if err == nil {
		d.Close(context.Background())
		t.Fatal("New accepted a refused API key")
	}
	if errors.Is(err, daemon.ErrStartCanceled) || !strings.Contains(err.Error(), "not authorized") {
		t.Fatalf("New = %v, want the refusal", err)
	}
	if strings.Contains(err.Error(), "not-the-key") {
		t.Fatalf("the error quotes the API key: %v", err)
	}
}

// TestBrokerDegradedAndShutdownLog: an input that cannot connect makes
// the broker cause degraded (/healthz, /readyz naming the input); the
// shutdown log writes its deadline with a unit, and a stop with rotation
// off and a healthy sink blames neither.
func TestBrokerDegradedAndShutdownLog(t *testing.T) {
	cfg, _, base := kpConfig(t, kpAPIKey)
	cfg.MQTT.ConnectTimeout = time.Second
	obs, logs := observer.New(zapcore.InfoLevel)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := daemon.New(ctx, daemon.Options{Config: cfg, Logger: zap.New(obs)})
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(ctx) }()
	wait.For(t, "the broker cause degraded", func() bool {
		h, ok := getHealthz(t, base)
		return ok && h.Phase == "running" && h.Causes["broker"].Degraded && h.Causes["broker"].Reason == "mqtt not connected" &&
			!h.Causes["kms"].Degraded && !h.Causes["sink"].Degraded
	})
	if code, body := httpGet(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "mqtt not connected") {
		t.Errorf("/readyz = %d %q", code, body)
	}
	if h := d.Health(); h.Status != "degraded" {
		t.Errorf("Health() = %+v", h)
	}
	cancel()
	var err2 error
	select {
	case err2 = <-runErr:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
	}
	if err2 != nil && (strings.Contains(err2.Error(), "rotation") || strings.Contains(err2.Error(), "unwritten")) {
		t.Errorf("the stop blames what was not at fault: %v", err2)
	}
	sd := logs.FilterMessage("shutting down").All()
	if len(sd) != 1 {
		t.Fatalf("%d shutting-down lines", len(sd))
	}
	if got := sd[0].ContextMap()["deadline"]; got != "5s" {
		t.Errorf(`"deadline" = %#v, want "5s" (a duration with its unit)`, got)
	}
}
