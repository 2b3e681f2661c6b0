package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/daemon"
	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/pki"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/testutil/keyenv"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/vectors"
)

// setupKeys imports the vectors' keys into a key side in dir (audit log
// audit.log), as `dekctl import --file testdata/envelope-v1.json` does.
func setupKeys(t *testing.T, dir string, v vectors.File) {
	t.Helper()
	keyenv.ImportVectors(t, dir, "audit.log", v)
}

func testConfig(t *testing.T, dir string, b *mosquittotest.Broker, client pki.Files) *config.Config {
	t.Helper()
	on := true
	cfg := config.Default()
	cfg.MQTT.Brokers = []string{b.SSLURL}
	cfg.MQTT.ClientID = "decryptd-test"
	cfg.MQTT.Topics = []string{"iot-2/type/+/id/+/evt/+/fmt/+"}
	cfg.MQTT.SharedGroup = "decryptd"
	cfg.MQTT.TLS = config.TLS{CAFile: client.CA, CertFile: client.Cert, KeyFile: client.Key}
	cfg.MQTT.KeepAlive = 5 * time.Second
	cfg.KMS = config.KMS{Provider: config.ProviderLocal, Local: config.LocalKMS{RootKeyFile: filepath.Join(dir, "root-key.json")}}
	cfg.Registry = config.Registry{Driver: config.DriverFile, Path: filepath.Join(dir, "registry.json")}
	cfg.Sinks = []config.Sink{{Name: "records", Type: config.SinkFile, Config: &sink.FileConfig{Path: filepath.Join(dir, "records.jsonl"),
		MaxBytes: config.DefaultSinkMaxBytes, Keep: config.DefaultSinkKeep, Fsync: &on}}}
	cfg.DeadLetter = config.DeadLetter{Type: config.SinkFile, Path: filepath.Join(dir, "dead-letter.jsonl"), Fsync: &on}
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Audit.Path = filepath.Join(dir, "audit.log")
	cfg.ShutdownTimeout = 10 * time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		out = append(out, bytes.Clone(sc.Bytes()))
	}
	return out
}

