package decrypt

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/testutil/fakeclock"
)

// kit is a Decryptor over one device key with a sealer and a settable clock.
type kit struct {
	d    *Decryptor
	keys *fakeKeys
	s    *seal.Sealer
	env  seal.Envelope
	clk  *fakeclock.Clock
}

const testTopic = "iot-2/type/monitor/id/sensor-9/evt/telemetry/fmt/json"

func newKit(t *testing.T, opts Options) *kit {
	t.Helper()
	k := &kit{keys: newFakeKeys(), s: seal.New(&countingReader{}), clk: fakeclock.At(time.Unix(1700000000, 0))}
	k.keys.add(t, "device/sensor-9", "v3", make([]byte, 32), dek.StateActive)
	k.keys.add(t, "device/sensor-9", "v2", make([]byte, 32), dek.StateRevoked)
	if opts.Now == nil {
		opts.Now = k.clk.Now
	}
	d, err := New(k.keys, opts)
	if err != nil {
		t.Fatal(err)
	}
	k.d = d
	k.env = seal.Envelope{DeviceID: "sensor-9", Timestamp: 1700000000, KeyVersion: "v3"}
	return k
}

func (k *kit) shapeA(t *testing.T, env seal.Envelope, readings string) []byte {
	t.Helper()
	msg, err := k.s.AppendShapeA(nil, k.keys.keys[keyRef{"device/sensor-9", "v3"}].aead, env, []byte(readings), nil)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func (k *kit) shapeB(t *testing.T, env seal.Envelope, fields ...seal.Field) []byte {
	t.Helper()
	msg, err := k.s.AppendShapeB(nil, k.keys.keys[keyRef{"device/sensor-9", "v3"}].aead, env, fields)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func (k *kit) open(payload []byte, dup bool) (Record, error) {
	return k.d.Open(context.Background(), Message{Topic: testTopic, Payload: payload, Redelivered: dup})
}

func TestMalformed(t *testing.T) {
	k := newKit(t, Options{MaxMessageBytes: 4096})
	good := string(k.shapeA(t, k.env, `{"a":1}`))
	b64 := good[len(`{"encrypted_data":"`):strings.Index(good, `","key_version"`)]
	a := func(rest string) string { return `{"encrypted_data":"` + b64 + `"` + rest + `}` }
	meta := `,"metadata":{"device_id":"sensor-9","timestamp":1700000000}`
	cases := []struct{ name, msg string }{
		{"not json", `{"encrypted_data": `},
		{"array", `[]`},
		{"string", `"x"`},
		{"empty", ``},
		{"over the size limit", `{"device_id":"sensor-9","timestamp":1,"pad":"` + strings.Repeat("x", 4096) + `"}`},
		{"repeated top-level member", a(`,"key_version":"v3"` + meta + `,"key_version":"v3"`)},
		{"repeated member in metadata", a(`,"key_version":"v3","metadata":{"device_id":"sensor-9","timestamp":1700000000,"fw":1,"fw":2}`)},
		{"repeated member deep in shape B", `{"device_id":"sensor-9","timestamp":1,"x":[{"y":{"z":1,"z":2}}]}`},
		{"A: encrypted_data not a string", `{"encrypted_data":1,"key_version":"v3"` + meta + `}`},
		{"A: key_version missing", a(meta)},
		{"A: key_version not a string", a(`,"key_version":3` + meta)},
		{"A: key_version empty", a(`,"key_version":""` + meta)},
		{"A: key_version too long", a(`,"key_version":"` + strings.Repeat("v", 33) + `"` + meta)},
		{"A: key_version with colon", a(`,"key_version":"v:3"` + meta)},
		{"A: key_id not a string", a(`,"key_version":"v3","key_id":null` + meta)},
		{"A: key_id with space", a(`,"key_version":"v3","key_id":"device/sensor 9"` + meta)},
		{"A: key_id too long", a(`,"key_version":"v3","key_id":"` + strings.Repeat("k", 201) + `"` + meta)},
		{"A: metadata missing", a(`,"key_version":"v3"`)},
		{"A: metadata not an object", a(`,"key_version":"v3","metadata":[]`)},
		{"A: metadata device_id missing", a(`,"key_version":"v3","metadata":{"timestamp":1700000000}`)},
		{"A: metadata timestamp missing", a(`,"key_version":"v3","metadata":{"device_id":"sensor-9"}`)},
		{"A: device_id at top level only", a(`,"key_version":"v3","device_id":"sensor-9","timestamp":1700000000,"metadata":{}`)},
		{"A: bad base64", `{"encrypted_data":"%%%","key_version":"v3"` + meta + `}`},
		{"A: base64 with escaped newline", `{"encrypted_data":"` + b64[:8] + `\n` + b64[8:] + `","key_version":"v3"` + meta + `}`},
		// Not JSON at all (a raw line break, control byte or invalid UTF-8
		// in a string); the scanner leaves encrypted_data's text to the
		// base64 decoder, which refuses it before any key lookup.
		{"A: raw newline in encrypted_data", `{"encrypted_data":"` + b64[:8] + "\n" + b64[8:] + `","key_version":"v3"` + meta + `}`},
		{"A: raw control byte in encrypted_data", `{"encrypted_data":"` + b64[:8] + "\x01" + b64[8:] + `","key_version":"v3"` + meta + `}`},
		{"A: invalid UTF-8 in encrypted_data", `{"encrypted_data":"` + b64[:8] + "\xff" + b64[8:] + `","key_version":"v3"` + meta + `}`},
		{"A: base64 alphabets mixed", `{"encrypted_data":"` + strings.Replace(strings.Replace(b64, "+", "-", 1), "/", "/", 1) + `+/","key_version":"v3"` + meta + `}`},
		{"A: base64 bad padding", `{"encrypted_data":"` + b64 + `=","key_version":"v3"` + meta + `}`},
		{"A: sealed too short", `{"encrypted_data":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB","key_version":"v3"` + meta + `}`},
		{"A: empty encrypted_data", `{"encrypted_data":"","key_version":"v3"` + meta + `}`},
		{"B: device_id missing", `{"timestamp":1}`},
		{"B: timestamp missing", `{"device_id":"sensor-9"}`},
		{"B: device_id not a string", `{"device_id":9,"timestamp":1}`},
		{"B: device_id empty", `{"device_id":"","timestamp":1}`},
		{"B: device_id too long", `{"device_id":"` + strings.Repeat("d", 129) + `","timestamp":1}`},
		{"B: device_id with slash", `{"device_id":"a/b","timestamp":1}`},
		{"B: device_id non-ASCII", `{"device_id":"capteur-é","timestamp":1}`},
		{"B: timestamp string", `{"device_id":"sensor-9","timestamp":"1"}`},
		{"B: timestamp negative", `{"device_id":"sensor-9","timestamp":-5}`},
		{"B: timestamp minus zero", `{"device_id":"sensor-9","timestamp":-0}`},
		{"B: timestamp fraction", `{"device_id":"sensor-9","timestamp":1.0}`},
		{"B: timestamp exponent", `{"device_id":"sensor-9","timestamp":1e9}`},
		{"B: timestamp leading zero", `{"device_id":"sensor-9","timestamp":01}`},
		{"B: timestamp beyond int64", `{"device_id":"sensor-9","timestamp":9223372036854775808}`},
		{"B: timestamp null", `{"device_id":"sensor-9","timestamp":null}`},
		{"B: sealed field without key_version", `{"device_id":"sensor-9","timestamp":1,"x":"ENC:AES256:` + b64 + `"}`},
		{"B: sealed field bad base64", `{"device_id":"sensor-9","timestamp":1,"key_version":"v3","x":"ENC:AES256:***"}`},
		{"B: sealed field too short", `{"device_id":"sensor-9","timestamp":1,"key_version":"v3","x":["ENC:AES256:AAAA"]}`},
		{"B: sealed field empty", `{"device_id":"sensor-9","timestamp":1,"key_version":"v3","x":"ENC:AES256:"}`},
		{"B: key_version present but bad", `{"device_id":"sensor-9","timestamp":1,"key_version":"v 3"}`},
		{"B: trailing comma", `{"device_id":"sensor-9","timestamp":1,}`},
		{"B: trailing garbage", `{"device_id":"sensor-9","timestamp":1}x`},
		{"B: invalid UTF-8 in a plaintext member", "{\"device_id\":\"sensor-9\",\"timestamp\":1,\"x\":\"\xff\"}"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := k.keys.calls.Load()
			rec, err := k.open([]byte(c.msg), false)
			if Reason(err) != "malformed" {
				t.Fatalf("reason %q (%v), want malformed", Reason(err), err)
			}
			if !reflect.DeepEqual(rec, Record{}) {
				t.Fatal("record returned")
			}
			if k.keys.calls.Load() != before {
				t.Fatal("a malformed message reached the key lookup")
			}
		})
	}
}

func TestAccepted(t *testing.T) {
	k := newKit(t, Options{})
	cases := []struct {
		name, msg, data, meta string
	}{
		{"A: metadata kept less device_id and timestamp, numbers as sent",
			string(k.shapeA(t, k.env, `{"t":98.60,"big":12345678901234567890123,"e":1E+2}`)) + "",
			`{"t":98.60,"big":12345678901234567890123,"e":1E+2}`, `{}`},
		{"B: sealed device_id-looking value is literal; envelope members dropped",
			`{"device_id":"sensor-9","key_id":"device/sensor-9","timestamp":1700000000,"x":1.50,"key_version":"v3"}`,
			`{"x":1.50}`, ""},
		{"B: escaped names and values", `{"device_\u0069d":"sensor\u002d9","timestamp":1700000000,"na\u006de":"\u00e9"}`,
			`{"na\u006de":"\u00e9"}`, ""},
		{"B: ENC prefix on a name is not a sealed field", `{"device_id":"sensor-9","timestamp":1700000000,"ENC:AES256:x":1}`,
			`{"ENC:AES256:x":1}`, ""},
		{"B: ms timestamp", `{"device_id":"sensor-9","timestamp":1700000000123}`, `{}`, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec, err := k.open([]byte(c.msg), false)
			if err != nil {
				t.Fatal(err)
			}
			if string(rec.Data) != c.data {
				t.Errorf("data %s, want %s", rec.Data, c.data)
			}
			if c.meta == "" && rec.Metadata != nil || c.meta != "" && string(rec.Metadata) != c.meta {
				t.Errorf("metadata %s, want %q", rec.Metadata, c.meta)
			}
			if !json.Valid(rec.AppendJSON(nil)) {
				t.Errorf("record JSON invalid: %s", rec.AppendJSON(nil))
			}
		})
	}
	t.Run("A: metadata members passed through, escaped device_id name removed", func(t *testing.T) {
		msg, err := k.s.AppendShapeA(nil, k.keys.keys[keyRef{"device/sensor-9", "v3"}].aead, k.env, []byte(`{}`), []byte(`{"fw":"1.4.2","battery":0.830}`))
		if err != nil {
			t.Fatal(err)
		}
		msg = []byte(strings.Replace(string(msg), `"device_id"`, `"device\u005fid"`, 1))
		rec, err := k.open(msg, false)
		if err != nil {
			t.Fatal(err)
		}
		if string(rec.Metadata) != `{"fw":"1.4.2","battery":0.830}` {
			t.Errorf("metadata %s", rec.Metadata)
		}
		if rec.KeyID != "device/sensor-9" || rec.KeyVersion != "v3" || rec.DeviceID != "sensor-9" || rec.Timestamp != 1700000000 {
			t.Errorf("record %+v", rec)
		}
		if !rec.Time().Equal(time.Unix(1700000000, 0)) {
			t.Errorf("Time %v", rec.Time())
		}
	})
	t.Run("B: unencrypted record has no key", func(t *testing.T) {
		rec, err := k.open([]byte(`{"device_id":"sensor-9","timestamp":1700000000123,"key_version":"v3"}`), false)
		if err != nil {
			t.Fatal(err)
		}
		if rec.KeyID != "" || rec.KeyVersion != "" || len(rec.ID) != 64 {
			t.Errorf("record %+v", rec)
		}
		if !rec.Time().Equal(time.UnixMilli(1700000000123)) {
			t.Errorf("Time %v", rec.Time())
		}
		if strings.Contains(string(rec.AppendJSON(nil)), "key_") {
			t.Errorf("record names a key: %s", rec.AppendJSON(nil))
		}
	})
}

