package config

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// FieldError is one problem, naming the key at fault by its YAML path
// ("sinks[1].path").
type FieldError struct {
	Field   string
	Problem string
}

func (e FieldError) Error() string { return e.Field + ": " + e.Problem }

// ValidationError lists every problem Validate found, in file order.
type ValidationError struct {
	Problems []FieldError
}

func (e *ValidationError) Error() string {
	msgs := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		msgs[i] = p.Error()
	}
	return "invalid configuration: " + strings.Join(msgs, "; ")
}

// Without returns the error less the problems of the named fields, or nil
// when none is left (dekctl root create needs no root key id yet).
func (e *ValidationError) Without(fields ...string) error {
	var left []FieldError
	for _, p := range e.Problems {
		skip := false
		for _, f := range fields {
			if p.Field == f {
				skip = true
			}
		}
		if !skip {
			left = append(left, p)
		}
	}
	if len(left) == 0 {
		return nil
	}
	return &ValidationError{Problems: left}
}

type checker struct{ probs []FieldError }

func (c *checker) add(field, format string, args ...any) {
	c.probs = append(c.probs, FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
}

// Validate checks the whole configuration and returns a *ValidationError
// naming every field at fault, or nil. It does not open the files named or
// reach the network.
func (c *Config) Validate() error {
	var ck checker
	c.validateMQTT(&ck)
	c.validateKMS(&ck)
	c.validateRegistry(&ck)
	c.validateCache(&ck)
	c.validateDecrypt(&ck)
	c.validateSinks(&ck)
	c.validateDeadLetter(&ck)
	c.validateRotation(&ck)
	if err := checkListen(c.Metrics.Listen); err != "" {
		ck.add("metrics.listen", "%s", err)
	}
	if c.Audit.Path == "" {
		ck.add("audit.path", "required")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		ck.add("log.level", "must be debug, info, warn or error, got %q", clip(c.Log.Level))
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		ck.add("log.format", "must be json or console, got %q", clip(c.Log.Format))
	}
	positive(&ck, "shutdown_timeout", c.ShutdownTimeout)
	if c.Batch.MaxRecords < 1 {
		ck.add("batch.max_records", "must be at least 1, got %d", c.Batch.MaxRecords)
	}
	if c.Batch.Linger < 0 || c.Batch.Linger > time.Second {
		ck.add("batch.linger", "must be between 0s and 1s, got %s", c.Batch.Linger)
	}
	if len(ck.probs) == 0 {
		return nil
	}
	return &ValidationError{Problems: ck.probs}
}

func positive(ck *checker, field string, d time.Duration) {
	if d <= 0 {
		ck.add(field, "must be positive, got %s", d)
	}
}

func nonNegative(ck *checker, field string, d time.Duration) {
	if d < 0 {
		ck.add(field, "must not be negative, got %s", d)
	}
}

// brokerURL checks an MQTT broker URL; it returns whether it uses TLS, or a
// problem.
func brokerURL(s string) (tls bool, problem string) {
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

// topicFilter checks an MQTT topic filter.
func topicFilter(s string) string {
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

// topicName checks a topic to publish to (no wildcards).
func topicName(s string) string {
	if p := topicFilter(s); p != "" {
		return p
	}
	if strings.ContainsAny(s, "+#") {
		return "wildcards not allowed in a topic to publish to"
	}
	return ""
}

func checkTLS(ck *checker, field string, t TLS) {
	if (t.CertFile == "") != (t.KeyFile == "") {
		if t.CertFile == "" {
			ck.add(field+".cert_file", "required when key_file is set")
		} else {
			ck.add(field+".key_file", "required when cert_file is set")
		}
	}
}

func (c *Config) validateMQTT(ck *checker) {
	m := c.MQTT
	if len(m.Brokers) == 0 {
		ck.add("mqtt.brokers", "at least one broker required")
	}
	for i, b := range m.Brokers {
		f := fmt.Sprintf("mqtt.brokers[%d]", i)
		tls, p := brokerURL(b)
		switch {
		case p != "":
			ck.add(f, "%s", p)
		case !tls && !m.AllowPlaintext:
			ck.add(f, "tcp:// sends readings in the clear; use ssl:// or set mqtt.allow_plaintext: true")
		}
	}
	if m.ClientID == "" || len(m.ClientID) > 256 {
		ck.add("mqtt.client_id", "want 1-256 characters")
	} else if strings.ContainsAny(m.ClientID, "/+#\x00") {
		ck.add("mqtt.client_id", "must not contain / + # or NUL")
	}
	if len(m.Topics) == 0 {
		ck.add("mqtt.topics", "at least one topic filter required")
	}
	for i, t := range m.Topics {
		f := fmt.Sprintf("mqtt.topics[%d]", i)
		if p := topicFilter(t); p != "" {
			ck.add(f, "%s", p)
		} else if strings.HasPrefix(t, "$share/") {
			ck.add(f, "write the plain filter and set mqtt.shared_group instead of $share/")
		}
	}
	if g := m.SharedGroup; g != "" && (strings.ContainsAny(g, "/+#\x00") || len(g) > 128) {
		ck.add("mqtt.shared_group", "must not contain / + # or NUL (1-128 characters)")
	}
	checkTLS(ck, "mqtt.tls", m.TLS)
	if m.MaxInFlight < 1 || m.MaxInFlight > 65535 {
		ck.add("mqtt.max_in_flight", "want 1-65535, got %d", m.MaxInFlight)
	}
	if m.Workers < 1 || m.Workers > 1024 {
		ck.add("mqtt.workers", "want 1-1024, got %d", m.Workers)
	}
	positive(ck, "mqtt.keep_alive", m.KeepAlive)
	positive(ck, "mqtt.connect_timeout", m.ConnectTimeout)
}

func httpURL(s string, loopbackPlain bool) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "want an absolute http(s) URL"
	}
	if u.User != nil {
		return "must not carry credentials (the file holds no secrets)"
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !loopbackPlain || !isLoopback(u.Hostname()) {
			return "must be https (http only to a loopback host)"
		}
	default:
		return "must be https"
	}
	return ""
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c *Config) validateKMS(ck *checker) {
	k := c.KMS
	switch k.Provider {
	case ProviderLocal:
		if k.Local.RootKeyFile == "" {
			ck.add("kms.local.root_key_file", "required for provider local")
		}
		if k.KeyProtect != (KeyProtect{Timeout: k.KeyProtect.Timeout}) {
			ck.add("kms.keyprotect", "set, but kms.provider is local")
		}
	case ProviderKeyProtect:
		kp := k.KeyProtect
		if kp.BaseURL == "" {
			ck.add("kms.keyprotect.base_url", "required for provider keyprotect")
		} else if p := httpURL(kp.BaseURL, true); p != "" {
			ck.add("kms.keyprotect.base_url", "%s", p)
		}
		if kp.TokenURL != "" {
			if p := httpURL(kp.TokenURL, true); p != "" {
				ck.add("kms.keyprotect.token_url", "%s", p)
			}
		}
		if kp.InstanceID == "" {
			ck.add("kms.keyprotect.instance_id", "required for provider keyprotect")
		}
		if kp.RootKeyID == "" {
			ck.add("kms.keyprotect.root_key_id", "required for provider keyprotect (dekctl root create makes one)")
		}
		switch {
		case kp.APIKeyFile == "" && kp.APIKeyEnv == "":
			ck.add("kms.keyprotect.api_key_file", "set api_key_file or api_key_env (the key itself never goes in this file)")
		case kp.APIKeyFile != "" && kp.APIKeyEnv != "":
			ck.add("kms.keyprotect.api_key_env", "set api_key_file or api_key_env, not both")
		}
		positive(ck, "kms.keyprotect.timeout", kp.Timeout)
		if k.Local != (LocalKMS{}) {
			ck.add("kms.local", "set, but kms.provider is keyprotect")
		}
	case "":
		ck.add("kms.provider", "required (local or keyprotect)")
	default:
		ck.add("kms.provider", "must be local or keyprotect, got %q", clip(k.Provider))
	}
}

func (c *Config) validateRegistry(ck *checker) {
	r := c.Registry
	switch r.Driver {
	case DriverFile:
		if r.Path == "" {
			ck.add("registry.path", "required for driver file")
		}
		if !r.DSN.IsZero() {
			ck.add("registry.dsn", "not used by driver file")
		}
	case DriverPostgres:
		if r.DSN.IsZero() {
			ck.add("registry.dsn", "required for driver postgres")
		}
		if r.Path != "" {
			ck.add("registry.path", "not used by driver postgres")
		}
	case "":
		ck.add("registry.driver", "required (file or postgres)")
	default:
		ck.add("registry.driver", "must be file or postgres, got %q", clip(r.Driver))
	}
}

func (c *Config) validateCache(ck *checker) {
	k := c.Cache
	positive(ck, "cache.ttl", k.TTL)
	positive(ck, "cache.refresh_ahead", k.RefreshAhead)
	nonNegative(ck, "cache.stale_limit", k.StaleLimit)
	positive(ck, "cache.negative_ttl", k.NegativeTTL)
	// The cache spreads lifetimes by ±10%; a refresh window as long as the
	// shortest lifetime would refresh on every hit.
	if k.TTL > 0 && k.RefreshAhead >= k.TTL*9/10 {
		ck.add("cache.refresh_ahead", "must be shorter than 90%% of cache.ttl (%s), got %s", k.TTL, k.RefreshAhead)
	}
	if k.MaxEntries < 1 {
		ck.add("cache.max_entries", "must be positive, got %d", k.MaxEntries)
	}
	if k.MaxConcurrentUnwraps < 1 || k.MaxConcurrentUnwraps > 1024 {
		ck.add("cache.max_concurrent_unwraps", "want 1-1024, got %d", k.MaxConcurrentUnwraps)
	}
}

// CheckTopicPattern checks a decrypt.topic_pattern: MQTT filter levels,
// exactly one of which is {device_id}.
func CheckTopicPattern(p string) string {
	levels := strings.Split(p, "/")
	n := 0
	for i, l := range levels {
		switch {
		case l == "{device_id}":
			n++
		case l == "#":
			if i != len(levels)-1 {
				return "'#' must be the last level"
			}
		case l == "+":
		case strings.ContainsAny(l, "+#{}\x00"):
			return fmt.Sprintf("level %q: wildcards and braces must be whole levels", clip(l))
		}
	}
	if n != 1 {
		return "want exactly one level {device_id}"
	}
	return ""
}

func (c *Config) validateDecrypt(ck *checker) {
	d := c.Decrypt
	if d.MaxMessageBytes < 64 || d.MaxMessageBytes > 268435455 {
		ck.add("decrypt.max_message_bytes", "want 64-268435455 (the MQTT limit), got %d", d.MaxMessageBytes)
	}
	if p := CheckTopicPattern(d.TopicPattern); p != "" {
		ck.add("decrypt.topic_pattern", "%s", p)
	}
	if d.ReplayWindowEntries < 1 {
		ck.add("decrypt.replay_window_entries", "must be positive, got %d", d.ReplayWindowEntries)
	}
	positive(ck, "decrypt.replay_window_age", d.ReplayWindowAge)
	nonNegative(ck, "decrypt.clock_skew", d.ClockSkew)
}

func validName(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '_' || ch == '-') {
			return false
		}
	}
	return true
}

