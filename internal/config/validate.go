package config

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/decryptd/decryptd/internal/mqttcheck"
	"github.com/decryptd/decryptd/internal/sink"
	kafkasink "github.com/decryptd/decryptd/internal/sink/kafka"
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
	switch c.Input.Type {
	case InputMQTT:
		c.validateMQTT(&ck)
	case InputKafka:
		c.validateKafka(&ck)
		if c.Rotation.Enabled {
			// Rekeys go to the devices over MQTT whatever the input.
			c.validateMQTT(&ck)
		}
	default:
		ck.add("input.type", "must be mqtt or kafka, got %q", clip(c.Input.Type))
	}
	c.validateKMS(&ck)
	c.validateRegistry(&ck)
	c.validateCache(&ck)
	c.validateDecrypt(&ck)
	c.validateSinks(&ck)
	c.validateDeadLetter(&ck)
	c.validateRotation(&ck)
	c.Spool.validate(&ck)
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
	if c.Batch.MaxBytes < MinBatchMaxBytes || c.Batch.MaxBytes > MaxBatchMaxBytes {
		ck.add("batch.max_bytes", "want %d-%d, got %d", MinBatchMaxBytes, MaxBatchMaxBytes, c.Batch.MaxBytes)
	}
	if c.Batch.Linger < 0 || c.Batch.Linger > time.Second {
		ck.add("batch.linger", "must be between 0s and 1s, got %s", c.Batch.Linger)
	}
	if len(ck.probs) == 0 {
		return nil
	}
	return &ValidationError{Problems: ck.probs}
}

// Bounds of the memory settings: sanity, not policy (deploy/README.md,
// "Memory", says what each costs).
const (
	MaxInFlightBytesLimit = 64 << 30 // mqtt.max_in_flight_bytes at most 64 GiB
	MinBatchMaxBytes      = 4 << 10  // batch.max_bytes 4 KiB ..
	MaxBatchMaxBytes      = 1 << 30  // .. 1 GiB
)

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

func (c *Config) validateMQTT(ck *checker) {
	m := c.MQTT
	if len(m.Brokers) == 0 {
		ck.add("mqtt.brokers", "at least one broker required")
	}
	for i, b := range m.Brokers {
		f := fmt.Sprintf("mqtt.brokers[%d]", i)
		tls, p := mqttcheck.BrokerURL(b)
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
		if p := mqttcheck.TopicFilter(t); p != "" {
			ck.add(f, "%s", p)
		} else if strings.HasPrefix(t, "$share/") {
			ck.add(f, "write the plain filter and set mqtt.shared_group instead of $share/")
		}
	}
	if g := m.SharedGroup; g != "" && (strings.ContainsAny(g, "/+#\x00") || len(g) > 128) {
		ck.add("mqtt.shared_group", "must not contain / + # or NUL (1-128 characters)")
	}
	for _, p := range m.TLS.Check() {
		ck.add("mqtt.tls."+p.Key, "%s", p.Text)
	}
	if m.MaxInFlight < 1 || m.MaxInFlight > 65535 {
		ck.add("mqtt.max_in_flight", "want 1-65535, got %d", m.MaxInFlight)
	}
	if least := 2 * int64(c.Decrypt.MaxMessageBytes); m.MaxInFlightBytes < least || m.MaxInFlightBytes > MaxInFlightBytesLimit {
		ck.add("mqtt.max_in_flight_bytes", "want %d (twice decrypt.max_message_bytes) to %d, got %d", least, int64(MaxInFlightBytesLimit), m.MaxInFlightBytes)
	}
	if m.Workers < 1 || m.Workers > 1024 {
		ck.add("mqtt.workers", "want 1-1024, got %d", m.Workers)
	}
	if m.Connections < 0 || m.Connections > MaxMQTTConnections {
		ck.add("mqtt.connections", "want 1-%d, or 0 for the default (GOMAXPROCS/2, 1-4), got %d", MaxMQTTConnections, m.Connections)
	}
	positive(ck, "mqtt.keep_alive", m.KeepAlive)
	positive(ck, "mqtt.connect_timeout", m.ConnectTimeout)
}

// kpSecretsGo says where the Key Protect credential goes instead of a URL.
const kpSecretsGo = "put the API key in the file kms.keyprotect.api_key_file names, or in the environment variable kms.keyprotect.api_key_env names"