// TestReasonOrder: where several reasons apply, the first in the spec's
// table wins, and nothing that can be checked without a key waits for one.
func TestReasonOrder(t *testing.T) {
	k := newKit(t, Options{ClockSkew: time.Minute})
	aead := k.keys.keys[keyRef{"device/sensor-9", "v3"}].aead
	otherTopic := "iot-2/type/monitor/id/sensor-8/evt/telemetry/fmt/json"
	stale := k.env
	stale.Timestamp -= 3600
	unknown := k.env
	unknown.KeyVersion = "v99"
	revoked := k.env
	revoked.KeyVersion = "v2"
	sealedUnknown := k.shapeA(t, unknown, `{}`)
	field := func(ptr, value string) string {
		b, err := k.s.AppendField(nil, aead, k.env, ptr, []byte(value))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	head := `{"device_id":"sensor-9","timestamp":1700000000,"key_version":"v3"`
	cases := []struct {
		name, topic string
		msg         []byte
		reason      string
		lookups     int64
	}{
		{"malformed before topic mismatch", otherTopic, []byte(`{"device_id":"sensor-9","timestamp":1.5}`), "malformed", 0},
		{"topic mismatch before stale", otherTopic, k.shapeA(t, stale, `{}`), "topic_mismatch", 0},
		{"topic mismatch before unknown key", otherTopic, sealedUnknown, "topic_mismatch", 0},
		{"topic mismatch on an unencrypted message", otherTopic, []byte(`{"device_id":"sensor-9","timestamp":1700000000}`), "topic_mismatch", 0},
		{"stale before unknown key", testTopic, k.shapeA(t, func() seal.Envelope { e := unknown; e.Timestamp -= 3600; return e }(), `{}`), "stale", 0},
		{"stale in milliseconds", testTopic, k.shapeA(t, func() seal.Envelope { e := k.env; e.Timestamp = (e.Timestamp + 120) * 1000; return e }(), `{}`), "stale", 0},
		{"unknown key", testTopic, sealedUnknown, "unknown_key", 1},
		{"revoked key", testTopic, k.shapeA(t, revoked, `{}`), "key_revoked", 1},
		{"auth failed before bad plaintext",
			testTopic, []byte(head + `,"a":` + field("/a", `not json`) + `,"b":` + flipB64(t, field("/b", `1`), 14) + `}`), "auth_failed", 1},
		{"bad plaintext: shape B value not JSON", testTopic, []byte(head + `,"a":` + field("/a", `01`) + `}`), "bad_plaintext", 1},
		{"bad plaintext: shape B two values", testTopic, []byte(head + `,"a":` + field("/a", `1 2`) + `}`), "bad_plaintext", 1},
		{"bad plaintext: shape B repeated name", testTopic, []byte(head + `,"a":` + field("/a", `{"x":1,"x":1}`) + `}`), "bad_plaintext", 1},
		{"bad plaintext: shape B invalid UTF-8", testTopic, []byte(head + `,"a":` + field("/a", "\"\xff\"") + `}`), "bad_plaintext", 1},
		{"bad plaintext: shape B empty", testTopic, []byte(head + `,"a":` + field("/a", ``) + `}`), "bad_plaintext", 1},
	}
	// Shape A plaintexts that verify but are not a JSON object.
	for _, pt := range []string{`[1]`, `"x"`, `{"a":1,"a":2}`, `{"a":1}x`, "{\"a\":\"\xc3\"}", ``, `{"a":"\ud800"}`} {
		// AppendShapeA refuses non-objects; seal the bytes by hand.
		sealed, err := k.s.Seal(nil, aead, []byte(pt), seal.PayloadAAD(nil, "sensor-9", k.env.Timestamp))
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, struct {
			name, topic string
			msg         []byte
			reason      string
			lookups     int64
		}{"bad plaintext: shape A " + fmt.Sprintf("%q", pt), testTopic, shapeAMessage(b64(sealed), "device/sensor-9", "v3", "sensor-9", k.env.Timestamp), "bad_plaintext", 1})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := k.keys.calls.Load()
			rec, err := k.d.Open(context.Background(), Message{Topic: c.topic, Payload: c.msg, ReceivedAt: time.Unix(1700000000, 0)})
			if got := Reason(err); got != c.reason {
				t.Fatalf("reason %q (%v), want %q", got, err, c.reason)
			}
			if !reflect.DeepEqual(rec, Record{}) {
				t.Fatal("record returned with a failure")
			}
			if n := k.keys.calls.Load() - before; n != c.lookups {
				t.Fatalf("%d key lookups, want %d", n, c.lookups)
			}
		})
	}
}

