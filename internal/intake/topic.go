package intake

import (
	"fmt"
	"strings"
)

// DeviceIDLevel is the level of a topic pattern that stands for the device
// id.
const DeviceIDLevel = "{device_id}"

// TopicPattern says where a topic carries the device id: MQTT-style levels
// separated by '/', where a level is a literal, '+' (any one level), '#'
// (any remaining levels, last only) or "{device_id}" (any one level, the
// device id; exactly once). The zero TopicPattern matches no topic.
type TopicPattern struct {
	levels []string // "+", "#", DeviceIDLevel or a literal
}

// ParseTopicPattern parses p; the error names what is wrong.
func ParseTopicPattern(p string) (TopicPattern, error) {
	levels := strings.Split(p, "/")
	found := 0
	for i, l := range levels {
		switch {
		case l == DeviceIDLevel:
			found++
		case l == "+":
		case l == "#":
			if i != len(levels)-1 {
				return TopicPattern{}, fmt.Errorf("TopicPattern %q: '#' must be the last level", p)
			}
		case strings.ContainsAny(l, "+#{}"):
			return TopicPattern{}, fmt.Errorf("TopicPattern %q: level %q mixes a wildcard or brace with text", p, l)
		}
	}
	if found != 1 {
		return TopicPattern{}, fmt.Errorf("TopicPattern %q: must contain %s exactly once", p, DeviceIDLevel)
	}
	return TopicPattern{levels: levels}, nil
}

// DeviceID returns the device id the topic carries, or ok=false when the
// pattern does not match it. It does not allocate; a literal level is one
// comparison, a wildcard one search for '/'.
func (tp TopicPattern) DeviceID(topic string) (id string, ok bool) {
	if tp.levels == nil {
		return "", false
	}
	rest := topic
	done := false // every level of the topic consumed
	for _, l := range tp.levels {
		if l == "#" {
			return id, true
		}
		if done {
			return "", false
		}
		var level string
		switch l {
		case "+", DeviceIDLevel:
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				level, rest = rest[:i], rest[i+1:]
			} else {
				level, rest, done = rest, "", true
			}
			if l != "+" {
				id = level
			}
		default:
			switch {
			case len(rest) > len(l) && rest[len(l)] == '/' && rest[:len(l)] == l:
				rest = rest[len(l)+1:]
			case rest == l:
				rest, done = "", true
			default:
				return "", false
			}
		}
	}
	if !done {
		return "", false
	}
	return id, true
}