func (c *Config) validateKafka(ck *checker) {
	k := c.Kafka
	for _, p := range k.Conn().Problems() {
		ck.add("kafka."+p.Key, "%s", p.Text)
	}
	if k.Group == "" || len(k.Group) > 249 || strings.ContainsAny(k.Group, "\x00\n") {
		ck.add("kafka.group", "want 1-249 characters, got %q", clip(k.Group))
	}
	if len(k.Topics) == 0 {
		ck.add("kafka.topics", "at least one topic required")
	}
	for i, t := range k.Topics {
		if !kafkasink.ValidTopic(t) {
			ck.add(fmt.Sprintf("kafka.topics[%d]", i), "want 1-249 of A-Z a-z 0-9 . _ -, got %q", clip(t))
		}
	}
	if k.ClientID == "" || len(k.ClientID) > 256 {
		ck.add("kafka.client_id", "want 1-256 characters")
	}
	switch k.TopicFrom {
	case TopicFromHeader:
		if k.TopicHeader == "" {
			ck.add("kafka.topic_header", "required for topic_from header")
		}
		if k.TopicTemplate != "" {
			ck.add("kafka.topic_template", "used only with topic_from key")
		}
	case TopicFromKey:
		if p := CheckTopicTemplate(k.TopicTemplate); p != "" {
			ck.add("kafka.topic_template", "%s", p)
		}
	default:
		ck.add("kafka.topic_from", "must be header or key, got %q", clip(k.TopicFrom))
	}
	if k.MaxInFlight < 1 || k.MaxInFlight > 1<<20 {
		ck.add("kafka.max_in_flight", "want 1-1048576, got %d", k.MaxInFlight)
	}
	if k.MaxInFlightBytes < 1<<20 {
		ck.add("kafka.max_in_flight_bytes", "want at least 1048576, got %d", k.MaxInFlightBytes)
	}
	if k.Workers < 1 || k.Workers > 1024 {
		ck.add("kafka.workers", "want 1-1024, got %d", k.Workers)
	}
	positive(ck, "kafka.commit_interval", k.CommitInterval)
	if k.ReplayLookback < 1 {
		ck.add("kafka.replay_lookback", "must be positive, got %d", k.ReplayLookback)
	}
	positive(ck, "kafka.replay_rebuild_timeout", k.ReplayRebuildTimeout)
	if k.ReplayRebuildWorkers < 1 || k.ReplayRebuildWorkers > 1024 {
		ck.add("kafka.replay_rebuild_workers", "want 1-1024, got %d", k.ReplayRebuildWorkers)
	}
	if k.SessionTimeout < time.Second {
		ck.add("kafka.session_timeout", "want at least 1s, got %s", k.SessionTimeout)
	}
	if k.RebalanceTimeout < time.Second {
		ck.add("kafka.rebalance_timeout", "want at least 1s, got %s", k.RebalanceTimeout)
	} else if k.ReplayRebuildTimeout >= k.RebalanceTimeout {
		ck.add("kafka.replay_rebuild_timeout", "must be shorter than kafka.rebalance_timeout (%s), got %s", k.RebalanceTimeout, k.ReplayRebuildTimeout)
	}
}

// CheckTopicTemplate checks a kafka.topic_template: an MQTT topic name
// once {key} is filled, with {key} exactly once and nothing else braced.
func CheckTopicTemplate(p string) string {
	if p == "" {
		return "required for topic_from key (e.g. iot-2/type/monitor/id/{key}/evt/telemetry/fmt/json)"
	}
	if strings.Count(p, "{key}") != 1 {
		return "want {key} exactly once"
	}
	filled := strings.Replace(p, "{key}", "k", 1)
	if strings.ContainsAny(filled, "{}") {
		return "only {key} may be replaced"
	}
	return mqttcheck.TopicName(filled)
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
		} else if p := sink.CheckHTTPURL(kp.BaseURL, true, kpSecretsGo); p != "" {
			ck.add("kms.keyprotect.base_url", "%s", p)
		}
		if kp.TokenURL != "" {
			if p := sink.CheckHTTPURL(kp.TokenURL, true, kpSecretsGo); p != "" {
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
	return mqttcheck.TopicName(filled)
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