func TestTransient(t *testing.T) {
	k := newKit(t, Options{})
	msg := k.shapeA(t, k.env, `{"a":1}`)
	k.keys.failWith(fmt.Errorf("kms: dial tcp: %w", dek.ErrUnavailable))
	_, err := k.open(msg, false)
	if !errors.Is(err, ErrTransient) || !errors.Is(err, dek.ErrUnavailable) || Reason(err) != "" {
		t.Fatalf("err %v (reason %q), want transient wrapping dek.ErrUnavailable and no reason", err, Reason(err))
	}
	k.keys.failWith(context.Canceled)
	if _, err := k.open(msg, false); !errors.Is(err, ErrTransient) {
		t.Fatalf("cancelled lookup: %v, want transient", err)
	}
	// A transient failure leaves no trace in the replay window: the retry
	// decrypts.
	k.keys.err.Store(nil)
	if _, err := k.open(msg, false); err != nil {
		t.Fatalf("retry: %v", err)
	}
}

func TestReplayAndDuplicate(t *testing.T) {
	k := newKit(t, Options{ReplayEntries: 3, ReplayMaxAge: time.Hour})
	m1 := k.shapeA(t, k.env, `{"n":1}`)
	m2 := k.shapeB(t, k.env, seal.Field{Name: "a", Value: []byte(`1`), Seal: true}, seal.Field{Name: "b", Value: []byte(`2`), Seal: true})

	stepOn := func(topic string, msg []byte, dup bool, want error) Record {
		t.Helper()
		rec, err := k.d.Open(context.Background(), Message{Topic: topic, Payload: msg, Redelivered: dup})
		if want == nil && err != nil || want != nil && !errors.Is(err, want) {
			t.Fatalf("Open(dup=%v) = %v, want %v", dup, err, want)
		}
		return rec
	}
	step := func(msg []byte, dup bool, want error) Record {
		t.Helper()
		return stepOn(testTopic, msg, dup, want)
	}
	// The same bytes on a topic the pattern does not match (no topic
	// check): not an exact repeat.
	const elsewhere = "lab/sensor-9"
	r1 := step(m1, false, nil)
	step(m1, true, ErrDuplicate)
	// Amendment 1: an exact repeat is a duplicate with or without DUP (a
	// device's QoS 1 resend reaches us as a new message)...
	step(m1, false, ErrDuplicate)
	// ...the same bytes on another topic are a replay.
	stepOn(elsewhere, m1, false, ErrReplay)
	stepOn(elsewhere, m1, true, ErrReplay)
	if Reason(fmt.Errorf("x: %w", ErrDuplicate)) != "" {
		t.Fatal("duplicate is a reason")
	}

	// A caller that could not deliver r1 forgets it: the broker's
	// redelivery decrypts again.
	k.d.Forget(r1)
	step(m1, true, nil)

	r2 := step(m2, false, nil)
	step(m2, true, ErrDuplicate)
	// One sealed field of m2 replayed inside another message is a replay.
	var parts map[string]json.RawMessage
	if err := json.Unmarshal(m2, &parts); err != nil {
		t.Fatal(err)
	}
	replayB := []byte(`{"device_id":"sensor-9","timestamp":1700000000,"key_version":"v3","b":` + string(parts["b"]) + `}`)
	step(replayB, false, ErrReplay)
	k.d.Forget(r2)
	step(replayB, false, nil)
	step(m2, false, ErrReplay) // b accepted again through replayB

	// Entry bound: at least the last 3 entries are held, and at most
	// windowGens generations of one entry each (3/16 rounded up): so many
	// more messages push out everything above.
	for i := range windowGens {
		step(k.shapeA(t, k.env, fmt.Sprintf(`{"fill":%d}`, i)), false, nil)
	}
	step(m1, false, nil)
	for i := range 2 {
		step(k.shapeA(t, k.env, fmt.Sprintf(`{"more":%d}`, i)), false, nil)
	}
	stepOn(elsewhere, m1, false, ErrReplay) // still among the last 3

	// Age bound.
	m3 := k.shapeA(t, k.env, `{"n":3}`)
	step(m3, false, nil)
	k.clk.Advance(59 * time.Minute)
	step(m3, false, ErrDuplicate)
	stepOn(elsewhere, m3, false, ErrReplay)
	k.clk.Advance(2 * time.Minute)
	step(m3, false, nil)
}

