package faults_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/deploytest"
	"github.com/decryptd/decryptd/internal/e2e/e2etest"
	"github.com/decryptd/decryptd/internal/fleet"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/keyprotect"
	"github.com/decryptd/decryptd/internal/testutil/daemonproc"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

// full is the long form (DECRYPTD_FAULTS=full): bigger streams, longer
// outages, strict bounds.
var full = os.Getenv("DECRYPTD_FAULTS") == "full"

// pick returns short in the short form, long in the long form.
func pick[T any](short, long T) T {
	if full {
		return long
	}
	return short
}

// Binaries built once per test run (TestMain).
var bins struct {
	dir, decryptd, kpemu string
}

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "decryptd-faults-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		bins.dir = dir
		for _, b := range []struct {
			out *string
			pkg string
		}{{&bins.decryptd, "cmd/decryptd"}, {&bins.kpemu, "cmd/kpemu"}} {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			*b.out, err = e2etest.Build(ctx, b.pkg, dir)
			cancel()
			if err != nil {
				fmt.Fprintf(os.Stderr, "faults: %v\n", err)
				return 1
			}
		}
		code := m.Run()
		if err := writeTable(); err != nil {
			fmt.Fprintf(os.Stderr, "faults: table: %v\n", err)
			return 1
		}
		return code
	}()
	os.Exit(code)
}

// env is one scenario's world: a broker, a provisioned fleet, the key
// files (or the Key Protect emulator) and the secrets planted in it.
type env struct {
	t        *testing.T
	dir      string
	broker   *mosquittotest.Broker
	fleet    *fleet.Fleet
	kmsYAML  string
	registry string
	kp       *kpProc // nil: local root key

	mu      sync.Mutex
	secrets []string // must appear in no log
	logs    []string // every log file a process of the scenario wrote
}

type envOptions struct {
	devices    int
	keyProtect bool
	// maxInflight is the broker's max_inflight_messages: as deployed, equal
	// to the daemon's mqtt.max_in_flight (default 200, the daemons'
	// default here).
	maxInflight int
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir()}
	if o.maxInflight == 0 {
		o.maxInflight = 200
	}
	e.broker = mosquittotest.Start(t, mosquittotest.Options{MaxInflight: o.maxInflight})
	e.logs = append(e.logs, e.broker.LogFile)
	e.registry = e2etest.RegistryPath(e.dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var provider kms.Provider
	var roots kms.RootManager
	if o.keyProtect {
		e.kp = startKP(t, e)
		p, err := keyprotect.New(ctx, keyprotect.Config{
			BaseURL: e.kp.baseURL, TokenURL: e.kp.tokenURL, InstanceID: e.kp.instance,
			RootKeyID: e.kp.root, APIKeyFile: e.kp.apiKeyFile, Timeout: 10 * time.Second,
		})
		if err != nil {
			t.Fatalf("keyprotect.New: %v", err)
		}
		defer p.Close()
		provider, roots = p, p
		e.kmsYAML = "kms:\n  provider: keyprotect\n  keyprotect:\n" +
			fmt.Sprintf("    base_url: %q\n    token_url: %q\n    instance_id: %q\n    root_key_id: %q\n    api_key_file: %q\n    timeout: 2s\n",
				e.kp.baseURL, e.kp.tokenURL, e.kp.instance, e.kp.root, e.kp.apiKeyFile)
	} else {
		lp, err := e2etest.CreateLocalRoot(e.dir, "faults-root")
		if err != nil {
			t.Fatal(err)
		}
		provider, roots = lp, lp
		e.kmsYAML = e2etest.LocalKMS(e2etest.RootKeyPath(e.dir))
	}
	dk, err := e2etest.OpenDekctl(ctx, e.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Close()
	ops, err := keyops.New(keyops.Options{KMS: provider, Roots: roots, Registry: dk.Registry, Audit: dk.Audit, Operator: "e2e-faults"})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := fleet.Provision(ctx, o.devices, ops, fleet.ProvisionOptions{Prefix: "flt-"})
	if err != nil {
		t.Fatalf("provision: %v", err)
	}
	for _, c := range creds {
		// The DEKs as a log could show them: base64 (the credential's
		// form) and hex.
		e.plant(base64.StdEncoding.EncodeToString(c.DEK), hex.EncodeToString(c.DEK))
	}
	if e.fleet, err = fleet.NewFleet(creds, "monitor"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.scanLogs() })
	return e
}

