// Package mqttcheck checks the MQTT names a configuration holds (broker
// URLs, topic filters, topics to publish to) and says what is wrong in
// words a configuration error can quote. It is a leaf (no client library),
// shared by the configuration's mqtt section and the MQTT sink type, so
// both refuse the same things with the same words.
package mqttcheck

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// maxQuoted bounds how much of a value a problem quotes.
const maxQuoted = 64

func clip(s string) string {
	if len(s) > maxQuoted {
		return s[:maxQuoted] + "..."
	}
	return s
}

// BrokerURL checks an MQTT broker URL (scheme://host:port, ssl, tls or
// mqtts for TLS, tcp or mqtt for plain TCP, no credentials, no path); it
// returns whether it uses TLS, and the problem ("" when none).
func BrokerURL(s string) (tls bool, problem string) {
	u, err := url.Parse(s)
	if err != nil {
		return false, "not a URL"
	}
	switch u.Scheme {
	case "ssl", "tls", "mqtts":
		tls = true
	case "tcp", "mqtt":
	default:
		return false, fmt.Sprintf("scheme %q: want ssl:// (or tls://, mqtts://) or tcp://", clip(u.Scheme))
	}
	if u.User != nil {
		return tls, "must not carry credentials (the file holds no secrets)"
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return tls, "want scheme://host:port"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return tls, fmt.Sprintf("port %q: want 1-65535", clip(port))
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return tls, "want scheme://host:port with no path or query"
	}
	return tls, ""
}

// TopicFilter checks an MQTT topic filter (wildcards allowed as whole
// levels, '#' last); it returns the problem or "".
func TopicFilter(s string) string {
	if s == "" {
		return "empty"
	}
	if len(s) > 65535 {
		return "longer than 65535 bytes"
	}
	if strings.ContainsRune(s, 0) {
		return "contains NUL"
	}
	levels := strings.Split(s, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return "'#' must be a whole level and the last"
		}
		if strings.Contains(l, "+") && l != "+" {
			return "'+' must be a whole level"
		}
	}
	return ""
}

// TopicName checks a topic to publish to (no wildcards); it returns the
// problem or "".
func TopicName(s string) string {
	if p := TopicFilter(s); p != "" {
		return p
	}
	if strings.ContainsAny(s, "+#") {
		return "wildcards not allowed in a topic to publish to"
	}
	return ""
}
