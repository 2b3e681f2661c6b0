package cdevice_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/daemon/daemontest"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/rekey"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/testutil/keyenv"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

const installHint = "install them with scripts/test-deps.sh (as root), or: apt-get install gcc make pkg-config libssl-dev libmosquitto-dev"

// repoRoot is the module root, from this package's folder.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// build compiles device/c into a temporary folder and returns it. It
// fails (never skips) when a tool or library is missing.
func build(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"gcc", "make", "pkg-config"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: %s", tool, installHint)
		}
	}
	if out, err := exec.Command("pkg-config", "--exists", "--print-errors", "libcrypto", "libmosquitto").CombinedOutput(); err != nil {
		t.Fatalf("libraries missing (%s): %s", strings.TrimSpace(string(out)), installHint)
	}
	out := t.TempDir()
	cmd := exec.Command("make", "-j4", "-C", filepath.Join(repoRoot(t), "device", "c"), "OUT="+out, "CC=gcc", "all")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the C device: %v\n%s", err, b)
	}
	return out
}

// TestCDeviceVectors: the C device agrees with every published vector.
func TestCDeviceVectors(t *testing.T) {
	bin := build(t)
	root := repoRoot(t)
	cmd := exec.Command(filepath.Join(bin, "test_vectors"), filepath.Join(root, "testdata", "envelope-v1.json"),
		filepath.Join(root, "docs", "vectors", "rekey-v1.json"), t.TempDir())
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("test_vectors: %v", err)
	}
	// The counts are the files' own: nothing was left out.
	envCases := countCases(t, filepath.Join(root, "testdata", "envelope-v1.json"))
	rkCases := countCases(t, filepath.Join(root, "docs", "vectors", "rekey-v1.json"))
	for _, want := range []string{
		"envelope: " + strconv.Itoa(envCases) + " cases", "rekey: " + strconv.Itoa(rkCases) + " cases",
		"restore from backup detected", strconv.Itoa(envCases+rkCases+1) + " passed, 0 failed",
	} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("output lacks %q", want)
		}
	}
	if envCases < 29 {
		t.Errorf("envelope vectors: %d cases, want the 29 of amendment 1", envCases)
	}
}

func countCases(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Cases []json.RawMessage }
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	return len(f.Cases)
}

// lines collects a process's output lines and lets a test wait for one.
type lines struct {
	mu  sync.Mutex
	all []string
	buf bytes.Buffer // everything, for failure messages
}

func (l *lines) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		l.mu.Lock()
		l.all = append(l.all, sc.Text())
		l.buf.WriteString(sc.Text() + "\n")
		l.mu.Unlock()
	}
}

