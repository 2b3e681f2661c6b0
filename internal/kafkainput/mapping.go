package kafkainput

import (
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TopicFrom values: where a record's MQTT topic comes from.
const (
	// TopicFromHeader: the value of the header Options.TopicHeader.
	TopicFromHeader = "header"
	// TopicFromKey: Options.TopicTemplate with {key} replaced by the
	// record key.
	TopicFromKey = "key"
)

// KeyPlaceholder is what TopicTemplate's {key} is replaced with.
const KeyPlaceholder = "{key}"

// mapper finds a record's MQTT topic.
type mapper struct {
	fromKey        bool
	header         string
	prefix, suffix string // TopicTemplate around {key}
}

func newMapper(from, header, template string) mapper {
	if from != TopicFromKey {
		return mapper{header: header}
	}
	pre, suf, _ := strings.Cut(template, KeyPlaceholder)
	return mapper{fromKey: true, prefix: pre, suffix: suf}
}

// raw returns what r's MQTT topic is made from (the last header of that
// name, or the key), and has=false when r has no such header: the same
// raw value always gives the same topic.
func (m mapper) raw(r *kgo.Record) (raw []byte, has bool) {
	if m.fromKey {
		return r.Key, true
	}
	for i := len(r.Headers) - 1; i >= 0; i-- {
		if r.Headers[i].Key == m.header {
			return r.Headers[i].Value, true
		}
	}
	return nil, false
}

// topic returns r's MQTT topic, or ok=false when r carries none (no such
// header, an empty one, or an empty key), or one that could not be an
// MQTT topic name (wildcards, NUL; a key holding '/' where it fills one
// level of a template).
func (m mapper) topic(r *kgo.Record) (string, bool) {
	var t string
	if m.fromKey {
		k := r.Key
		// A key fills one level, unless it is the whole topic (template
		// "{key}": Confluent's MQTT source and HiveMQ key records by
		// their MQTT topic).
		bad := "/+#\x00"
		if m.prefix == "" && m.suffix == "" {
			bad = "+#\x00"
		}
		if len(k) == 0 || strings.ContainsAny(string(k), bad) {
			return "", false
		}
		t = m.prefix + string(k) + m.suffix
	} else {
		// The last header of that name wins, as for an HTTP header a
		// bridge may have appended to.
		found := false
		for i := len(r.Headers) - 1; i >= 0; i-- {
			if r.Headers[i].Key == m.header {
				t, found = string(r.Headers[i].Value), true
				break
			}
		}
		if !found || t == "" || strings.ContainsAny(t, "+#\x00") {
			return "", false
		}
	}
	if len(t) > 65535 {
		return "", false
	}
	return t, true
}

// Commit metadata: every commit of this input records, beside the offset,
// how far the committing replica had received the partition
// ("decryptd/1 received=<offset>"), so that the next holder marks the
// records between the two Redelivered: the previous holder may have
// handed them to the Processor already.
const metaPrefix = "decryptd/1 received="

func formatMeta(received int64) string {
	return metaPrefix + strconv.FormatInt(received, 10)
}

// parseMeta reads what formatMeta wrote; ok=false for anything else
// (another consumer's metadata, none).
func parseMeta(s string) (received int64, ok bool) {
	rest, found := strings.CutPrefix(s, metaPrefix)
	if !found || rest == "" || len(rest) > 19 || (rest[0] == '0' && len(rest) > 1) {
		return 0, false
	}
	for i := 0; i < len(rest); i++ {
		if rest[i] < '0' || rest[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(rest, 10, 64)
	if err != nil {
		return 0, false
	}
	return n, true
}
