package kafkainput

import (
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/decryptd/decryptd/internal/intake"
)

func TestMapperHeader(t *testing.T) {
	m := newMapper(TopicFromHeader, "mqtt_topic", "")
	h := func(kv ...string) []kgo.RecordHeader {
		var out []kgo.RecordHeader
		for i := 0; i < len(kv); i += 2 {
			out = append(out, kgo.RecordHeader{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return out
	}
	cases := []struct {
		name    string
		headers []kgo.RecordHeader
		want    string
		ok      bool
	}{
		{"present", h("mqtt_topic", "iot-2/type/m/id/d1/evt/e/fmt/json"), "iot-2/type/m/id/d1/evt/e/fmt/json", true},
		{"among others", h("a", "b", "mqtt_topic", "t/1", "c", "d"), "t/1", true},
		{"last wins", h("mqtt_topic", "t/1", "mqtt_topic", "t/2"), "t/2", true},
		{"absent", h("topic", "t/1"), "", false},
		{"empty", h("mqtt_topic", ""), "", false},
		{"wildcard", h("mqtt_topic", "t/+"), "", false},
		{"NUL", h("mqtt_topic", "t/\x00"), "", false},
	}
	for _, c := range cases {
		got, ok := m.topic(&kgo.Record{Headers: c.headers, Key: []byte("d1")})
		if got != c.want || ok != c.ok {
			t.Errorf("%s: %q, %v; want %q, %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

func TestMapperKey(t *testing.T) {
	m := newMapper(TopicFromKey, "mqtt_topic", "iot-2/type/monitor/id/{key}/evt/telemetry/fmt/json")
	for _, c := range []struct {
		key, want string
		ok        bool
	}{
		{"sensor-001", "iot-2/type/monitor/id/sensor-001/evt/telemetry/fmt/json", true},
		{"", "", false},
		{"a/b", "", false},
		{"a+", "", false},
	} {
		got, ok := m.topic(&kgo.Record{Key: []byte(c.key), Headers: []kgo.RecordHeader{{Key: "mqtt_topic", Value: []byte("x")}}})
		if got != c.want || ok != c.ok {
			t.Errorf("key %q: %q, %v; want %q, %v", c.key, got, ok, c.want, c.ok)
		}
	}
}

func TestMapperWholeKey(t *testing.T) {
	m := newMapper(TopicFromKey, "", "{key}")
	for _, c := range []struct {
		key, want string
		ok        bool
	}{
		{"iot-2/type/m/id/d1/evt/e/fmt/json", "iot-2/type/m/id/d1/evt/e/fmt/json", true},
		{"a/#", "", false},
		{"", "", false},
	} {
		got, ok := m.topic(&kgo.Record{Key: []byte(c.key)})
		if got != c.want || ok != c.ok {
			t.Errorf("key %q: %q, %v; want %q, %v", c.key, got, ok, c.want, c.ok)
		}
	}
}

func TestMeta(t *testing.T) {
	for _, n := range []int64{0, 1, 12345, 1<<63 - 1} {
		got, ok := parseMeta(formatMeta(n))
		if !ok || got != n {
			t.Errorf("round trip %d: %d, %v", n, got, ok)
		}
	}
	for _, s := range []string{"", "decryptd/1 received=", "decryptd/1 received=-1", "decryptd/1 received=1x", "other", "decryptd/1 received=99999999999999999999", "decryptd/2 received=5"} {
		if n, ok := parseMeta(s); ok {
			t.Errorf("parseMeta(%q) = %d, ok", s, n)
		}
	}
}

func FuzzParseMeta(f *testing.F) {
	f.Add(formatMeta(42))
	f.Add("decryptd/1 received=")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		n, ok := parseMeta(s)
		if !ok {
			return
		}
		if n < 0 || !strings.HasPrefix(s, metaPrefix) {
			t.Fatalf("parseMeta(%q) = %d", s, n)
		}
		if formatMeta(n) != s {
			t.Fatalf("parseMeta(%q) = %d, which formats as %q", s, n, formatMeta(n))
		}
	})
}

// polledMessage (the poll goroutine's, with its map of topics found) gives
// what message gives, for header and key mapping, for records that map and
// records that do not, the second time as the first; its payload is a
// copy.
func TestPolledMessageAsMessage(t *testing.T) {
	hdr := func(v string) []kgo.RecordHeader { return []kgo.RecordHeader{{Key: "mqtt_topic", Value: []byte(v)}} }
	recs := []*kgo.Record{
		{Headers: hdr("dev/d1"), Key: []byte("d1"), Value: []byte("p1")},
		{Headers: hdr("dev/d2"), Key: []byte("d2"), Value: []byte("p2")},
		{Headers: hdr("other/d3"), Key: []byte("d3"), Value: []byte("p3")},
		{Headers: hdr("dev/+"), Key: []byte("a/b"), Value: []byte("p4")},
		{Headers: hdr(""), Key: nil, Value: []byte("p5")},
		{Key: []byte("d6"), Value: []byte("p6")},
	}
	for i, r := range recs {
		r.Topic, r.Partition, r.Offset = "t", int32(i%3), int64(100+i)
	}
	for _, from := range []string{TopicFromHeader, TopicFromKey} {
		in, err := New(Options{
			ClientOptions: []kgo.Opt{kgo.SeedBrokers("127.0.0.1:1")}, Topics: []string{"t"}, Group: "g",
			TopicFrom: from, TopicTemplate: "dev/{key}", TopicPattern: "dev/{device_id}",
		}, &nopProc{})
		if err != nil {
			t.Fatal(err)
		}
		now := time.Unix(1, 0)
		for round := range 2 {
			for i, r := range recs {
				want, got := in.message(r, now), in.polledMessage(r, now)
				if got.Topic != want.Topic || got.DeviceID != want.DeviceID || string(got.Payload) != string(want.Payload) || got.Source != want.Source || !got.ReceivedAt.Equal(want.ReceivedAt) {
					t.Errorf("%s, round %d, record %d: polledMessage %+v, message %+v", from, round, i, got, want)
				}
				if pos := (intake.LogPosition{Topic: "t", Partition: int32(i % 3), Offset: int64(100 + i)}); got.Position != pos || want.Position != pos {
					t.Errorf("%s, record %d: positions %+v (polled) and %+v, want %+v (mapped or not)", from, i, got.Position, want.Position, pos)
				}
				if &got.Payload[0] == &r.Value[0] {
					t.Errorf("%s, record %d: the payload aliases the fetched value (it would keep its batch alive)", from, i)
				}
			}
		}
	}
}

// A record's position costs nothing per record: the message shares the
// record's topic string, and a device seen before is mapped without an
// allocation.
func TestMessagePositionAllocatesNothing(t *testing.T) {
	in, err := New(Options{
		ClientOptions: []kgo.Opt{kgo.SeedBrokers("127.0.0.1:1")}, Topics: []string{"t"}, Group: "g",
		TopicPattern: "dev/{device_id}",
	}, &nopProc{})
	if err != nil {
		t.Fatal(err)
	}
	r := &kgo.Record{Topic: strings.Clone("device-events"), Partition: 7, Offset: 1 << 40, Value: []byte("v"),
		Headers: []kgo.RecordHeader{{Key: "mqtt_topic", Value: []byte("dev/d1")}}}
	now := time.Unix(1, 0)
	m := in.mappedMessage(r, now) // the first sight of dev/d1 fills the map
	if m.Position != (intake.LogPosition{Topic: "device-events", Partition: 7, Offset: 1 << 40}) {
		t.Fatalf("position %+v", m.Position)
	}
	if unsafe.StringData(m.Position.Topic) != unsafe.StringData(r.Topic) {
		t.Fatal("the position copies the record's topic string")
	}
	if n := testing.AllocsPerRun(100, func() { m = in.mappedMessage(r, now) }); n != 0 {
		t.Fatalf("mappedMessage allocates %v times per record of a known device", n)
	}
}
