package mqttcheck

import (
	"strings"
	"testing"
)

func TestBrokerURL(t *testing.T) {
	for _, c := range []struct {
		url     string
		tls     bool
		problem string
	}{
		{"ssl://h:8883", true, ""},
		{"mqtts://h:8883", true, ""},
		{"tcp://h:1883", false, ""},
		{"ws://h:80", false, "scheme"},
		{"ssl://u:p@h:8883", true, "credentials"},
		{"ssl://h", true, "host:port"},
		{"ssl://h:0", true, "port"},
		{"ssl://h:8883/x", true, "no path"},
	} {
		tls, p := BrokerURL(c.url)
		if tls != c.tls || (c.problem == "") != (p == "") || !strings.Contains(p, c.problem) {
			t.Errorf("%s: tls %v, problem %q; want %v, %q", c.url, tls, p, c.tls, c.problem)
		}
	}
}

func TestTopics(t *testing.T) {
	for _, c := range []struct{ topic, filter, name string }{
		{"a/b", "", ""},
		{"a/+/b", "", "wildcards"},
		{"a/#", "", "wildcards"},
		{"a/#/b", "'#'", "'#'"},
		{"a/b+", "'+'", "'+'"},
		{"", "empty", "empty"},
		{"a\x00", "NUL", "NUL"},
	} {
		if p := TopicFilter(c.topic); (c.filter == "") != (p == "") || !strings.Contains(p, c.filter) {
			t.Errorf("TopicFilter(%q) = %q, want %q", c.topic, p, c.filter)
		}
		if p := TopicName(c.topic); (c.name == "") != (p == "") || !strings.Contains(p, c.name) {
			t.Errorf("TopicName(%q) = %q, want %q", c.topic, p, c.name)
		}
	}
}