func TestReplayForgedDoesNotPoison(t *testing.T) {
	k := newKit(t, Options{})
	msg := k.shapeA(t, k.env, `{"n":1}`)
	var m struct {
		ED string `json:"encrypted_data"`
	}
	if err := json.Unmarshal(msg, &m); err != nil {
		t.Fatal(err)
	}
	// A forgery carrying the genuine nonce, sent first, fails the tag and
	// must not be remembered.
	forged := []byte(strings.Replace(string(msg), m.ED, flipB64(t, `"`+seal.Prefix+m.ED+`"`, 20)[len(seal.Prefix)+1:len(m.ED)+len(seal.Prefix)+1], 1))
	if _, err := k.open(forged, false); Reason(err) != "auth_failed" {
		t.Fatalf("forgery: %v", err)
	}
	if _, err := k.open(msg, false); err != nil {
		t.Fatalf("genuine after forgery: %v", err)
	}
	// A bad plaintext is not accepted either: its redelivery is bad_plaintext again.
	aead := k.keys.keys[keyRef{"device/sensor-9", "v3"}].aead
	sealed, err := k.s.Seal(nil, aead, []byte(`[]`), seal.PayloadAAD(nil, "sensor-9", k.env.Timestamp))
	if err != nil {
		t.Fatal(err)
	}
	bad := shapeAMessage(b64(sealed), "device/sensor-9", "v3", "sensor-9", k.env.Timestamp)
	for range 2 {
		if _, err := k.open(bad, false); Reason(err) != "bad_plaintext" {
			t.Fatalf("bad plaintext: %v", err)
		}
	}
}

