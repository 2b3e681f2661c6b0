package sink_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/sink"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

func sampleDeadLetter() sink.DeadLetter {
	return sink.DeadLetter{
		Reason: "auth_failed",
		Error:  "decrypt: message authentication failed",
		Message: intake.Message{
			Topic:       "iot-2/type/monitor/id/sensor-001/evt/telemetry/fmt/encrypted",
			ReceivedAt:  time.Date(2026, 11, 25, 20, 16, 1, 123456789, time.UTC),
			Redelivered: true,
			Payload:     []byte("{\"device_id\":\"sensor-001\",\"data\":\"\x00\xff binary\"}"),
		},
	}
}

// kafkaDeadLetter is sampleDeadLetter as the Kafka input hands it on.
func kafkaDeadLetter() sink.DeadLetter {
	d := sampleDeadLetter()
	d.Source = "kafka"
	d.Position = intake.LogPosition{Topic: "device-events", Partition: 3, Offset: 1234567890123}
	return d
}

func TestDeadLetterRecordGolden(t *testing.T) {
	tests := []struct {
		golden string
		d      sink.DeadLetter
	}{
		// A dead letter without input and position: the line as it was
		// before they existed, byte for byte.
		{"deadletter.golden.json", sampleDeadLetter()},
		{"deadletter_kafka.golden.json", kafkaDeadLetter()},
	}
	for _, tc := range tests {
		t.Run(tc.golden, func(t *testing.T) {
			r := tc.d.Record()
			sum := sha256.Sum256(tc.d.Payload)
			if r.ID != hex.EncodeToString(sum[:]) {
				t.Fatalf("ID %s is not the payload's SHA-256", r.ID)
			}
			if r.DeviceID != "" {
				t.Fatalf("DeviceID %q, want empty", r.DeviceID)
			}
			golden := filepath.Join("testdata", tc.golden)
			if *update {
				if err := os.WriteFile(golden, append(r.JSON, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if string(r.JSON)+"\n" != string(want) {
				t.Fatalf("dead-letter JSON changed (replay reads it):\n got %s\nwant %s", r.JSON, want)
			}
		})
	}
}

func TestDeadLetterRoundTrip(t *testing.T) {
	d := sampleDeadLetter()
	empty := sink.DeadLetter{Reason: "malformed", Message: intake.Message{Topic: "t", Payload: []byte{}}}
	kafka := kafkaDeadLetter()
	// A Kafka record whose MQTT topic could not be mapped: only its
	// position names it.
	unmapped := kafkaDeadLetter()
	unmapped.Topic = ""
	mqtt := sampleDeadLetter()
	mqtt.Source = "mqtt"
	var in bytes.Buffer
	letters := []sink.DeadLetter{d, empty, kafka, unmapped, mqtt}
	for _, x := range letters {
		in.Write(x.Record().JSON)
		in.WriteByte('\n')
	}
	var got []sink.DeadLetter
	for x, err := range sink.ReadDeadLetters(&in) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, x)
	}
	if len(got) != len(letters) {
		t.Fatalf("read %d dead letters, want %d", len(got), len(letters))
	}
	for i, want := range letters {
		g := got[i]
		if g.Topic != want.Topic || !bytes.Equal(g.Payload, want.Payload) || g.Redelivered != want.Redelivered ||
			g.Reason != want.Reason || g.Error != want.Error || !g.ReceivedAt.Equal(want.ReceivedAt) ||
			g.Source != want.Source || g.Position != want.Position {
			t.Fatalf("letter %d round trip: got %+v, want %+v", i, g, want)
		}
		// The lenient reader agrees with the strict one.
		var u sink.DeadLetter
		if err := u.UnmarshalJSON(want.Record().JSON); err != nil {
			t.Fatal(err)
		}
		if u.Topic != want.Topic || u.Source != want.Source || u.Position != want.Position || !bytes.Equal(u.Payload, want.Payload) {
			t.Fatalf("letter %d: UnmarshalJSON got %+v, want %+v", i, u, want)
		}
	}
	if g := got[1]; g.Payload == nil || len(g.Payload) != 0 || g.Redelivered {
		t.Fatalf("empty payload round trip: got %+v", g)
	}
	if j := string(d.Record().JSON); strings.Contains(j, `"input"`) || strings.Contains(j, `"kafka"`) {
		t.Fatalf("a letter without source and position names them: %s", j)
	}
}

func TestReadDeadLetters(t *testing.T) {
	const ok = `{"topic":"a/b","payload_b64":"aGk="}`
	tests := []struct {
		name    string
		in      string
		want    []string // topic:payload per good line, or "ERR line N" per error
		errText string   // must appear in some error
	}{
		{"minimal", ok + "\n", []string{"a/b:hi"}, ""},
		{"no final newline", ok, []string{"a/b:hi"}, ""},
		{"crlf and blank lines", "\r\n" + ok + "\r\n\n  \n" + ok, []string{"a/b:hi", "a/b:hi"}, ""},
		{"unknown fields and dup", `{"topic":"t","payload_b64":"","dup":true,"extra":{"x":[1]},"received_at":"2026-01-02T03:04:05Z"}`, []string{"t:"}, ""},
		{"not json", "oops\n" + ok, []string{"ERR line 1", "a/b:hi"}, "not JSON"},
		{"topic missing", `{"payload_b64":"aGk="}` + "\n" + ok, []string{"ERR line 1", "a/b:hi"}, "topic missing"},
		{"topic empty", `{"topic":"","payload_b64":"aGk="}`, []string{"ERR line 1"}, "topic empty"},
		{"payload missing", ok + "\n" + `{"topic":"a"}`, []string{"a/b:hi", "ERR line 2"}, "payload_b64 missing"},
		{"bad base64", `{"topic":"a","payload_b64":"SECRET!!"}`, []string{"ERR line 1"}, "bad value"},
		{"wrong type", `{"topic":5,"payload_b64":"aGk="}`, []string{"ERR line 1"}, "field topic"},
		{"null", "null", []string{"ERR line 1"}, "topic missing"},
		{"bad time", `{"topic":"a","payload_b64":"aGk=","received_at":"SECRET"}`, []string{"ERR line 1"}, "bad value"},
		{"too long", strings.Repeat("x", sink.MaxDeadLetterLine+10) + "\n" + ok, []string{"ERR line 1", "a/b:hi"}, "longer than"},
		{"kafka with topic", `{"topic":"a/b","payload_b64":"aGk=","input":"kafka","kafka":{"topic":"ev","partition":2,"offset":9}}`, []string{"a/b:hi kafka ev/2/9"}, ""},
		{"kafka without topic", `{"topic":"","payload_b64":"aGk=","input":"kafka","kafka":{"topic":"ev","partition":0,"offset":0}}`, []string{":hi kafka ev/0/0"}, ""},
		{"kafka, topic missing", `{"payload_b64":"aGk=","kafka":{"topic":"ev","offset":5}}`, []string{":hi  ev/0/5"}, ""},
		{"input only", `{"topic":"a/b","payload_b64":"aGk=","input":"mqtt"}`, []string{"a/b:hi mqtt"}, ""},
		{"kafka null", `{"topic":"a/b","payload_b64":"aGk=","kafka":null}`, []string{"a/b:hi"}, ""},
		{"kafka partial", `{"topic":"a/b","payload_b64":"aGk=","kafka":{"topic":"ev"}}`, []string{"a/b:hi  ev/0/0"}, ""},
		{"kafka unknown fields", `{"topic":"a/b","payload_b64":"aGk=","kafka":{"topic":"ev","partition":1,"offset":2,"leader_epoch":3}}`, []string{"a/b:hi  ev/1/2"}, ""},
		{"kafka topic empty, no topic", `{"topic":"","payload_b64":"aGk=","kafka":{"topic":"","partition":1,"offset":2}}`, []string{"ERR line 1"}, "topic empty"},
		{"kafka not an object", `{"payload_b64":"aGk=","kafka":"SECRET"}`, []string{"ERR line 1"}, "field kafka"},
		{"kafka offset not a number", `{"payload_b64":"aGk=","kafka":{"topic":"ev","offset":"SECRET"}}`, []string{"ERR line 1"}, "field kafka.offset"},
		{"kafka partition out of range", `{"payload_b64":"aGk=","kafka":{"topic":"ev","partition":4294967296}}`, []string{"ERR line 1"}, "field kafka.partition"},
		{"kafka, payload missing", `{"kafka":{"topic":"ev"}}`, []string{"ERR line 1"}, "payload_b64 missing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			var errs []string
			for d, err := range sink.ReadDeadLetters(strings.NewReader(tc.in)) {
				if err != nil {
					if !errors.Is(err, sink.ErrBadDeadLetter) {
						t.Fatalf("error %v does not wrap ErrBadDeadLetter", err)
					}
					if strings.Contains(err.Error(), "SECRET") {
						t.Fatalf("error quotes the input: %v", err)
					}
					errs = append(errs, err.Error())
					i := strings.Index(err.Error(), "line ")
					got = append(got, "ERR "+strings.Fields(err.Error()[i:])[0]+" "+strings.TrimSuffix(strings.Fields(err.Error()[i:])[1], ":"))
					continue
				}
				g := d.Topic + ":" + string(d.Payload)
				if d.Source != "" || !d.Position.IsZero() {
					g += " " + d.Source
				}
				if p := d.Position; !p.IsZero() {
					g += fmt.Sprintf(" %s/%d/%d", p.Topic, p.Partition, p.Offset)
				}
				got = append(got, g)
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("got %q, want %q (errors %q)", got, tc.want, errs)
			}
			if tc.errText != "" && !strings.Contains(strings.Join(errs, "|"), tc.errText) {
				t.Fatalf("errors %q lack %q", errs, tc.errText)
			}
		})
	}
}

