package keys_test

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/keyprotect"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/kpemu"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/testutil/pgtest"
)

// apiKey is the emulator's only accepted API key; distinctive, so a leak
// into an error text would stand out.
const apiKey = "e2e-keys-APIKEY-5c1e0b7a"

// kpEnv is a Key Protect emulator on 127.0.0.1:0 with one root key, and the
// real provider (keyprotect-go-client underneath) pointed at it.
type kpEnv struct {
	srv        *kpemu.Server
	p          *keyprotect.Provider
	root       string
	apiKeyFile string
}

// newKP starts the emulator and the provider. timeout bounds each provider
// call, client retries included: an outage costs a lookup that long.
func newKP(t *testing.T, timeout time.Duration) *kpEnv {
	t.Helper()
	srv, err := kpemu.Start(context.Background(), kpemu.Options{APIKeys: []string{apiKey}})
	if err != nil {
		t.Fatalf("start Key Protect emulator: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	root, err := srv.CreateRootKey("decryptd-e2e-root")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "kp-api-key")
	if err := os.WriteFile(keyFile, []byte(apiKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := keyprotect.New(context.Background(), keyprotect.Config{
		BaseURL:    srv.URL,
		TokenURL:   srv.TokenURL,
		InstanceID: srv.InstanceID(),
		RootKeyID:  root,
		APIKeyFile: keyFile,
		Timeout:    timeout,
	})
	if err != nil {
		t.Fatalf("keyprotect.New: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return &kpEnv{srv: srv, p: p, root: root, apiKeyFile: keyFile}
}

// newLocal creates a local root key file (one version, "1") in a temporary
// directory.
func newLocal(t *testing.T) *local.Provider {
	t.Helper()
	p, err := local.Create(filepath.Join(t.TempDir(), "root-key.json"), "e2e-local-root")
	if err != nil {
		t.Fatalf("local.Create: %v", err)
	}
	return p
}

// newPGDSN creates a fresh database (dropped after the test) and returns its
// DSN. It fails, never skips, when PostgreSQL is unreachable.
func newPGDSN(t *testing.T) string {
	t.Helper()
	return pgtest.New(t)
}

// openPG opens a pgstore handle on dsn, closed after the test.
func openPG(t *testing.T, dsn string) *pgstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := pgstore.Open(ctx, dsn)
	if err != nil {
		t.Fatalf("pgstore.Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// openFile opens a filestore handle on path, closed after the test.
func openFile(t *testing.T, path string) *filestore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := filestore.Open(ctx, path)
	if err != nil {
		t.Fatalf("filestore.Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// provision does what a key provisioning does, by hand: a fresh DEK wrapped
// by the provider under the DEK's name, stored active. It returns the
// device-side cipher (what a device holding the DEK seals with).
func provision(t *testing.T, store registry.Store, p kms.Provider, keyID, version string, devices ...string) cipher.AEAD {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	d := make([]byte, 32)
	if _, err := rand.Read(d); err != nil {
		t.Fatal(err)
	}
	defer clear(d)
	ref := dek.Ref{KeyID: keyID, Version: version}
	w, err := p.Wrap(ctx, d, kms.DEKAAD(ref))
	if err != nil {
		t.Fatalf("wrap %s: %v", ref, err)
	}
	if err := store.Create(ctx, registry.Entry{KeyID: keyID, Version: version, State: dek.StateActive, Wrapped: w, Devices: devices}); err != nil {
		t.Fatalf("create %s: %v", ref, err)
	}
	aead, err := seal.NewAEAD(d)
	if err != nil {
		t.Fatal(err)
	}
	return aead
}

// message is one sealed message as a device publishes it.
type message struct {
	deviceID, keyID, version string
	readings                 string
	topic                    string
	payload                  []byte
}

// topicOf is the default topic pattern's topic for a device.
func topicOf(deviceID string) string {
	return "iot-2/type/monitor/id/" + deviceID + "/evt/telemetry/fmt/json"
}

// sealA seals readings as a shape A message under aead. keyID may be empty
// (the device's own key then).
func sealA(t *testing.T, aead cipher.AEAD, deviceID, keyID, version string, ts int64, readings string) message {
	t.Helper()
	payload, err := seal.New(nil).AppendShapeA(nil, aead, seal.Envelope{
		DeviceID: deviceID, Timestamp: ts, KeyID: keyID, KeyVersion: version,
	}, []byte(readings), nil)
	if err != nil {
		t.Fatal(err)
	}
	if keyID == "" {
		keyID = dek.DeviceKeyID(deviceID)
	}
	return message{deviceID: deviceID, keyID: keyID, version: version, readings: readings, topic: topicOf(deviceID), payload: payload}
}

// readingsFor is a distinct, recognisable plaintext per message.
func readingsFor(i int) string {
	return `{"heart_rate":` + strconv.Itoa(60+i%40) + `,"seq":` + strconv.Itoa(i) + `,"patient_id":"P-` + strconv.Itoa(1000+i) + `"}`
}

// openOK opens m through d and checks the record's data is m's readings.
func openOK(t *testing.T, d *decrypt.Decryptor, m message) {
	t.Helper()
	rec, err := d.Open(context.Background(), decrypt.Message{Topic: m.topic, Payload: m.payload})
	if err != nil {
		t.Fatalf("open %s message of %s: %v (reason %q)", m.keyID+"@"+m.version, m.deviceID, err, decrypt.Reason(err))
	}
	if string(rec.Data) != m.readings {
		t.Fatalf("record data %s, want %s", rec.Data, m.readings)
	}
	if rec.KeyID != m.keyID || rec.KeyVersion != m.version || rec.DeviceID != m.deviceID {
		t.Fatalf("record names %s %s@%s, want %s %s@%s", rec.DeviceID, rec.KeyID, rec.KeyVersion, m.deviceID, m.keyID, m.version)
	}
}

// newDecryptor is a Decryptor as the vectors' notes ask: replay window on
// (defaults), clock-skew check off.
func newDecryptor(t *testing.T, keys decrypt.KeyResolver) *decrypt.Decryptor {
	t.Helper()
	d, err := decrypt.New(keys, decrypt.Options{ClockSkew: 0})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// newCache builds a cache over store and p with its metrics on a fresh
// registry (returned) and closes it after the test. opts may set anything
// but Registry, KMS and Registerer.
func newCache(t *testing.T, store registry.Store, p keycache.Unwrapper, opts keycache.Options) (*keycache.Cache, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts.Registry, opts.KMS, opts.Registerer = store, p, reg
	if opts.Changes == nil {
		opts.Changes = store
	}
	c, err := keycache.New(opts)
	if err != nil {
		t.Fatalf("keycache.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c, reg
}

// runCache runs c's change feed until the test ends and returns once the
// cache is subscribed (its "watching registry changes" log line), so a
// change made afterwards cannot be missed. The observed logger must be the
// one given in Options.Logger.
func runCache(t *testing.T, c *keycache.Cache, logs *observer.ObservedLogs) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("cache.Run: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for logs.FilterMessage("watching registry changes").Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("cache.Run did not subscribe to the registry change feed within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// observedLogger returns a logger whose entries the test can inspect.
func observedLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// auditRecorder writes the cache's unwrap events to the audit log, as the
// daemon wires them: one line per KMS unwrap, never key material. Neither
// keycache nor audit offers this adapter (keycache must not import audit);
// the daemon's wiring needs the same few lines.
func auditRecorder(t *testing.T, w *audit.Writer) keycache.AuditRecorder {
	return keycache.AuditFunc(func(ctx context.Context, ev keycache.UnwrapEvent) {
		if _, err := w.Append(ctx, audit.Event{
			Action:         audit.ActionUnwrap,
			KeyID:          ev.KeyID,
			KeyVersion:     ev.Version,
			RootKeyID:      ev.RootKeyID,
			RootKeyVersion: ev.RootKeyVersion,
			Result:         string(ev.Result),
			DurationMS:     audit.Millis(ev.Duration),
			Detail:         ev.Trigger,
		}); err != nil {
			t.Errorf("audit append of an unwrap: %v", err)
		}
	})
}