// plant adds secrets the scan looks for.
func (e *env) plant(s ...string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.secrets = append(e.secrets, s...)
}

func (e *env) addLog(path string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.logs = append(e.logs, path)
}

// scanLogs fails the test if any planted secret appears in any log the
// scenario's processes wrote.
func (e *env) scanLogs() {
	e.mu.Lock()
	defer e.mu.Unlock()
	lines, hits := 0, 0
	for _, path := range e.logs {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		lines += bytes.Count(data, []byte{'\n'})
		for _, s := range e.secrets {
			if len(s) < 6 {
				continue
			}
			if i := bytes.Index(data, []byte(s)); i >= 0 {
				start := max(0, bytes.LastIndexByte(data[:i], '\n')+1)
				end := bytes.IndexByte(data[i:], '\n')
				if end < 0 {
					end = len(data) - i
				}
				line := string(data[start : i+end])
				line = strings.ReplaceAll(line, s, "<SECRET>")
				hits++
				e.t.Errorf("secret scan: a planted secret (%d chars) is in %s: %.300s", len(s), filepath.Base(path), line)
			}
		}
	}
	e.t.Logf("secret scan: %d log lines in %d files, %d planted secrets", lines, len(e.logs), len(e.secrets))
	recordSecretScan(lines, len(e.secrets), hits)
}

// kpProc is the kpemu binary with its runtime fault control.
type kpProc struct {
	cmd                                     *exec.Cmd
	baseURL, tokenURL, instance, root, ctrl string
	apiKeyFile                              string
}

func startKP(t *testing.T, e *env) *kpProc {
	t.Helper()
	apiKey := "faults-KPAPIKEY-" + randHex(8)
	e.plant(apiKey)
	keyFile := filepath.Join(e.dir, "kp-api-key")
	if err := os.WriteFile(keyFile, []byte(apiKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(e.dir, "kpemu.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	e.addLog(logPath)
	pr, pw := io.Pipe()
	cmd := exec.Command(bins.kpemu, "-addr", "127.0.0.1:0", "-control-addr", "127.0.0.1:0", "-api-key", apiKey, "-create-root", "faults-root")
	cmd.Stdout = io.MultiWriter(logf, pw)
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); pw.Close(); logf.Close(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); <-done })
	kp := &kpProc{cmd: cmd, apiKeyFile: keyFile}
	got := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ": ")
			v, _, _ = strings.Cut(v, " ")
			switch k {
			case "control_url":
				kp.ctrl = v
			case "base_url":
				kp.baseURL = v
			case "token_url":
				kp.tokenURL = v
			case "instance_id":
				kp.instance = v
			case "root_key_id":
				kp.root = v
			}
			if strings.HasPrefix(sc.Text(), "ready") {
				got <- nil
				_, _ = io.Copy(io.Discard, pr)
				return
			}
		}
		got <- errors.New("kpemu ended before it was ready")
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("%v; log:\n%s", err, mosquittotest.Tail(logPath, 4<<10))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("kpemu not ready within 30s")
	}
	return kp
}