// TestDaemonVectors runs the whole daemon (real Mosquitto with mutual TLS,
// local KMS, file registry) on ephemeral ports, publishes every spec
// vector in order at QoS 1, and checks each one's record or dead-letter
// reason, the metrics, and a clean shutdown. Then it replays the dead
// letters through a fresh daemon's keys.
func TestDaemonVectors(t *testing.T) {
	v := vectors.Load(t)
	cases := v.Cases
	b := mosquittotest.Start(t, mosquittotest.Options{})
	dir := t.TempDir()
	setupKeys(t, dir, v)
	cfg := testConfig(t, dir, b, b.ClientCert("decryptd"))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := prometheus.NewRegistry()
	d, err := daemon.New(ctx, daemon.Options{Config: cfg, Registry: reg, Version: "test"})
	if err != nil {
		t.Fatalf("daemon.New: %v", err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(ctx) }()
	base := "http://" + d.Addr().String()

	if code, _ := httpGet(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz: %d", code)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body := httpGet(t, base+"/readyz")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still %d (%s) after 15 s", code, strings.TrimSpace(body))
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Publish every case in order at QoS 1 (the duplicate and replay cases
	// depend on the ones before them being accepted first; all are on one
	// topic, which the daemon processes in order).
	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.SSLURL).SetClientID("vector-publisher").
		SetTLSConfig(b.ClientTLS("publisher")).SetCleanSession(true).SetConnectTimeout(10 * time.Second))
	if tok := pub.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher connect: %v", tok.Error())
	}
	defer pub.Disconnect(100)
	wantOK, wantDup, wantFail := 0, 0, map[string]int{}
	for _, c := range cases {
		tok := pub.Publish(c.Topic, 1, false, c.Message)
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %s: %v", c.Name, tok.Error())
		}
		switch {
		case c.Expect.OK:
			wantOK++
		case c.Expect.Duplicate:
			wantDup++
		default:
			wantFail[c.Expect.Reason]++
		}
	}
	nFail := 0
	for _, n := range wantFail {
		nFail += n
	}

	recPath, dlPath := cfg.Sinks[0].Config.(*sink.FileConfig).Path, cfg.DeadLetter.Path
	deadline = time.Now().Add(20 * time.Second)
	for len(readLines(t, recPath)) < wantOK || len(readLines(t, dlPath)) < nFail {
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s: %d records (want %d), %d dead letters (want %d)",
				len(readLines(t, recPath)), wantOK, len(readLines(t, dlPath)), nFail)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Every message is processed (the duplicate leaves no line).
	for {
		_, page := httpGet(t, base+"/metrics")
		if strings.Contains(page, fmt.Sprintf(`decryptd_messages_processed_total{outcome="duplicate"} %d`, wantDup)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s: no %d duplicates processed", wantDup)
		}
		time.Sleep(20 * time.Millisecond)
	}

	records := map[string]map[string]json.RawMessage{}
	recordCount := map[string]int{}
	recordLines := map[string][]byte{} // by id, as the sink wrote them
	for _, l := range readLines(t, recPath) {
		var r map[string]json.RawMessage
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatalf("record line is not JSON: %v", err)
		}
		var id string
		_ = json.Unmarshal(r["id"], &id)
		records[id] = r
		recordLines[id] = l
		recordCount[id]++
	}
	deadLetters := map[string]sink.DeadLetter{} // by payload
	dlCount := map[string]int{}
	dlData, err := os.ReadFile(dlPath)
	if err != nil {
		t.Fatal(err)
	}
	for dl, err := range sink.ReadDeadLetters(bytes.NewReader(dlData)) {
		if err != nil {
			t.Fatal(err)
		}
		deadLetters[string(dl.Payload)] = dl
		dlCount[string(dl.Payload)]++
	}
	// Exactly the failing cases are dead-lettered, once each; the exact
	// repeat is not.
	wantDL := map[string]int{}
	for _, c := range cases {
		if !c.Expect.OK && !c.Expect.Duplicate {
			wantDL[c.Message]++
		}
	}
	for id, n := range recordCount {
		if n != 1 {
			t.Errorf("record %s written %d times", id, n)
		}
	}
	if !reflect.DeepEqual(dlCount, wantDL) {
		t.Errorf("dead letters per payload %v, want %v", dlCount, wantDL)
	}

	for i, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			if c.Expect.Duplicate {
				// The message it repeats is the case before it: delivered
				// once (checked above), never dead-lettered.
				if _, ok := deadLetters[c.Message]; ok {
					t.Fatal("an exact repeat was dead-lettered")
				}
				var id string
				if err := json.Unmarshal(cases[i-1].Expect.Record["id"], &id); err != nil {
					t.Fatal(err)
				}
				if recordCount[id] != 1 {
					t.Fatalf("the repeated message's record written %d times, want once", recordCount[id])
				}
				return
			}
			if !c.Expect.OK {
				dl, ok := deadLetters[c.Message]
				if !ok {
					t.Fatalf("not dead-lettered (want reason %s)", c.Expect.Reason)
				}
				if dl.Reason != c.Expect.Reason || dl.Topic != c.Topic || dl.ReceivedAt.IsZero() {
					t.Fatalf("dead letter reason %q topic %q received_at %v; want reason %q topic %q",
						dl.Reason, dl.Topic, dl.ReceivedAt, c.Expect.Reason, c.Topic)
				}
				return
			}
			var id string
			if err := json.Unmarshal(c.Expect.Record["id"], &id); err != nil {
				t.Fatal(err)
			}
			got, ok := records[id]
			if !ok {
				t.Fatalf("no record with id %s", id)
			}
			var topic string
			_ = json.Unmarshal(got["topic"], &topic)
			if topic != c.Topic {
				t.Errorf("topic %q, want %q", topic, c.Topic)
			}
			vectors.CheckRecord(t, recordLines[id], c.Expect)
		})
	}

	// The metrics page shows every failure count.
	_, page := httpGet(t, base+"/metrics")
	for reason, n := range wantFail {
		line := fmt.Sprintf(`decryptd_decrypt_failures_total{reason=%q} %d`, reason, n)
		if !strings.Contains(page, line) {
			t.Errorf("/metrics lacks %s", line)
		}
	}
	for _, line := range []string{
		fmt.Sprintf(`decryptd_records_delivered_total{sink="records"} %d`, wantOK),
		`decryptd_decrypt_failures_total{reason="stale"} 0`,
		fmt.Sprintf(`decryptd_duplicates_total{cause="repeat"} %d`, wantDup),
		`decryptd_duplicates_total{cause="redelivery"} 0`,
		`decryptd_build_info{goversion="`,
		`go_goroutines `,
		`decryptd_mqtt_connection_up{connection="0"} 1`,
	} {
		if !strings.Contains(page, line) {
			t.Errorf("/metrics lacks %s", line)
		}
	}

	cancel()
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return within 20 s of the context ending")
	}
	if n, err := verifyAudit(cfg.Audit.Path); err != nil || n == 0 {
		t.Fatalf("audit log: %d events, %v", n, err)
	}

	t.Run("replay", func(t *testing.T) {
		// A fresh process replays the dead letters: every reason recurs
		// but replay, whose message is new to a fresh replay window.
		moved := filepath.Join(dir, "dead-letter.replay.jsonl")
		if err := os.Rename(dlPath, moved); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(moved)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		sum, err := daemon.Replay(ctx, daemon.Options{Config: cfg}, f)
		if err != nil {
			t.Fatalf("Replay: %v", err)
		}
		wantReasons := map[string]int{}
		for r, n := range wantFail {
			wantReasons[r] = n
		}
		wantReasons["replay"]--
		for r, n := range sum.Reasons {
			if n != wantReasons[r] {
				t.Errorf("reasons[%s] = %d, want %d", r, n, wantReasons[r])
			}
		}
		if sum.Processed != nFail || sum.Delivered != 1 || sum.DeadLettered != nFail-1 || sum.Duplicates != 0 || sum.BadLines != 0 {
			t.Errorf("summary %+v", sum)
		}
		if sum.KMSUnwraps == 0 {
			t.Errorf("kms_unwraps = 0: a fresh cache must unwrap")
		}
		if got := len(readLines(t, dlPath)); got != nFail-1 {
			t.Errorf("new dead-letter file holds %d, want %d", got, nFail-1)
		}
	})

	t.Run("replay refuses its own dead-letter file", func(t *testing.T) {
		f, err := os.Open(dlPath)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, err = daemon.Replay(context.Background(), daemon.Options{Config: cfg}, f)
		if err == nil || !strings.Contains(err.Error(), "move it aside") {
			t.Fatalf("Replay of the dead-letter file itself: %v", err)
		}
	})

	t.Run("every vector through replay", func(t *testing.T) {
		// All the cases, in order, as dead letters: a fresh replay gives
		// each its expected outcome, the exact repeat a duplicate (cause
		// repeat: no DUP flag).
		var in bytes.Buffer
		for _, c := range cases {
			dl := sink.DeadLetter{Reason: "unknown_key", Error: "x", Message: intake.Message{Topic: c.Topic, ReceivedAt: time.Now().UTC(), Payload: []byte(c.Message)}}
			in.Write(dl.Record().JSON)
			in.WriteByte('\n')
		}
		before := len(readLines(t, dlPath))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		sum, err := daemon.Replay(ctx, daemon.Options{Config: cfg}, &in)
		if err != nil {
			t.Fatalf("Replay: %v", err)
		}
		if sum.Processed != len(cases) || sum.Delivered != wantOK || sum.Duplicates != wantDup || sum.DeadLettered != nFail ||
			sum.DuplicatesByCause["repeat"] != wantDup || sum.DuplicatesByCause["redelivery"] != 0 || sum.BadLines != 0 {
			t.Errorf("summary %+v; want %d processed, %d delivered, %d duplicates (repeat), %d dead-lettered", sum, len(cases), wantOK, wantDup, nFail)
		}
		for r, n := range sum.Reasons {
			if n != wantFail[r] {
				t.Errorf("reasons[%s] = %d, want %d", r, n, wantFail[r])
			}
		}
		if got := len(readLines(t, dlPath)) - before; got != nFail {
			t.Errorf("%d new dead letters, want %d", got, nFail)
		}
	})
}

func verifyAudit(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return audit.Verify(f)
}

// TestDaemonNotReadyWithoutBroker: /healthz answers, /readyz says 503
// while the broker cannot be reached, and shutdown still completes.
func TestDaemonNotReadyWithoutBroker(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{})
	dir := t.TempDir()
	setupKeys(t, dir, vectors.Load(t))
	cfg := testConfig(t, dir, b, b.ClientCert("decryptd"))
	b.Stop()
	cfg.MQTT.ConnectTimeout = time.Second

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := daemon.New(ctx, daemon.Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(ctx) }()
	base := "http://" + d.Addr().String()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _ := httpGet(t, base+"/healthz"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/healthz never answered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, body := httpGet(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d %q without a broker, want 503", code, body)
	}
	cancel()
	select {
	case <-runErr:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
}