func (c *Config) validateSinks(ck *checker) {
	if len(c.Sinks) == 0 {
		ck.add("sinks", "at least one sink required")
	}
	seen := map[string]int{}
	for i, s := range c.Sinks {
		f := fmt.Sprintf("sinks[%d]", i)
		if !validName(s.Name) {
			ck.add(f+".name", "want 1-32 of a-z 0-9 _ -, got %q", clip(s.Name))
		} else if j, dup := seen[s.Name]; dup {
			ck.add(f+".name", "%q already names sinks[%d]", s.Name, j)
		} else {
			seen[s.Name] = i
		}
		// used lists the fields set, so a field of another type is refused
		// rather than silently ignored.
		used := map[string]bool{
			"path": s.Path != "", "max_bytes": s.MaxBytes != 0, "keep": s.Keep != 0, "fsync": s.Fsync != nil,
			"format": s.Format != "", "broker": s.Broker != "", "topic": s.Topic != "", "tls": !s.TLS.IsZero(),
			"url": s.URL != "", "auth_header_file": s.AuthHeaderFile != "", "ca_file": s.CAFile != "",
			"batch_max": s.BatchMax != 0, "timeout": s.Timeout != 0,
			"kafka": s.Kafka != nil, "postgres": s.Postgres != nil,
		}
		if s.Policy != nil {
			if err := s.Policy.Validate(); err != nil {
				ck.add(f+".policy", "%v", err)
			}
		}
		var own []string
		switch s.Type {
		case SinkFile:
			own = []string{"path", "max_bytes", "keep", "fsync"}
			if s.Path == "" {
				ck.add(f+".path", "required for type file")
			}
			if s.MaxBytes < 0 {
				ck.add(f+".max_bytes", "must be positive, got %d", s.MaxBytes)
			}
			if s.Keep < 0 {
				ck.add(f+".keep", "must be positive, got %d", s.Keep)
			}
		case SinkStdout:
			own = []string{"format"}
			if s.Format != "json" && s.Format != "pretty" {
				ck.add(f+".format", "must be json or pretty, got %q", clip(s.Format))
			}
		case SinkMQTT:
			own = []string{"broker", "topic", "tls"}
			if s.Broker == "" {
				ck.add(f+".broker", "required for type mqtt")
			} else if tls, p := brokerURL(s.Broker); p != "" {
				ck.add(f+".broker", "%s", p)
			} else if !tls && !c.MQTT.AllowPlaintext {
				ck.add(f+".broker", "tcp:// sends plaintext records in the clear; use ssl:// or set mqtt.allow_plaintext: true")
			}
			if s.Topic == "" {
				ck.add(f+".topic", "required for type mqtt")
			} else if p := topicName(s.Topic); p != "" {
				ck.add(f+".topic", "%s", p)
			}
			checkTLS(ck, f+".tls", s.TLS)
		case SinkHTTP:
			own = []string{"url", "auth_header_file", "ca_file", "batch_max", "timeout"}
			if s.URL == "" {
				ck.add(f+".url", "required for type http")
			} else if p := httpURL(s.URL, true); p != "" {
				ck.add(f+".url", "%s", p)
			}
			if s.BatchMax < 1 || s.BatchMax > 10000 {
				ck.add(f+".batch_max", "want 1-10000, got %d", s.BatchMax)
			}
			positive(ck, f+".timeout", s.Timeout)
		case SinkKafka:
			own = []string{"kafka"}
			if s.Kafka == nil {
				ck.add(f+".kafka", "required for type kafka")
			} else {
				k := *s.Kafka
				k.Name = s.Name
				if err := k.Validate(); err != nil {
					ck.add(f+".kafka", "%v", err)
				}
			}
		case SinkPostgres:
			own = []string{"postgres"}
			if s.Postgres == nil {
				ck.add(f+".postgres", "required for type postgres")
			} else {
				pg := *s.Postgres
				pg.Name = s.Name
				if err := pg.Validate(); err != nil {
					ck.add(f+".postgres", "%v", err)
				}
			}
		case "":
			ck.add(f+".type", "required (file, stdout, mqtt, http, kafka or postgres)")
			continue
		default:
			ck.add(f+".type", "must be file, stdout, mqtt, http, kafka or postgres, got %q", clip(s.Type))
			continue
		}
		for _, k := range []string{"path", "max_bytes", "keep", "fsync", "format", "broker", "topic", "tls", "url", "auth_header_file", "ca_file", "batch_max", "timeout", "kafka", "postgres"} {
			if used[k] && !contains(own, k) {
				ck.add(f+"."+k, "not used by type %s", s.Type)
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (c *Config) validateDeadLetter(ck *checker) {
	d := c.DeadLetter
	switch d.Type {
	case SinkFile:
		if d.Path == "" {
			ck.add("dead_letter.path", "required for type file")
		}
		for _, u := range []struct {
			key string
			set bool
		}{{"topic", d.Topic != ""}, {"broker", d.Broker != ""}, {"tls", !d.TLS.IsZero()}} {
			if u.set {
				ck.add("dead_letter."+u.key, "not used by type file")
			}
		}
	case SinkMQTT:
		if d.Topic == "" {
			ck.add("dead_letter.topic", "required for type mqtt")
		} else if p := topicName(d.Topic); p != "" {
			ck.add("dead_letter.topic", "%s", p)
		}
		if d.Broker != "" {
			if tls, p := brokerURL(d.Broker); p != "" {
				ck.add("dead_letter.broker", "%s", p)
			} else if !tls && !c.MQTT.AllowPlaintext {
				ck.add("dead_letter.broker", "tcp:// needs mqtt.allow_plaintext: true")
			}
		}
		checkTLS(ck, "dead_letter.tls", d.TLS)
		if d.Path != "" {
			ck.add("dead_letter.path", "not used by type mqtt")
		}
		if d.Fsync != nil {
			ck.add("dead_letter.fsync", "not used by type mqtt")
		}
	case "":
		ck.add("dead_letter.type", "required (file or mqtt): a message that cannot be decrypted is kept, never dropped")
	default:
		ck.add("dead_letter.type", "must be file or mqtt, got %q", clip(d.Type))
	}
}

func checkListen(s string) string {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return "want host:port (e.g. 127.0.0.1:9464 or :9464)"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Sprintf("port %q: want 0-65535", clip(port))
	}
	return ""
}

// maxMessageLimit is NIST SP 800-38D's bound on messages under one
// AES-GCM key with random 96-bit nonces.
const maxMessageLimit = uint64(1) << 32

func (c *Config) validateRotation(ck *checker) {
	r := c.Rotation
	positive(ck, "rotation.max_dek_age", r.MaxDEKAge)
	positive(ck, "rotation.grace_period", r.GracePeriod)
	if !(r.SharePerDay > 0 && r.SharePerDay <= 1) {
		ck.add("rotation.share_per_day", "want more than 0 and at most 1, got %g", r.SharePerDay)
	}
	positive(ck, "rotation.retry_interval", r.RetryInterval)
	if r.MessageLimit > maxMessageLimit {
		ck.add("rotation.message_limit", "at most 4294967296 (2^32, NIST SP 800-38D with random nonces), got %d", r.MessageLimit)
	}
	if !(r.PauseThreshold > 0 && r.PauseThreshold <= 1) {
		ck.add("rotation.pause_threshold", "want more than 0 and at most 1, got %g", r.PauseThreshold)
	}
	if r.PauseMinSample < 1 {
		ck.add("rotation.pause_min_sample", "must be positive, got %d", r.PauseMinSample)
	}
	if p := checkCommandTopic(r.CommandTopic); p != "" {
		ck.add("rotation.command_topic", "%s", p)
	}
	if !validTopicLevel(r.DeviceType) {
		ck.add("rotation.device_type", "want 1-64 of A-Z a-z 0-9 . _ - (one topic level), got %q", clip(r.DeviceType))
	}
	positive(ck, "rotation.root_key_max_age", r.RootKeyMaxAge)
	positive(ck, "rotation.tick", r.Tick)
	positive(ck, "rotation.flush_interval", r.FlushInterval)
	if r.Tick > 0 && r.RetryInterval > 0 && r.Tick > r.RetryInterval {
		ck.add("rotation.tick", "must not be longer than rotation.retry_interval (%s), got %s", r.RetryInterval, r.Tick)
	}
}

// checkCommandTopic checks a rotation.command_topic: a topic to publish to
// once {device_type} and {device_id} are filled, with {device_id} exactly
// once as a whole level.
func checkCommandTopic(p string) string {
	n := 0
	for _, l := range strings.Split(p, "/") {
		switch {
		case l == "{device_id}":
			n++
		case l == "{device_type}":
		case strings.ContainsAny(l, "{}"):
			return fmt.Sprintf("level %q: only {device_type} and {device_id} may be replaced, as whole levels", clip(l))
		}
	}
	if n != 1 {
		return "want exactly one level {device_id}"
	}
	filled := strings.NewReplacer("{device_type}", "t", "{device_id}", "d").Replace(p)
	return topicName(filled)
}

// validTopicLevel reports whether s is a safe topic level (a device type).
func validTopicLevel(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '.' || ch == '_' || ch == '-') {
			return false
		}
	}
	return true
}