func TestReplayDisabled(t *testing.T) {
	k := newKit(t, Options{ReplayDisabled: true})
	msg := k.shapeA(t, k.env, `{"n":1}`)
	for _, dup := range []bool{false, false, true} {
		rec, err := k.open(msg, dup)
		if err != nil {
			t.Fatal(err)
		}
		k.d.Forget(rec)
	}
}

func TestReplayNonceReusedWithinMessage(t *testing.T) {
	k := newKit(t, Options{})
	aead := k.keys.keys[keyRef{"device/sensor-9", "v3"}].aead
	// Two fields sealed with the same nonce: a device reusing nonces.
	fixed := seal.New(zeroReader{})
	a, err := fixed.AppendField(nil, aead, k.env, "/a", []byte(`1`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := fixed.AppendField(nil, aead, k.env, "/b", []byte(`2`))
	if err != nil {
		t.Fatal(err)
	}
	msg := `{"device_id":"sensor-9","timestamp":1700000000,"key_version":"v3","a":` + string(a) + `,"b":` + string(b) + `}`
	if _, err := k.open([]byte(msg), false); Reason(err) != "replay" {
		t.Fatalf("nonce reused within a message: %v, want replay", err)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestConcurrentOpen: under the race detector, many goroutines open
// distinct and repeated messages; each distinct message is accepted once,
// its repeats are duplicates.
func TestConcurrentOpen(t *testing.T) {
	k := newKit(t, Options{})
	msgs := make([][]byte, 32)
	for i := range msgs {
		if i%2 == 0 {
			msgs[i] = k.shapeA(t, k.env, fmt.Sprintf(`{"i":%d}`, i))
		} else {
			msgs[i] = k.shapeB(t, k.env, seal.Field{Name: "i", Value: fmt.Appendf(nil, "%d", i), Seal: true}, seal.Field{Name: "c", Value: []byte(`"clear"`)})
		}
	}
	var (
		mu       sync.Mutex
		accepted = map[string]int{}
		wg       sync.WaitGroup
	)
	for g := range 8 {
		wg.Go(func() {
			for i := range msgs {
				rec, err := k.open(msgs[(i+g)%len(msgs)], false)
				switch {
				case err == nil:
					if !json.Valid(rec.AppendJSON(nil)) {
						t.Error("invalid record JSON")
					}
					mu.Lock()
					accepted[rec.ID]++
					mu.Unlock()
				case !errors.Is(err, ErrDuplicate):
					t.Errorf("Open: %v", err)
				}
			}
		})
	}
	wg.Wait()
	if len(accepted) != len(msgs) {
		t.Fatalf("%d distinct records, want %d", len(accepted), len(msgs))
	}
	for id, n := range accepted {
		if n != 1 {
			t.Errorf("record %s accepted %d times", id, n)
		}
	}
}

func TestOptions(t *testing.T) {
	keys := newFakeKeys()
	if _, err := New(nil, Options{}); err == nil {
		t.Error("nil resolver accepted")
	}
	bad := []Options{
		{MaxMessageBytes: -1},
		{MaxMessageBytes: 1<<30 + 1},
		{ReplayEntries: -1},
		{ReplayEntries: 1<<28 + 1},
		{ReplayMaxAge: -time.Second},
		{ClockSkew: -time.Second},
		{TopicPattern: "iot-2/type/+/id/+/evt"},
		{TopicPattern: "a/{device_id}/{device_id}"},
		{TopicPattern: "#/{device_id}"},
		{TopicPattern: "a/dev{device_id}"},
		{TopicPattern: "a/b+/{device_id}"},
	}
	for _, o := range bad {
		if _, err := New(keys, o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
	d, err := New(keys, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d.opts.MaxMessageBytes != 256<<10 || d.opts.ReplayEntries != 1_000_000 || d.opts.ReplayMaxAge != 24*time.Hour ||
		d.opts.ClockSkew != 0 || d.opts.TopicPattern != "iot-2/type/+/id/{device_id}/evt/+/fmt/+" || d.win == nil {
		t.Errorf("defaults: %+v", d.opts)
	}
}

// The pattern itself is tested in package intake (TestTopicPattern there).
func TestTopicPattern(t *testing.T) {
	// A topic that carries no device id skips the check.
	k := newKit(t, Options{})
	if _, err := k.d.Open(context.Background(), Message{Topic: "plain/topic", Payload: []byte(`{"device_id":"sensor-9","timestamp":1}`)}); err != nil {
		t.Fatal(err)
	}
}

// The device id an input determined is what the payload's device_id is
// checked against; the topic pattern only stands in when there is none.
func TestDeviceIDFromInput(t *testing.T) {
	k := newKit(t, Options{})
	payload := []byte(`{"device_id":"sensor-9","timestamp":1}`)
	topic := "iot-2/type/monitor/id/sensor-9/evt/e/fmt/json"
	_, err := k.d.Open(context.Background(), Message{Topic: topic, DeviceID: "sensor-1", Payload: payload})
	if !errors.Is(err, ErrTopicMismatch) {
		t.Fatalf("input's device sensor-1, payload's sensor-9: %v, want ErrTopicMismatch", err)
	}
	_, err = k.d.Open(context.Background(), Message{Topic: "iot-2/type/monitor/id/sensor-1/evt/e/fmt/json", DeviceID: "sensor-9", Payload: payload})
	if errors.Is(err, ErrTopicMismatch) {
		t.Fatalf("input's device id matches the payload's, yet: %v", err)
	}
}

func TestReasons(t *testing.T) {
	want := []string{"malformed", "topic_mismatch", "stale", "unknown_key", "key_revoked", "auth_failed", "bad_plaintext", "replay"}
	got := Reasons()
	if !slices.Equal(got, want) {
		t.Fatalf("Reasons() = %v", got)
	}
	got[0] = "changed"
	if Reasons()[0] != "malformed" {
		t.Fatal("Reasons shares its slice")
	}
	sentinels := []error{ErrMalformed, ErrTopicMismatch, ErrStale, ErrUnknownKey, ErrKeyRevoked, ErrAuthFailed, ErrBadPlaintext, ErrReplay}
	for i, e := range sentinels {
		if r := Reason(fmt.Errorf("ctx: %w", e)); r != want[i] {
			t.Errorf("Reason(%v) = %q", e, r)
		}
	}
	for _, e := range []error{nil, ErrDuplicate, ErrTransient, errors.New("other")} {
		if r := Reason(e); r != "" {
			t.Errorf("Reason(%v) = %q, want empty", e, r)
		}
	}
}

func TestAppendJSON(t *testing.T) {
	r := Record{
		ID: strings.Repeat("ab", 32), DeviceID: "d-1", Timestamp: 1634567890, KeyID: "group/g", KeyVersion: "v1",
		Topic: "t/\"q\"\\/\x01/\xff/é", ReceivedAt: time.Date(2026, 11, 25, 21, 16, 1, 123456789, time.FixedZone("x", 3600)),
		Metadata: []byte(`{"fw":"1"}`), Data: []byte(`{"t":98.60}`),
	}
	want := `{"id":"` + strings.Repeat("ab", 32) + `","device_id":"d-1","timestamp":1634567890,"key_id":"group/g","key_version":"v1",` +
		`"topic":"t/\"q\"\\/\u0001/\ufffd/é","received_at":"2026-11-25T20:16:01.123456789Z","metadata":{"fw":"1"},"data":{"t":98.60}}`
	if got := string(r.AppendJSON([]byte("x"))); got != "x"+want {
		t.Fatalf("AppendJSON\n got %s\nwant %s", got[1:], want)
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