// fault sets kpemu's runtime fault: none, hang, reset, refuse, 503, 429.
func (kp *kpProc) fault(t *testing.T, name string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Post(kp.ctrl+"/faults/"+name, "text/plain", nil)
	if err != nil {
		t.Fatalf("kpemu fault %s: %v", name, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("kpemu fault %s: %s %s", name, resp.Status, body)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// daemonConfig is one daemon's configuration; the rest comes from env.
type daemonConfig struct {
	ClientID    string
	MaxInFlight int    // default 200
	Workers     int    // default 8
	Sinks       string // YAML list items, indented two spaces; default one file sink at Records
	Extra       string // top-level YAML appended verbatim
	MaxMsgBytes int    // decrypt.max_message_bytes (0: default)
	NoLoad      bool   // do not load it here (a configuration meant to be refused)
	NotShared   bool   // a plain subscription instead of $share/decryptd/...
}

type daemonFiles struct {
	e2etest.Files
	budget int64 // deploytest.MemoryBudget of the configuration
}

func (e *env) writeConfig(dc daemonConfig) daemonFiles {
	t := e.t
	t.Helper()
	if dc.MaxInFlight == 0 {
		dc.MaxInFlight = 200
	}
	if dc.Workers == 0 {
		dc.Workers = 8
	}
	df := daemonFiles{Files: e2etest.NewFiles(t, e.dir, dc.ClientID)}
	group := "decryptd"
	if dc.NotShared {
		group = ""
	}
	var decrypt string
	if dc.MaxMsgBytes > 0 {
		decrypt = fmt.Sprintf("decrypt:\n  max_message_bytes: %d\n", dc.MaxMsgBytes)
	}
	e.addLog(df.Log)
	yaml := e2etest.WriteConfig(t, df.Files, e2etest.Config{
		// keep_alive stays at its default (30 s): a short one turns a large
		// backlog into a reconnect loop (the PINGRESP waits behind it).
		Input: e2etest.MQTTInput(e2etest.MQTT{
			Broker: e.broker, ClientID: dc.ClientID, SharedGroup: group,
			MaxInFlight: dc.MaxInFlight, Workers: dc.Workers,
		}),
		KMS:      e.kmsYAML,
		Registry: e.registry,
		Sinks:    dc.Sinks,
		Sections: decrypt,
		Extra:    dc.Extra,
	})
	if !dc.NoLoad {
		cfg, err := config.Load(df.Config, func(string) (string, bool) { return "", false })
		if err != nil {
			t.Fatalf("load the configuration: %v\n%s", err, yaml)
		}
		df.budget = deploytest.MemoryBudget(cfg)
	}
	return df
}

// plantReadings adds reading values of the records in a sink (patient ids,
// medical record numbers: plaintext that must stay out of every log) to
// the secrets.
func (e *env) plantReadings(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	seen := map[string]bool{}
	for i := 0; i < 200 && sc.Scan(); i++ {
		var r struct {
			Data map[string]any `json:"data"`
		}
		if json.Unmarshal(sc.Bytes(), &r) != nil {
			continue
		}
		for _, k := range []string{"patient_id", "medical_record", "marker"} {
			if v, ok := r.Data[k].(string); ok && !seen[v] {
				seen[v] = true
				e.plant(v)
			}
		}
	}
}

// configHas reports whether the configuration has a top-level section
// with this Go field name (e.g. "Spool" once the spool is merged).
func configHas(field string) bool {
	return reflect.ValueOf(config.Config{}).FieldByName(field).IsValid()
}

// proc is the decryptd binary run with `decryptd run --config F`.
type proc struct {
	*daemonproc.Proc
	files daemonFiles
	addr  string

	mu    sync.Mutex
	hwm   int64         // highest VmHWM read, bytes
	peaks *atomic.Int64 // the scenario's peak over all its processes
}

// startDaemon runs decryptd, learns its HTTP address from the "serving"
// log line and waits until /readyz says ready (within limit).
func (e *env) startDaemon(df daemonFiles, peak *atomic.Int64) *proc {
	t := e.t
	t.Helper()
	p := e.launch(df, peak)
	e.waitReady(p, 60*time.Second)
	return p
}

// launch starts the process and waits for its address only.
func (e *env) launch(df daemonFiles, peak *atomic.Int64) *proc {
	t := e.t
	t.Helper()
	ctx := context.Background()
	dp, err := daemonproc.Start(ctx, bins.decryptd, daemonproc.Options{Args: []string{"run", "--config", df.Config}, Log: df.Log, WatchStdout: true})
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{Proc: dp, files: df, peaks: peak}
	go p.sampleRSS()
	t.Cleanup(p.kill)
	if p.addr, err = p.WaitServing(ctx, 60*time.Second); err != nil {
		t.Fatalf("decryptd %v; log:\n%s", err, mosquittotest.Tail(df.Log, 8<<10))
	}
	return p
}

// sampleRSS reads VmHWM every 100 ms until the process ends; the
// kernel's high-water mark covers peaks between samples.
func (p *proc) sampleRSS() {
	for {
		p.readHWM()
		select {
		case <-p.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (p *proc) readHWM() {
	rss, err := daemonproc.PeakRSS(p.Cmd.Process.Pid)
	if err != nil {
		return
	}
	p.mu.Lock()
	if rss > p.hwm {
		p.hwm = rss
		for p.peaks != nil {
			old := p.peaks.Load()
			if p.hwm <= old || p.peaks.CompareAndSwap(old, p.hwm) {
				break
			}
		}
	}
	p.mu.Unlock()
}

// kill reads VmHWM a last time, sends SIGKILL and waits for the exit.
func (p *proc) kill() {
	if p.Exited() {
		return
	}
	p.readHWM()
	p.Kill()
}

// terminate reads VmHWM a last time, sends SIGTERM and returns the exit
// error.
func (p *proc) terminate(timeout time.Duration) error {
	p.readHWM()
	return p.Terminate(timeout)
}

func httpGet(url string) (*http.Response, error) {
	return daemonproc.HTTPGet(context.Background(), url)
}

func (e *env) waitReady(p *proc, limit time.Duration) {
	t := e.t
	t.Helper()
	if err := daemonproc.WaitReady(context.Background(), p.addr, limit, 100*time.Millisecond, p.Exited); err != nil {
		t.Fatalf("daemon %v (%v)", err, p.Err())
	}
}

// waitUntil polls cond every 100 ms until it holds, or fails the test.
func waitUntil(t *testing.T, limit time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, status := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (%s)", what, limit, status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sinkRecords reads a file sink: record ids (in file order) with the
// device of each, and torn lines.
type sinkRecords struct {
	ids    []string
	device map[string]string
	torn   int
}

// sinkFiles is a file sink's files, oldest first: the rotated ones
// (path.N ... path.1) and path itself.
func sinkFiles(path string) []string {
	var out []string
	for i := 1; ; i++ {
		p := path + "." + strconv.Itoa(i)
		if _, err := os.Stat(p); err != nil {
			break
		}
		out = append([]string{p}, out...)
	}
	return append(out, path)
}

func readSink(path string) sinkRecords {
	s := sinkRecords{device: map[string]string{}}
	for _, p := range sinkFiles(path) {
		s.read(p)
	}
	return s
}

func (s *sinkRecords) read(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		var r struct {
			ID       string `json:"id"`
			DeviceID string `json:"device_id"`
		}
		if json.Unmarshal(sc.Bytes(), &r) != nil || len(r.ID) != 64 {
			s.torn++
			continue
		}
		s.ids = append(s.ids, r.ID)
		s.device[r.ID] = r.DeviceID
	}
}

// deadLetter is one line of the dead-letter file: its reason and the hash
// of the payload as received.
type deadLetter struct {
	reason  string
	payload [32]byte
	raw     []byte
}

func readDeadLetters(path string) []deadLetter {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []deadLetter
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 8<<20)
	for sc.Scan() {
		var l struct {
			Reason  string `json:"reason"`
			Payload []byte `json:"payload_b64"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			out = append(out, deadLetter{reason: "(torn line)"})
			continue
		}
		out = append(out, deadLetter{reason: l.Reason, payload: sha256.Sum256(l.Payload), raw: l.Payload})
	}
	return out
}

// metrics is one scrape of /metrics (e2etest.Metrics).
type metrics = e2etest.Metrics

func scrape(addr string) (metrics, error) { return e2etest.Scrape(context.Background(), addr) }
