package faults_test

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/fleet"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/testutil/daemonproc"
)

// outage is a sink failure the test switches on and off: a full
// filesystem under the file sink (a tmpfs the test mounts, as root), or,
// where it cannot mount, an HTTP sink answering 503.
type outage struct {
	kind    string // "ENOSPC" or "HTTP 503"
	sinks   string // the sinks YAML
	records string // where the records end up (a JSONL file either way)
	dir     string
	rcv     *receiver
}

// newOutage mounts a tmpfs of size bytes for the file sink, or falls
// back to an HTTP receiver.
func newOutage(t *testing.T, e *env, size int64) *outage {
	t.Helper()
	o := &outage{dir: filepath.Join(e.dir, "sinkfs")}
	if err := os.MkdirAll(o.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "tmpfs", o.dir).CombinedOutput(); err == nil {
		t.Cleanup(func() {
			if out, err := exec.Command("umount", o.dir).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v %s", o.dir, err, out)
			}
		})
		o.kind = "ENOSPC"
		o.records = filepath.Join(o.dir, "records.jsonl")
		o.sinks = fmt.Sprintf("  - name: records\n    type: file\n    path: %q\n    fsync: true\n", o.records)
		return o
	} else {
		t.Logf("cannot mount a tmpfs (%v: %s): the sink failure is an HTTP sink answering 503", err, strings.TrimSpace(string(out)))
	}
	o.kind = "HTTP 503"
	o.records = filepath.Join(e.dir, "received.jsonl")
	f, err := os.OpenFile(o.records, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	o.rcv = &receiver{w: f}
	srv := httptest.NewServer(o.rcv)
	t.Cleanup(srv.Close)
	o.sinks = fmt.Sprintf("  - name: records\n    type: http\n    url: %q\n    batch_max: 100\n    timeout: 2s\n", srv.URL+"/records")
	return o
}

// fail starts the outage: the filesystem filled to the last byte, or the
// receiver down.
func (o *outage) fail(t *testing.T) {
	t.Helper()
	if o.rcv != nil {
		o.rcv.setDown(true)
		return
	}
	f, err := os.OpenFile(filepath.Join(o.dir, "filler"), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for len(chunk) > 0 {
		if _, err := f.Write(chunk); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				chunk = chunk[:len(chunk)/2]
				continue
			}
			t.Fatal(err)
		}
	}
}

// repair ends it.
func (o *outage) repair(t *testing.T) {
	t.Helper()
	if o.rcv != nil {
		o.rcv.setDown(false)
		return
	}
	if err := os.Remove(filepath.Join(o.dir, "filler")); err != nil {
		t.Fatal(err)
	}
}

// receiver is an HTTP sink's other end: NDJSON batches appended to a
// file, or 503 while down.
type receiver struct {
	mu   sync.Mutex
	w    io.Writer
	down bool
	hang bool // while down: answer only after 2.5 s (past the sink's 2 s timeout)
}

func (r *receiver) setDown(d bool) {
	r.mu.Lock()
	r.down = d
	r.mu.Unlock()
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	r.mu.Lock()
	if r.down && r.hang {
		r.mu.Unlock()
		time.Sleep(2500 * time.Millisecond)
		r.mu.Lock()
	}
	defer r.mu.Unlock()
	if r.down || err != nil {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		if !json.Valid(sc.Bytes()) {
			http.Error(w, "not a record", http.StatusBadRequest)
			return
		}
	}
	if _, err := r.w.Write(body); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if len(body) > 0 && body[len(body)-1] != '\n' {
		_, _ = r.w.Write([]byte{'\n'})
	}
}

// nextLarge makes a shape A message of device di of about size bytes,
// its readings carrying marker (a planted reading value).
func (s *sender) nextLarge(di, size int, marker string) (outMsg, error) {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	d := s.e.fleet.Device(di)
	ver, aead := d.Current()
	raw := make([]byte, size*3/4*3/4)
	_, _ = rand.Read(raw)
	readings := fmt.Sprintf(`{"waveform":%q,"marker":%q}`, base64.StdEncoding.EncodeToString(raw), marker)
	s.nr.first = nil
	env := seal.Envelope{DeviceID: d.ID, Timestamp: time.Now().Unix(), KeyVersion: ver}
	payload, err := seal.New(s.nr).AppendShapeA(nil, aead, env, []byte(readings), []byte(`{"fw":"1.4.2"}`))
	if err != nil {
		return outMsg{}, err
	}
	return outMsg{dev: di, topic: d.Topic(), payload: payload, device: d.ID, id: recordID(d.KeyID, ver, s.nr.first)}, nil
}