func TestReadDeadLettersReadErrorStops(t *testing.T) {
	r := io.MultiReader(strings.NewReader(`{"topic":"a","payload_b64":""}`+"\n"), iotest.ErrReader(errors.New("disk gone")))
	var n, nerr int
	for _, err := range sink.ReadDeadLetters(r) {
		if err != nil {
			nerr++
			if errors.Is(err, sink.ErrBadDeadLetter) || !strings.Contains(err.Error(), "disk gone") {
				t.Fatalf("read error reported as %v", err)
			}
			continue
		}
		n++
	}
	if n != 1 || nerr != 1 {
		t.Fatalf("got %d letters and %d errors, want 1 and 1", n, nerr)
	}
}

func TestReadDeadLettersBreak(t *testing.T) {
	in := strings.Repeat(`{"topic":"a","payload_b64":""}`+"\n", 5)
	n := 0
	for range sink.ReadDeadLetters(strings.NewReader(in)) {
		n++
		if n == 2 {
			break
		}
	}
	if n != 2 {
		t.Fatalf("iterated %d times after break at 2", n)
	}
}

func FuzzReadDeadLetters(f *testing.F) {
	f.Add([]byte(sampleDeadLetter().Record().JSON))
	f.Add([]byte(`{"topic":"a/b","payload_b64":"aGk=","dup":true}` + "\n\n" + `{"topic":"x"}`))
	f.Add([]byte("null\r\n[1]\n{\"topic\":\"\",\"payload_b64\":\"!\"}"))
	f.Add([]byte(kafkaDeadLetter().Record().JSON))
	f.Add([]byte(`{"payload_b64":"","input":"kafka","kafka":{"topic":"ev","partition":-1,"offset":-2}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		lines := bytes.Count(in, []byte{'\n'}) + 1
		for d, err := range sink.ReadDeadLetters(bytes.NewReader(in)) {
			if err != nil {
				if !errors.Is(err, sink.ErrBadDeadLetter) || !strings.Contains(err.Error(), "line ") {
					t.Fatalf("error without sentinel or line number: %v", err)
				}
				continue
			}
			if (d.Topic == "" && d.Position.IsZero()) || d.Payload == nil {
				t.Fatalf("accepted a letter without topic (or kafka position) or payload: %+v", d)
			}
			// What was accepted survives its own encoding.
			var again []sink.DeadLetter
			for d2, err := range sink.ReadDeadLetters(bytes.NewReader(d.Record().JSON)) {
				if err != nil {
					t.Fatalf("re-reading an encoded letter: %v", err)
				}
				again = append(again, d2)
			}
			if len(again) != 1 || again[0].Topic != d.Topic || !bytes.Equal(again[0].Payload, d.Payload) || again[0].Redelivered != d.Redelivered ||
				again[0].Source != d.Source || again[0].Position != d.Position {
				t.Fatalf("round trip changed %+v into %+v", d, again)
			}
			lines--
		}
		if lines < 0 {
			t.Fatalf("more letters than lines")
		}
	})
}