func (l *lines) has(prefix string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.all {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestCDeviceInterop: the C device, provisioned by keyops (the credential
// dekctl writes), publishes shape A and B through Mosquitto (mutual TLS,
// client id = device id, persistent session) to a running decryptd whose
// rotation controller finds its key due; it takes the rekey (generation 2,
// checked), saves its state, seals under v2, then sends a message it held
// under v1. decryptd delivers v1 and v2 records, dead-letters nothing, and
// marks v2 adopted. A key file then restored from the copy taken before
// the rekey (the floor kept) makes the device refuse to run (exit 3);
// re-provisioned (a new credential, v3, loaded with --init-only) it runs
// again.
func TestCDeviceInterop(t *testing.T) {
	bin := build(t)
	const devID = "c-pump-1"
	b := mosquittotest.Start(t, mosquittotest.Options{})
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	// Provisioned two hours "ago" under a one-hour max age: due at once.
	ke := keyenv.Open(ctx, t, dir, keyenv.Options{Now: func() time.Time { return time.Now().Add(-2 * time.Hour) }})
	lp, store, regPath, aw, ops := ke.KMS, ke.Store, ke.RegistryPath, ke.Audit, ke.Ops
	cred, err := ops.Provision(ctx, keyops.ProvisionRequest{DeviceID: devID})
	if err != nil {
		t.Fatal(err)
	}
	credPath := filepath.Join(dir, "credential-"+devID+".json")
	err = keyops.WriteCredential(credPath, io.Discard, cred)
	cred.Wipe()
	aw.Close()
	if err != nil {
		t.Fatal(err)
	}

	// The test watches the device's command topic too, to count rekeys.
	var rekeys [][]byte
	var rkMu sync.Mutex
	cmdTopic := rekey.Topic(config.DefaultCommandTopic, "monitor", devID)
	wc := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.SSLURL).SetClientID("watcher").
		SetTLSConfig(b.ClientTLS("watcher")).SetConnectTimeout(10 * time.Second))
	if tok := wc.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher connect: %v", tok.Error())
	}
	defer wc.Disconnect(100)
	if tok := wc.Subscribe(cmdTopic, 2, func(_ mqtt.Client, m mqtt.Message) {
		rkMu.Lock()
		rekeys = append(rekeys, m.Payload())
		rkMu.Unlock()
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher subscribe: %v", tok.Error())
	}

	// The device loads its credential (as at the factory); a copy of its
	// key file then is what a backup taken before the rotation holds.
	statePath := filepath.Join(dir, "device-state")
	if out, err := exec.Command(filepath.Join(bin, "telemdev"), "--state", statePath, "--credential", credPath, "--init-only").CombinedOutput(); err != nil {
		t.Fatalf("telemdev --init-only: %v %s", err, out)
	}
	backup, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}

	cfg := config.Default()
	cfg.MQTT.Brokers = []string{b.SSLURL}
	cfg.MQTT.ClientID = "decryptd-test"
	cfg.MQTT.Topics = []string{"iot-2/type/+/id/+/evt/+/fmt/+"}
	cfg.MQTT.SharedGroup = "decryptd"
	client := b.ClientCert("decryptd")
	cfg.MQTT.TLS = config.TLS{CAFile: client.CA, CertFile: client.Cert, KeyFile: client.Key}
	cfg.MQTT.KeepAlive = 5 * time.Second
	cfg.KMS = config.KMS{Provider: config.ProviderLocal, Local: config.LocalKMS{RootKeyFile: filepath.Join(dir, "root-key.json")}}
	cfg.Registry = config.Registry{Driver: config.DriverFile, Path: regPath}
	on := true
	recPath := filepath.Join(dir, "records.jsonl")
	cfg.Sinks = []config.Sink{{Name: "records", Type: config.SinkFile, Config: &sink.FileConfig{Path: recPath,
		MaxBytes: config.DefaultSinkMaxBytes, Keep: config.DefaultSinkKeep, Fsync: &on}}}
	cfg.DeadLetter = config.DeadLetter{Type: config.SinkFile, Path: filepath.Join(dir, "dead-letter.jsonl"), Fsync: &on}
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Audit.Path = filepath.Join(dir, "audit.log")
	cfg.ShutdownTimeout = 10 * time.Second
	cfg.Rotation = config.Rotation{Enabled: true, MaxDEKAge: time.Hour, GracePeriod: time.Hour, SharePerDay: 1,
		RetryInterval: 5 * time.Second, MessageLimit: config.DefaultRotationMessageLimit, PauseThreshold: 0.5, PauseMinSample: 20,
		CommandTopic: config.DefaultCommandTopic, DeviceType: "monitor", RotateRootKey: new(bool),
		RootKeyMaxAge: config.DefaultRotationRootKeyMaxAge, Tick: 200 * time.Millisecond, FlushInterval: 500 * time.Millisecond}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	_, stop := daemontest.Start(ctx, t, daemon.Options{Config: cfg, Version: "test"})

	// The device publishes under v1 until the rekey comes, holding back
	// its first message (sealed under v1) to send it after the rekey.
	tlsFiles := b.ClientCert(devID)
	port := b.SSLURL[strings.LastIndex(b.SSLURL, ":")+1:]
	args := []string{"--state", statePath, "--host", "127.0.0.1", "--port", port,
		"--cafile", tlsFiles.CA, "--cert", tlsFiles.Cert, "--key", tlsFiles.Key,
		"--interval-ms", "300", "--after-rekey", "4", "--buffer-first", "--timeout", "90", "--keepalive", "10"}
	dev := exec.CommandContext(ctx, filepath.Join(bin, "telemdev"), args...)
	var out lines
	stdout, err := dev.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	dev.Stderr = &stderr
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go out.read(stdout)
	go func() { done <- dev.Wait() }()

	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("telemdev: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), stderr.String())
		}
	case <-ctx.Done():
		t.Fatalf("telemdev did not finish\nstdout:\n%s\nstderr:\n%s", out.String(), stderr.String())
	}
	t.Logf("device output:\n%s", out.String())
	if !out.has("rekey installed device/" + devID + "@v2 generation 2") {
		t.Fatalf("the device did not install v2 with generation 2:\n%s\n%s", out.String(), stderr.String())
	}
	sent := map[string]int{}
	for _, l := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "sent" {
			sent[f[1]]++
		}
	}
	// Under v1 at least the message held back (seq 0, sent after the
	// rekey); more if the rekey came after the first publishes.
	if !out.has("sent v1 0") || sent["v2"] < 4 {
		t.Fatalf("device sent %v, want the held v1 message and at least 4 under v2", sent)
	}

	// decryptd delivers every message the device sent, by version.
	dlPath := cfg.DeadLetter.Path
	byVersion := func() map[string]int {
		got := map[string]int{}
		data, _ := os.ReadFile(recPath)
		for _, l := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
			var r struct {
				DeviceID   string `json:"device_id"`
				KeyVersion string `json:"key_version"`
			}
			if json.Unmarshal(l, &r) == nil && r.DeviceID == devID {
				got[r.KeyVersion]++
			}
		}
		return got
	}
	wait.Within(t, 20*time.Second, "every record of the device", func() bool {
		g := byVersion()
		return g["v1"] >= sent["v1"] && g["v2"] >= sent["v2"]
	})
	if g := byVersion(); g["v1"] != sent["v1"] || g["v2"] != sent["v2"] {
		t.Fatalf("records by version %v, device sent %v", g, sent)
	}
	// Both shapes came through, their sealed fields opened.
	shapes := map[string]bool{}
	data, _ := os.ReadFile(recPath)
	for _, l := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var r struct {
			Data struct {
				PatientID string `json:"patient_id"`
				SpO2      int    `json:"spo2"`
				Location  struct {
					Lat float64 `json:"lat"`
				} `json:"location"`
			} `json:"data"`
		}
		if json.Unmarshal(l, &r) != nil || r.Data.PatientID != "P-0012345" {
			continue
		}
		if r.Data.SpO2 == 97 {
			shapes["A"] = true
		}
		if r.Data.Location.Lat == 37.7749 {
			shapes["B"] = true
		}
	}
	if !shapes["A"] || !shapes["B"] {
		t.Fatalf("records of shapes %v, want A and B with their sealed fields opened", shapes)
	}
	if dl, _ := os.ReadFile(dlPath); len(bytes.TrimSpace(dl)) > 0 {
		t.Fatalf("dead letters: %s", dl)
	}
	wait.Within(t, 15*time.Second, "v2 adopted", func() bool {
		e, err := store.Get(ctx, dek.DeviceKeyID(devID), "v2")
		return err == nil && !e.Rotation.Pending && !e.Rotation.AdoptedAt.IsZero()
	})
	rkMu.Lock()
	nRekeys := len(rekeys)
	first := append([]byte(nil), rekeys[0]...)
	rkMu.Unlock()
	if m, err := rekey.Parse(first); err != nil || m.Generation != 2 {
		t.Fatalf("the rekey sent: %+v %v, want generation 2", m, err)
	}
	t.Logf("rekeys published on %s: %d", cmdTopic, nRekeys)

	stop()

	// Restore the key file from the backup; the floor (kept apart) says 2.
	if err := os.WriteFile(statePath, backup, 0o600); err != nil {
		t.Fatal(err)
	}
	again := exec.CommandContext(ctx, filepath.Join(bin, "telemdev"), args...)
	msg, err := again.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(string(msg), "re-provision") {
		t.Fatalf("a device restored from backup: %v, %s; want exit 3 asking for re-provisioning", err, msg)
	}

	// Re-provisioned (dekctl provision: a new version, v3), the device
	// loads the new credential and runs again.
	aw2, err := audit.Open(ctx, filepath.Join(dir, "dekctl-audit.log"), audit.WithActor("dekctl"))
	if err != nil {
		t.Fatal(err)
	}
	ops2, err := keyops.New(keyops.Options{KMS: lp, Roots: lp, Registry: store, Audit: aw2})
	if err != nil {
		t.Fatal(err)
	}
	cred2, err := ops2.Provision(ctx, keyops.ProvisionRequest{DeviceID: devID})
	if err != nil {
		t.Fatal(err)
	}
	cred2Path := filepath.Join(dir, "credential-"+devID+"-2.json")
	err = keyops.WriteCredential(cred2Path, io.Discard, cred2)
	cred2.Wipe()
	aw2.Close()
	if err != nil || cred2.KeyVersion != "v3" {
		t.Fatalf("re-provision: %v, version %s", err, cred2.KeyVersion)
	}
	if out, err := exec.Command(filepath.Join(bin, "telemdev"), "--state", statePath, "--credential", cred2Path, "--init-only").CombinedOutput(); err != nil {
		t.Fatalf("loading the new credential: %v %s", err, out)
	}
	rerun := append(args[:len(args):len(args)], "--count", "2", "--shape", "A")
	if out, err := exec.CommandContext(ctx, filepath.Join(bin, "telemdev"), rerun...).CombinedOutput(); err != nil || !strings.Contains(string(out), "sent v3 ") {
		t.Fatalf("the re-provisioned device: %v\n%s", err, out)
	}
}