// A sink failure mid-stream (the file sink's filesystem full, ENOSPC; or
// an HTTP sink answering 503): intake pauses, nothing is dead-lettered,
// nothing lost once it is repaired.
func TestSinkFailure(t *testing.T) {
	t.Parallel()
	const devices = 40
	var (
		down  = pick(20*time.Second, 60*time.Second)
		count = pick(4000, 20000)
		rate  = pick(100.0, 200.0)
		bound = pick(45*time.Second, 10*time.Second)
	)
	e := newEnv(t, envOptions{devices: devices})
	o := newOutage(t, e, 256<<20)
	df := e.writeConfig(daemonConfig{ClientID: "s1", Sinks: o.sinks})
	df.Records = o.records
	var peak atomic.Int64
	p := e.startDaemon(df, &peak)
	s := newSender(t, e, 4, fleet.DefaultMix())
	done := s.stream(allDevices(devices), count, rate)
	waitUntil(t, time.Minute, "records before the failure", func() (bool, string) {
		n := countLines(df.Records)
		return n >= 200, fmt.Sprintf("%d", n)
	})
	o.fail(t)
	time.Sleep(down)
	m := mustScrape(t, p)
	if v := m.Sum("decryptd_sink_up", "sink", "records"); v != 0 {
		t.Errorf("decryptd_sink_up{sink=records} = %v at the end of the %s outage, want 0", v, o.kind)
	}
	base := countLines(df.Records)
	o.repair(t)
	upAt := time.Now()
	rec := resumed(t, df.Records, base, upAt, 2*time.Minute)
	waitStream(t, done, 3*time.Minute)
	s.flush(t)
	r, miss, _ := settle(t, s, p, 90*time.Second)
	r.Lost = len(miss)
	r.Fault = fmt.Sprintf("sink %s for %s", o.kind, down)
	r.Recover, r.RecoverBound, r.PeakRSS, r.Budget = rec, bound, peak.Load(), df.budget
	bookkeep(t, r)
}

// About 240 KiB messages while the sink is failing: the peak RSS stays
// within the budget the configuration gives (deploytest.MemoryBudget),
// nothing is lost once the sink is back.
func TestLargeMessagesSinkOutage(t *testing.T) {
	t.Parallel()
	const devices = 20
	var (
		down  = pick(20*time.Second, 60*time.Second)
		count = pick(200, 1500)
		bound = pick(60*time.Second, 20*time.Second)
	)
	e := newEnv(t, envOptions{devices: devices, maxInflight: 64})
	o := newOutage(t, e, int64(pick(256<<20, 768<<20)))
	df := e.writeConfig(daemonConfig{ClientID: "l1", Sinks: o.sinks, MaxInFlight: 64})
	df.Records = o.records
	var peak atomic.Int64
	p := e.startDaemon(df, &peak)
	s := newSender(t, e, 2, fleet.DefaultMix())
	marker := "rv-" + randHex(8)
	e.plant(marker)
	send := func(from, to int) {
		for i := from; i < to; i++ {
			m, err := s.nextLarge(i%devices, 240<<10, marker)
			if err != nil {
				t.Error(err)
				return
			}
			if i == from && (len(m.payload) < 200<<10 || len(m.payload) > 256<<10) {
				t.Errorf("large message of %d bytes, want about 240 KiB", len(m.payload))
				return
			}
			s.send(m)
		}
	}
	send(0, 20)
	waitUntil(t, time.Minute, "large records before the failure", func() (bool, string) {
		n := countLines(df.Records)
		return n >= 20, fmt.Sprintf("%d", n)
	})
	o.fail(t)
	failAt := time.Now()
	sent := make(chan struct{})
	go func() { defer close(sent); send(20, count) }()
	time.Sleep(time.Until(failAt.Add(down)))
	base := countLines(df.Records)
	o.repair(t)
	upAt := time.Now()
	rec := resumed(t, df.Records, base, upAt, 2*time.Minute)
	<-sent
	s.flush(t)
	r, miss, _ := settle(t, s, p, 2*time.Minute)
	r.Lost = len(miss)
	r.Fault = fmt.Sprintf("240 KiB messages, sink %s for %s", o.kind, down)
	r.Recover, r.RecoverBound, r.PeakRSS, r.Budget = rec, bound, peak.Load(), df.budget
	r.Note = "max_in_flight 64"
	bookkeep(t, r)
}

