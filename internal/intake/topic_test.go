package intake

import "testing"

const watson = "iot-2/type/+/id/{device_id}/evt/+/fmt/+"

func TestTopicPattern(t *testing.T) {
	cases := []struct {
		pattern, topic, id string
		ok                 bool
	}{
		{watson, "iot-2/type/monitor/id/sensor-001/evt/telemetry/fmt/json", "sensor-001", true},
		{watson, "iot-2/type/monitor/id/gw:ward-7.bed_12/evt/e/fmt/f", "gw:ward-7.bed_12", true},
		{watson, "iot-2/type/monitor/id//evt/e/fmt/f", "", true},
		{watson, "iot-2/type/monitor/id/x/evt/e/fmt", "", false},
		{watson, "iot-2/type/monitor/id/x/evt/e/fmt/f/extra", "", false},
		{watson, "iot-2/evt/e/fmt/f", "", false},
		{watson, "telemetry/sensor-001", "", false},
		{watson, "", "", false},
		{"devices/{device_id}/#", "devices/d1", "d1", true},
		{"devices/{device_id}/#", "devices/d1/a/b", "d1", true},
		{"devices/{device_id}/#", "other/d1", "", false},
		{"{device_id}", "d1", "d1", true},
		{"{device_id}", "d1/x", "", false},
	}
	for _, c := range cases {
		tp, err := ParseTopicPattern(c.pattern)
		if err != nil {
			t.Fatal(err)
		}
		id, ok := tp.DeviceID(c.topic)
		if ok != c.ok || id != c.id {
			t.Errorf("%q on %q = %q, %v; want %q, %v", c.pattern, c.topic, id, ok, c.id, c.ok)
		}
	}
	if id, ok := (TopicPattern{}).DeviceID("a/b"); ok || id != "" {
		t.Errorf("zero pattern matched: %q", id)
	}
}

func TestParseTopicPatternErrors(t *testing.T) {
	for _, p := range []string{"", "a/b", "{device_id}/{device_id}", "#/{device_id}", "a+/{device_id}", "x{device_id}"} {
		if _, err := ParseTopicPattern(p); err == nil {
			t.Errorf("ParseTopicPattern(%q): no error", p)
		}
	}
}

func FuzzTopicPattern(f *testing.F) {
	f.Add(watson, "iot-2/type/monitor/id/sensor-001/evt/telemetry/fmt/json")
	f.Add("devices/{device_id}/#", "devices/d1/a")
	f.Fuzz(func(t *testing.T, pattern, topic string) {
		tp, err := ParseTopicPattern(pattern)
		if err != nil {
			return
		}
		id, ok := tp.DeviceID(topic)
		if !ok && id != "" {
			t.Fatalf("no match but id %q", id)
		}
		if ok && len(id) > len(topic) {
			t.Fatalf("id %q longer than topic %q", id, topic)
		}
	})
}

func TestDeviceIDDoesNotAllocate(t *testing.T) {
	tp, err := ParseTopicPattern(watson)
	if err != nil {
		t.Fatal(err)
	}
	topic := "iot-2/type/monitor/id/sensor-001/evt/telemetry/fmt/json"
	if n := testing.AllocsPerRun(100, func() { _, _ = tp.DeviceID(topic) }); n != 0 {
		t.Errorf("DeviceID allocates %v times", n)
	}
}