// A hostile flood: bad messages of every kind the generator makes
// (tampered, unknown key version, replayed, malformed, topic mismatch),
// oversized ones, binary garbage, empty payloads, and messages of devices
// the registry does not know, among good ones: every bad one
// dead-lettered under its reason, every good one delivered, the daemon up.
func TestHostileFlood(t *testing.T) {
	t.Parallel()
	const devices = 40
	var (
		count   = pick(1500, 10000)
		crafted = pick(150, 900)
	)
	e := newEnv(t, envOptions{devices: devices})
	df := e.writeConfig(daemonConfig{ClientID: "h1"})
	var peak atomic.Int64
	p := e.startDaemon(df, &peak)
	mix := fleet.Mix{ShapeB: 0.5, Bad: map[fleet.Kind]float64{}}
	for _, k := range fleet.BadKinds() {
		mix.Bad[k] = 0.08
	}
	s := newSender(t, e, 4, mix)
	done := s.stream(allDevices(devices), count, pick(400.0, 1000.0))
	ghostKey := make([]byte, 32)
	_, _ = rand.Read(ghostKey)
	ghost, err := seal.NewAEAD(ghostKey)
	if err != nil {
		t.Fatal(err)
	}
	e.plant(base64.StdEncoding.EncodeToString(ghostKey))
	for i := 0; i < crafted; i++ {
		d := e.fleet.Device(i % devices)
		m := outMsg{dev: i, topic: d.Topic()}
		switch i % 4 {
		case 0: // oversized: over decrypt.max_message_bytes
			m.payload = []byte(`{"metadata":{"device_id":"` + d.ID + `"},"pad":"` + strings.Repeat("A", 300<<10) + `"}`)
			m.reason = "malformed"
		case 1: // binary garbage
			m.payload = make([]byte, 200)
			_, _ = rand.Read(m.payload)
			m.reason = "malformed"
		case 2: // empty
			m.payload = []byte{}
			m.reason = "malformed"
			// An empty payload is the same bytes every time: send one.
			if i != 2 {
				m.payload = []byte(fmt.Sprintf(`{"n":%d`, i))
			}
		case 3: // a device the registry does not know, its own key
			id := fmt.Sprintf("ghost-%04d", i)
			env := seal.Envelope{DeviceID: id, Timestamp: time.Now().Unix(), KeyVersion: "v1"}
			pl, err := seal.New(nil).AppendShapeA(nil, ghost, env, []byte(`{"heart_rate":70}`), nil)
			if err != nil {
				t.Fatal(err)
			}
			m.topic, m.payload, m.reason = fleet.TopicFor("monitor", id), pl, "unknown_key"
		}
		s.send(m)
	}
	waitStream(t, done, 3*time.Minute)
	s.flush(t)
	r, miss, _ := settle(t, s, p, 60*time.Second)
	r.Lost = len(miss)
	r.Fault = "hostile flood"
	r.PeakRSS, r.Budget = peak.Load(), df.budget
	bad := 0
	for _, n := range r.DeadLettered {
		bad += n
	}
	r.Note = fmt.Sprintf("%d hostile", bad)
	if p.Exited() {
		t.Errorf("decryptd exited during the flood: %v", p.Err())
	}
	if resp, err := httpGet("http://" + p.addr + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz after the flood: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	bookkeep(t, r)
}

// A token planted in an HTTP sink's URL query and in its auth header file
// appears in no log: the sink times out for a while (a network error, whose
// Go error text names the URL), so its "sink down" warnings are written. A configuration that refuses credentials in URL
// queries (check-config and run) must refuse without echoing the token.
func TestSecretInSinkURL(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{devices: 10})
	token := "tok-" + randHex(12)
	bearer := "bearer-" + randHex(12)
	e.plant(token, bearer)
	rec := filepath.Join(e.dir, "received.jsonl")
	f, err := os.OpenFile(rec, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rcv := &receiver{w: f, hang: true}
	srv := httptest.NewServer(rcv)
	t.Cleanup(srv.Close)
	authFile := filepath.Join(e.dir, "auth-header")
	if err := os.WriteFile(authFile, []byte("Bearer "+bearer+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sinks := fmt.Sprintf("  - name: ehr\n    type: http\n    url: %q\n    auth_header_file: %q\n    batch_max: 50\n    timeout: 2s\n", srv.URL+"/records?token="+token, authFile)
	df := e.writeConfig(daemonConfig{ClientID: "u1", Sinks: sinks, NoLoad: true})
	df.Records = rec
	if _, err := config.Load(df.Config, func(string) (string, bool) { return "", false }); err != nil {
		// Refused (credentials in a URL query): the refusal names the key,
		// never the value; check-config and run say the same.
		if strings.Contains(err.Error(), token) {
			t.Errorf("the configuration's refusal echoes the token: %v", err)
		}
		for _, args := range [][]string{{"check-config", "--config", df.Config}, {"run", "--config", df.Config}} {
			cmd := exec.Command(bins.decryptd, args...)
			cmd.Env = daemonproc.CleanEnv()
			out, err := cmd.CombinedOutput()
			_ = os.WriteFile(df.Log, append(readFile(df.Log), out...), 0o600)
			if err == nil {
				t.Errorf("decryptd %s accepted a token in the sink URL's query", args[0])
			}
		}
		record(result{Fault: "token in a sink URL query", Note: "refused at start, token not echoed", Held: !t.Failed()})
		// What check-config lets through must still be logged redacted:
		// a secret in a query parameter it does not know as a credential
		// (every query value is redacted in logs).
		token = "tenant-" + randHex(12)
		e.plant(token)
		sinks = fmt.Sprintf("  - name: ehr\n    type: http\n    url: %q\n    auth_header_file: %q\n    batch_max: 50\n    timeout: 2s\n", srv.URL+"/records?tenant="+token, authFile)
		df = e.writeConfig(daemonConfig{ClientID: "u2", Sinks: sinks, NoLoad: true})
		df.Records = rec
		if _, err := config.Load(df.Config, func(string) (string, bool) { return "", false }); err != nil {
			t.Logf("a value in the query parameter tenant is refused too (%v): nothing more to run", err)
			return
		}
	}
	var peak atomic.Int64
	p := e.startDaemon(df, &peak)
	rcv.setDown(true)
	s := newSender(t, e, 2, fleet.DefaultMix())
	waitStream(t, s.stream(allDevices(10), 200, 100), time.Minute)
	// Long enough for the sink's own attempts (4, each timing out at 2 s)
	// to give up, so the failure reaches the log.
	time.Sleep(15 * time.Second)
	base := countLines(rec)
	rcv.setDown(false)
	upAt := time.Now()
	rtt := resumed(t, rec, base, upAt, time.Minute)
	s.flush(t)
	r, miss, _ := settle(t, s, p, 60*time.Second)
	r.Lost = len(miss)
	// The check tested something only if the sink's failure was logged.
	warned := ""
	for _, line := range strings.Split(string(readFile(df.Log)), "\n") {
		if strings.Contains(line, "sink down") {
			warned = strings.ReplaceAll(line, token, "<TOKEN>")
			break
		}
	}
	if warned == "" {
		t.Errorf("decryptd logged no \"sink down\" warning while its HTTP sink timed out: the URL check saw nothing")
	} else {
		t.Logf("the sink's failure as logged: %.400s", warned)
	}
	// The row says whether the token stayed out of the log (the scan of
	// every log runs again at the end).
	if strings.Contains(string(readFile(df.Log)), token) {
		t.Errorf("the secret planted in the sink URL's query is in decryptd's log")
	}
	r.Fault = "HTTP sink timing out for 15s, a secret in its URL's query"
	r.Recover, r.RecoverBound, r.PeakRSS, r.Budget = rtt, pick(30*time.Second, 10*time.Second), peak.Load(), 0
	bookkeep(t, r)
}

func readFile(path string) []byte {
	b, _ := os.ReadFile(path)
	return b
}

func mustScrape(t *testing.T, p *proc) metrics {
	t.Helper()
	m, err := scrape(p.addr)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	return m
}
