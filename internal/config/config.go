package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/decryptd/decryptd/internal/fieldpolicy"
	"github.com/decryptd/decryptd/internal/sink"
	kafkasink "github.com/decryptd/decryptd/internal/sink/kafka"
	"github.com/decryptd/decryptd/internal/sinktypes"
	"github.com/decryptd/decryptd/internal/tlsfiles"
	"go.yaml.in/yaml/v3"
)

// Config is the whole file. Field comments give each key's meaning; the
// defaults are in Default and the rules in Validate. config.example.yaml at
// the repository root documents every key.
type Config struct {
	Input      Input      `yaml:"input" json:"input"`
	MQTT       MQTT       `yaml:"mqtt" json:"mqtt"`
	Kafka      Kafka      `yaml:"kafka" json:"kafka"`
	KMS        KMS        `yaml:"kms" json:"kms"`
	Registry   Registry   `yaml:"registry" json:"registry"`
	Cache      Cache      `yaml:"cache" json:"cache"`
	Decrypt    Decrypt    `yaml:"decrypt" json:"decrypt"`
	Sinks      []Sink     `yaml:"sinks" json:"sinks"`
	Batch      Batch      `yaml:"batch" json:"batch"`
	DeadLetter DeadLetter `yaml:"dead_letter" json:"dead_letter"`
	Metrics    Metrics    `yaml:"metrics" json:"metrics"`
	Audit      Audit      `yaml:"audit" json:"audit"`
	Log        Log        `yaml:"log" json:"log"`
	Rotation   Rotation   `yaml:"rotation" json:"rotation"`
	Spool      Spool      `yaml:"spool" json:"spool"`
	// ShutdownTimeout bounds the whole graceful shutdown (default 30s).
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout" json:"shutdown_timeout"`

	// sinkTypes decoded the sinks (nil: sinktypes.Registry()).
	sinkTypes *sink.Registry
}

// Input selects where messages come from.
type Input struct {
	// Type is the input kind: mqtt (the default; the mqtt section
	// configures it) or kafka (the kafka section).
	Type string `yaml:"type" json:"type"`
}

// Input types.
const (
	InputMQTT  = "mqtt"
	InputKafka = "kafka"
)

// SinkTypes returns the sink type registry the configuration was decoded
// with (sinktypes.Registry() unless ParseWith was given another).
func (c *Config) SinkTypes() *sink.Registry {
	if c.sinkTypes == nil {
		// Not stored: a Config is read concurrently once loaded.
		return sinktypes.Registry()
	}
	return c.sinkTypes
}

// MQTT is the MQTT input's broker connection (input.type mqtt).
type MQTT struct {
	// Brokers are tried in order: ssl:// (or tls://, mqtts://) for TLS,
	// tcp:// (or mqtt://) only with AllowPlaintext. host:port required.
	Brokers []string `yaml:"brokers" json:"brokers"`
	// ClientID must be stable across restarts and unique per instance, so
	// the broker keeps the session (default: the host name).
	ClientID string `yaml:"client_id" json:"client_id"`
	// Topics are MQTT topic filters to subscribe to.
	Topics []string `yaml:"topics" json:"topics"`
	// SharedGroup, when set, subscribes as $share/<group>/<filter> so that
	// instances split the load.
	SharedGroup string `yaml:"shared_group" json:"shared_group"`
	TLS         TLS    `yaml:"tls" json:"tls"`
	// AllowPlaintext permits tcp:// brokers (development only).
	AllowPlaintext bool `yaml:"allow_plaintext" json:"allow_plaintext"`
	// MaxInFlight bounds messages received but not yet acknowledged
	// (default 1024, the consumer's own). The broker's window (Mosquitto's
	// max_inflight_messages) should be at or below it.
	MaxInFlight int `yaml:"max_in_flight" json:"max_in_flight"`
	// MaxInFlightBytes bounds the bytes of those messages (payload, topic
	// and 1 KiB each; default 64 MiB), whatever their count: with large
	// messages it, not MaxInFlight, stops intake while a sink is slow or
	// down. One budget per replica (deploy/README.md, "Memory", turns it
	// into the container's memory limit). At least twice
	// decrypt.max_message_bytes.
	MaxInFlightBytes int64 `yaml:"max_in_flight_bytes" json:"max_in_flight_bytes"`
	// Workers is how many messages that must wait for their key (a load
	// from the registry and the KMS) are processed at once (default 256).
	// Messages whose key is cached never wait here: the intake decrypts
	// them itself. A worker moves on once its message's record is queued
	// for the sinks, so Workers bounds the key loads a cold start runs at
	// once (cache.max_concurrent_unwraps bounds the KMS calls among them).
	Workers int `yaml:"workers" json:"workers"`
	// Connections is how many MQTT connections the input opens, each a
	// persistent session in the shared group (client ids: client_id, then
	// client_id-1, client_id-2, ...), all feeding one pipeline. 0 (the
	// default) means GOMAXPROCS/2, between 1 and 4
	// (consumer.DefaultConnections); at most 64.
	Connections int `yaml:"connections" json:"connections"`
	// UnsubscribeOnShutdown unsubscribes before disconnecting, so a
	// persistent session stops queueing for this instance (default false:
	// a restart picks up where it left off).
	UnsubscribeOnShutdown bool `yaml:"unsubscribe_on_shutdown" json:"unsubscribe_on_shutdown"`
	// KeepAlive is the MQTT keep-alive interval (default 30s).
	KeepAlive time.Duration `yaml:"keep_alive" json:"keep_alive"`
	// ConnectTimeout bounds one connection attempt (default 10s).
	ConnectTimeout time.Duration `yaml:"connect_timeout" json:"connect_timeout"`
}

// Kafka is the Kafka input's consumer group (input.type kafka; package
// kafkainput). Records are the MQTT messages a bridge copied into Kafka:
// the value is the payload unchanged, the MQTT topic comes from a header
// (TopicFrom header) or is built from the key (TopicFrom key).
type Kafka struct {
	// Brokers are the bootstrap brokers, host:port.
	Brokers []string `yaml:"brokers" json:"brokers"`
	// Group is the consumer group: replicas in one group split the
	// partitions (default decryptd).
	Group string `yaml:"group" json:"group"`
	// Topics are the Kafka topics to consume.
	Topics []string `yaml:"topics" json:"topics"`
	// ClientID names the client to the brokers (default: mqtt.client_id,
	// the host name unless set).
	ClientID string `yaml:"client_id" json:"client_id"`
	// TopicHeader is the record header holding the device's MQTT topic
	// (TopicFrom header; default mqtt_topic).
	TopicHeader string `yaml:"topic_header" json:"topic_header"`
	// TopicFrom is header (the topic is the TopicHeader header's value;
	// default) or key (the topic is TopicTemplate with {key} replaced by
	// the record key).
	TopicFrom string `yaml:"topic_from" json:"topic_from"`
	// TopicTemplate builds the topic from the key (TopicFrom key), e.g.
	// "iot-2/type/monitor/id/{key}/evt/telemetry/fmt/json".
	TopicTemplate string `yaml:"topic_template" json:"topic_template"`
	// MaxInFlight bounds records received and not yet committable
	// (default 8192); fetching waits while it is reached.
	MaxInFlight int `yaml:"max_in_flight" json:"max_in_flight"`
	// MaxInFlightBytes bounds their payload bytes (default 64 MiB).
	MaxInFlightBytes int `yaml:"max_in_flight_bytes" json:"max_in_flight_bytes"`
	// Workers is how many goroutines hand records on (default 256): each
	// takes the device topics its hash picks, one message at a time in
	// order, so up to Workers devices are decrypted (or wait for a key)
	// at once.
	Workers int `yaml:"workers" json:"workers"`
	// CommitInterval is how often the finished prefix of every partition
	// is committed (default 1s); also on revocation and at shutdown.
	CommitInterval time.Duration `yaml:"commit_interval" json:"commit_interval"`
	// ReplayLookback is how many records before the committed offset a
	// newly assigned partition is read back to rebuild its replay window
	// (default 100000; records older than decrypt.replay_window_age are
	// skipped). See docs/kafka-input.md for the guarantee.
	ReplayLookback int `yaml:"replay_lookback" json:"replay_lookback"`
	// ReplayRebuildTimeout bounds one rebuild (default 30s; keep it below
	// the group's rebalance timeout, 60s).
	ReplayRebuildTimeout time.Duration `yaml:"replay_rebuild_timeout" json:"replay_rebuild_timeout"`
	// ReplayRebuildWorkers is how many read-back records a rebuild
	// remembers at once (default 64, 1-1024): each worker takes the
	// devices its hash picks in offset order, so up to this many devices
	// wait for a cold key's KMS round trip at once (the key cache's
	// MaxConcurrentUnwraps still bounds the KMS calls themselves).
	ReplayRebuildWorkers int `yaml:"replay_rebuild_workers" json:"replay_rebuild_workers"`
	// SessionTimeout: a replica silent this long (killed, partitioned)
	// loses its partitions to the others (default 45s, Kafka's).
	SessionTimeout time.Duration `yaml:"session_timeout" json:"session_timeout"`
	// RebalanceTimeout bounds a rebalance: a replica must finish its
	// revocations (in-flight messages, final commits) and rebuilds in it
	// (default 60s).
	RebalanceTimeout time.Duration `yaml:"rebalance_timeout" json:"rebalance_timeout"`
	// TLS, AllowPlaintext and SASL: the keys of the kafka sink.
	TLS            KafkaTLS  `yaml:"tls" json:"tls"`
	AllowPlaintext bool      `yaml:"allow_plaintext" json:"allow_plaintext"`
	SASL           KafkaSASL `yaml:"sasl" json:"sasl"`
}

// KafkaTLS and KafkaSASL are the kafka sink's TLS and SASL settings,
// shared by the Kafka input.
type (
	KafkaTLS  = kafkasink.TLS
	KafkaSASL = kafkasink.SASL
)

// Conn is the input's connection settings in the kafka sink's terms.
func (k Kafka) Conn() kafkasink.Conn {
	return kafkasink.Conn{Brokers: k.Brokers, TLS: k.TLS, AllowPlaintext: k.AllowPlaintext, SASL: k.SASL}
}

// Kafka input topic sources.
const (
	TopicFromHeader = "header"
	TopicFromKey    = "key"
)

// TLS names the files of a TLS client: the CA bundle to trust (empty: the
// system roots) and the client certificate and key for mutual TLS (both or
// neither). It is tlsfiles.Client, shared with the sink types.
type TLS = tlsfiles.Client

// KMS selects and configures the key management service.
type KMS struct {
	// Provider is "local" or "keyprotect".
	Provider   string     `yaml:"provider" json:"provider"`
	Local      LocalKMS   `yaml:"local" json:"local"`
	KeyProtect KeyProtect `yaml:"keyprotect" json:"keyprotect"`
}

// Provider names.
const (
	ProviderLocal      = "local"
	ProviderKeyProtect = "keyprotect"
)

// LocalKMS is the development provider: a root key held in a 0600 file.
type LocalKMS struct {
	RootKeyFile string `yaml:"root_key_file" json:"root_key_file"`
}

// KeyProtect configures IBM Key Protect. The API key is read from
// APIKeyFile or the environment variable APIKeyEnv (exactly one), never
// written here.
type KeyProtect struct {
	BaseURL string `yaml:"base_url" json:"base_url"`
	// TokenURL is the IAM token endpoint (empty: the client's default,
	// https://iam.cloud.ibm.com/oidc/token).
	TokenURL   string `yaml:"token_url" json:"token_url"`
	InstanceID string `yaml:"instance_id" json:"instance_id"`
	RootKeyID  string `yaml:"root_key_id" json:"root_key_id"`
	APIKeyFile string `yaml:"api_key_file" json:"api_key_file"`
	APIKeyEnv  string `yaml:"api_key_env" json:"api_key_env"`
	KeyRing    string `yaml:"key_ring" json:"key_ring"`
	// CAFile is a PEM file of extra CAs trusted for base_url (a private
	// endpoint or a proxy that re-signs); the system roots stay trusted.
	// The IAM token fetch trusts the system roots only.
	CAFile string `yaml:"ca_file" json:"ca_file"`
	// Timeout bounds each KMS call, the client's retries included (default
	// 10s, as package keyprotect).
	Timeout time.Duration `yaml:"timeout" json:"timeout"`
}

// APIKey reads the API key from APIKeyFile or from the environment variable
// APIKeyEnv looked up with env (os.LookupEnv when nil).
func (k KeyProtect) APIKey(env func(string) (string, bool)) (Secret, error) {
	switch {
	case k.APIKeyFile != "":
		s, err := ReadSecretFile(k.APIKeyFile)
		if err != nil {
			return Secret{}, fmt.Errorf("kms.keyprotect.api_key_file: %w", err)
		}
		return s, nil
	case k.APIKeyEnv != "":
		if env == nil {
			env = os.LookupEnv
		}
		v, ok := env(k.APIKeyEnv)
		if !ok || strings.TrimSpace(v) == "" {
			return Secret{}, fmt.Errorf("kms.keyprotect.api_key_env: environment variable %s is not set", k.APIKeyEnv)
		}
		return NewSecret(strings.TrimSpace(v)), nil
	}
	return Secret{}, errors.New("kms.keyprotect: neither api_key_file nor api_key_env is set")
}

// Registry selects the DEK registry backend.
type Registry struct {
	// Driver is "file" or "postgres".
	Driver string `yaml:"driver" json:"driver"`
	// Path is the registry file (driver file).
	Path string `yaml:"path" json:"path"`
	// DSN is the PostgreSQL connection string (driver postgres). A password
	// may only come from DECRYPTD_REGISTRY_DSN, PGPASSWORD or PGPASSFILE.
	DSN Secret `yaml:"dsn" json:"dsn"`
}

// Registry drivers.
const (
	DriverFile     = "file"
	DriverPostgres = "postgres"
)

// Cache configures the DEK cache (see package keycache).
type Cache struct {
	TTL                  time.Duration `yaml:"ttl" json:"ttl"`
	RefreshAhead         time.Duration `yaml:"refresh_ahead" json:"refresh_ahead"`
	StaleLimit           time.Duration `yaml:"stale_limit" json:"stale_limit"`
	NegativeTTL          time.Duration `yaml:"negative_ttl" json:"negative_ttl"`
	MaxEntries           int           `yaml:"max_entries" json:"max_entries"`
	MaxConcurrentUnwraps int           `yaml:"max_concurrent_unwraps" json:"max_concurrent_unwraps"`
}

// Batch configures how records are grouped into sink writes (package
// pipeline): one write, and one fsync, covers a whole batch.
type Batch struct {
	// MaxRecords bounds the records of one sink write (default 1024).
	MaxRecords int `yaml:"max_records" json:"max_records"`
	// MaxBytes bounds the records' JSON of one sink write (default 4 MiB),
	// so that what a sink copies for one write (a file's buffer, a
	// request body) is bounded whatever the record sizes; a record larger
	// than it is written alone. A write that fails is retried in smaller
	// parts (package pipeline).
	MaxBytes int `yaml:"max_bytes" json:"max_bytes"`
	// Linger is the longest a record waits for others to join its sink
	// batch, unless the batch reaches MaxRecords first (default 2ms; a
	// message alone in flight is written at once). Larger batches cost
	// fewer writes and fsyncs per record; the wait adds up to Linger to the
	// latency of delivery and acknowledgement.
	Linger time.Duration `yaml:"linger" json:"linger"`
}

// Decrypt configures the decryption core.
type Decrypt struct {
	// MaxMessageBytes: larger messages are malformed (default 262144).
	MaxMessageBytes int `yaml:"max_message_bytes" json:"max_message_bytes"`
	// TopicPattern finds the device id in a topic: MQTT filter syntax with
	// one level written {device_id} (default
	// iot-2/type/+/id/{device_id}/evt/+/fmt/+). A topic the pattern does not
	// match carries no device id and is not checked (package decrypt).
	TopicPattern string `yaml:"topic_pattern" json:"topic_pattern"`
	// ReplayWindowEntries bounds the nonces remembered (at least this
	// many, up to 1/16 more; default 1000000, about 50 bytes each).
	ReplayWindowEntries int `yaml:"replay_window_entries" json:"replay_window_entries"`
	// ReplayWindowAge is how long an accepted nonce is remembered
	// (default 24h).
	ReplayWindowAge time.Duration `yaml:"replay_window_age" json:"replay_window_age"`
	// ClockSkew, when set, makes a message whose timestamp is further than
	// this from now stale (default 0: off, since devices buffer offline).
	ClockSkew time.Duration `yaml:"clock_skew" json:"clock_skew"`
}

// Sink is one entry of the sinks list: Name and Type, and the keys of the
// type's own configuration (Config), decoded by the sink type registered
// under Type (package sinktypes). A key of another registered type is
// reported by Validate as not used by this type; a key of no type is a
// syntax error.
type Sink struct {
	// Name labels the sink in metrics and logs (default: its type).
	Name string `yaml:"name" json:"name"`
	// Type is a registered sink type: file, stdout, mqtt or http.
	Type string `yaml:"type" json:"type"`
	// Config is the type's configuration (sink.FileConfig,
	// sink.StdoutConfig, sink.HTTPConfig, mqttsink.Config, ...); nil when
	// Type is not registered.
	Config sink.Config `yaml:"-" json:"-"`

	// Policy, for any type, is the field policy applied to this sink's
	// records (package fieldpolicy): rules by JSON Pointer, the default for
	// fields that arrived encrypted, the pseudonymization key.
	Policy *Policy `yaml:"policy,omitempty" json:"policy,omitempty"`

	node  *yaml.Node // the entry as read, until the registry decodes it
	other []string   // keys of another registered type, for Validate
}

// Policy is a sink's field policy (package fieldpolicy).
type Policy = fieldpolicy.Config

// Sink types built in (see package sinktypes for all of them).
const (
	SinkFile = "file"
	SinkMQTT = "mqtt"
)

// DeadLetter is where messages that cannot be decrypted are kept, as
// received: a file (type file, Path, Fsync) or an MQTT topic (type mqtt,
// Topic, and Broker/TLS when not the consumer's own connection).
type DeadLetter struct {
	Type   string `yaml:"type" json:"type"`
	Path   string `yaml:"path,omitempty" json:"path,omitempty"`
	Fsync  *bool  `yaml:"fsync,omitempty" json:"fsync,omitempty"`
	Topic  string `yaml:"topic,omitempty" json:"topic,omitempty"`
	Broker string `yaml:"broker,omitempty" json:"broker,omitempty"`
	TLS    TLS    `yaml:"tls,omitempty" json:"tls,omitempty"`
}

// FsyncEnabled reports the effective fsync setting (true unless set false).
func (d DeadLetter) FsyncEnabled() bool { return d.Fsync == nil || *d.Fsync }

// Metrics configures the HTTP listener for /metrics, /healthz and /readyz.
type Metrics struct {
	// Listen is host:port (default 127.0.0.1:9464: loopback, so exposing
	// metrics beyond the host is a deliberate choice).
	Listen string `yaml:"listen" json:"listen"`
}

// Audit configures the hash-chained audit log of key access.
type Audit struct {
	Path string `yaml:"path" json:"path"`
}

// Log configures zap.
type Log struct {
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level" json:"level"`
	// Format is json (default) or console.
	Format string `yaml:"format" json:"format"`
}

// Rotation configures fleet key rotation (package rotation): every replica
// watches adoption and counts messages per DEK version; the one holding
// the rotation lease (a PostgreSQL advisory lock, or a lock file next to
// the registry file) rotates what is due and delivers the new versions to
// the devices as rekey messages (docs/rekey-v1.md). Off by default.
type Rotation struct {
	// Enabled turns rotation on (default false: the daemon behaves exactly
	// as without this section).
	Enabled bool `yaml:"enabled" json:"enabled"`
	// MaxDEKAge: a DEK version older than this is rotated (default 720h).
	MaxDEKAge time.Duration `yaml:"max_dek_age" json:"max_dek_age"`
	// GracePeriod: how long a superseded version keeps decrypting after the
	// device adopted its successor, then it is revoked (default 72h).
	GracePeriod time.Duration `yaml:"grace_period" json:"grace_period"`
	// SharePerDay: the share of the fleet's keys whose age-driven rotation
	// may start per 24 hours, 0 to 1 (default 0.10).
	SharePerDay float64 `yaml:"share_per_day" json:"share_per_day"`
	// RetryInterval: a rekey not yet adopted is sent again this long after
	// the last attempt; a device still silent after the first retry is a
	// straggler (default 6h).
	RetryInterval time.Duration `yaml:"retry_interval" json:"retry_interval"`
	// MessageLimit: a version under which this many messages were
	// decrypted is rotated early, whatever its age (default 2147483648 =
	// 2^31; at most 2^32, NIST SP 800-38D's bound for random nonces).
	MessageLimit uint64 `yaml:"message_limit" json:"message_limit"`
	// PauseThreshold: no new rotation starts while more than this share of
	// the pending ones are stragglers or failed delivery (default 0.2),
	// once PauseMinSample are pending (default 20).
	PauseThreshold float64 `yaml:"pause_threshold" json:"pause_threshold"`
	PauseMinSample int     `yaml:"pause_min_sample" json:"pause_min_sample"`
	// CommandTopic is where a device's rekey is published: {device_type}
	// and {device_id} are replaced (default Watson IoT's command topic,
	// DefaultCommandTopic).
	CommandTopic string `yaml:"command_topic" json:"command_topic"`
	// DeviceType fills {device_type} in CommandTopic: the registry does not
	// record device types, so the fleet's one type is named here (default
	// monitor).
	DeviceType string `yaml:"device_type" json:"device_type"`
	// RotateRootKey: the leader also rotates the root key every
	// RootKeyMaxAge and rewraps every DEK under it (default true; false
	// when the KMS rotates it by its own policy).
	RotateRootKey *bool `yaml:"rotate_root_key,omitempty" json:"rotate_root_key,omitempty"`
	// RootKeyMaxAge: age of the root key's newest version at which it is
	// rotated (default 8760h).
	RootKeyMaxAge time.Duration `yaml:"root_key_max_age" json:"root_key_max_age"`
	// Tick: how often the leader looks at the registry (default 10s).
	Tick time.Duration `yaml:"tick" json:"tick"`
	// FlushInterval: how often each replica adds its per-version message
	// counts to the registry (default 5m).
	FlushInterval time.Duration `yaml:"flush_interval" json:"flush_interval"`
}

// RootRotationEnabled reports the effective rotate_root_key (true unless
// set false).
func (r Rotation) RootRotationEnabled() bool { return r.RotateRootKey == nil || *r.RotateRootKey }

// Rotation defaults.
const (
	DefaultRotationMaxDEKAge      = 720 * time.Hour
	DefaultRotationGracePeriod    = 72 * time.Hour
	DefaultRotationSharePerDay    = 0.10
	DefaultRotationRetryInterval  = 6 * time.Hour
	DefaultRotationMessageLimit   = uint64(1) << 31
	DefaultRotationPauseThreshold = 0.2
	DefaultRotationPauseMinSample = 20
	// DefaultCommandTopic equals rekey.DefaultTopic (docs/rekey-v1.md).
	DefaultCommandTopic          = "iot-2/type/{device_type}/id/{device_id}/cmd/rekey/fmt/json"
	DefaultRotationDeviceType    = "monitor"
	DefaultRotationRootKeyMaxAge = 8760 * time.Hour
	DefaultRotationTick          = 10 * time.Second
	DefaultRotationFlushInterval = 5 * time.Minute
)

// Defaults.
const (
	DefaultMaxInFlight = 1024
	DefaultWorkers     = 256
	// MaxMQTTConnections bounds mqtt.connections (consumer.MaxConnections).
	MaxMQTTConnections         = 64
	DefaultKeepAlive           = 30 * time.Second
	DefaultConnectTimeout      = 10 * time.Second
	DefaultKeyProtectTimeout   = 10 * time.Second
	DefaultCacheTTL            = time.Hour
	DefaultRefreshAhead        = 5 * time.Minute
	DefaultStaleLimit          = 6 * time.Hour
	DefaultNegativeTTL         = 30 * time.Second
	DefaultMaxEntries          = 100_000
	DefaultMaxUnwraps          = 16
	DefaultMaxMessageBytes     = 256 << 10
	DefaultTopicPattern        = "iot-2/type/+/id/{device_id}/evt/+/fmt/+"
	DefaultReplayWindowEntries = 1_000_000
	DefaultReplayWindowAge     = 24 * time.Hour
	DefaultSinkMaxBytes        = sink.DefaultFileMaxBytes
	DefaultSinkKeep            = sink.DefaultFileKeep
	DefaultInputType           = InputMQTT
	DefaultMetricsListen       = "127.0.0.1:9464"
	DefaultLogLevel            = "info"
	DefaultLogFormat           = "json"
	DefaultShutdownTimeout     = 30 * time.Second
	DefaultBatchMaxRecords     = 1024
	DefaultBatchMaxBytes       = 4 << 20
	DefaultMaxInFlightBytes    = 64 << 20
	DefaultBatchLinger         = 2 * time.Millisecond

	DefaultKafkaGroup            = "decryptd"
	DefaultKafkaTopicHeader      = "mqtt_topic"
	DefaultKafkaMaxInFlightBytes = 64 << 20
	// DefaultKafkaMaxInFlight is larger than the MQTT input's: a Kafka
	// record settles only once its sink batch is written (fsynced), so
	// the bound has to cover what arrives during a write or two
	// (throughput ≈ bound / settle time); 8192 records of a few hundred
	// bytes are a few MiB, well inside the byte bound.
	DefaultKafkaMaxInFlight          = 8192
	DefaultKafkaCommitInterval       = time.Second
	DefaultKafkaReplayLookback       = 100_000
	DefaultKafkaReplayRebuildTimeout = 30 * time.Second
	DefaultKafkaReplayRebuildWorkers = 64 // kafkainput.DefaultReplayRebuildWorkers
	DefaultKafkaSessionTimeout       = 45 * time.Second
	DefaultKafkaRebalanceTimeout     = 60 * time.Second
)

// Default returns a Config holding every default (mqtt.client_id is the host
// name). It is not valid by itself: brokers, topics, kms, registry, sinks,
// dead_letter and audit.path have no default.
func Default() *Config {
	c := &Config{}
	c.applyDefaults()
	return c
}

// maxFile bounds the config file; a real one is a few KiB.
const maxFile = 1 << 20

// EnvPrefix starts every environment override's name.
const EnvPrefix = "DECRYPTD_"

// Read loads the file at path like Load but does not validate, for a tool
// that needs only part of the configuration (dekctl root create, before a
// root key id exists). Most callers want Load.
func Read(path string, env func(string) (string, bool)) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFile+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if len(data) > maxFile {
		return nil, fmt.Errorf("config %s: larger than %d bytes", path, maxFile)
	}
	c, err := parse(data, env, nil)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	abs, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	c.resolvePaths(abs)
	return c, nil
}

// Load reads the file at path, applies the environment overrides (env looks
// a name up; os.LookupEnv in production, nil for none), fills defaults,
// resolves relative paths against the file's directory and validates.
func Load(path string, env func(string) (string, bool)) (*Config, error) {
	c, err := Read(path, env)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes data like Load, leaving relative paths as written (so
// relative to the working directory), and validates.
func Parse(data []byte, env func(string) (string, bool)) (*Config, error) {
	return ParseWith(data, env, nil)
}

// ParseWith is Parse with the sink types of sinkTypes (nil:
// sinktypes.Registry()), for a program or test adding its own.
func ParseWith(data []byte, env func(string) (string, bool), sinkTypes *sink.Registry) (*Config, error) {
	c, err := parse(data, env, sinkTypes)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func parse(data []byte, env func(string) (string, bool), sinkTypes *sink.Registry) (*Config, error) {
	c := &Config{sinkTypes: sinkTypes}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	switch err := dec.Decode(c); {
	case errors.Is(err, io.EOF):
		// An empty file: defaults and environment only.
	case err != nil:
		return nil, withKeyPaths(cleanYAMLError(err), data)
	default:
		var extra yaml.Node
		if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
			return nil, errors.New("yaml: more than one document (a second '---')")
		}
	}
	if err := c.decodeSinks(); err != nil {
		return nil, withKeyPaths(err, data)
	}
	// Checked before the environment is applied: a password is allowed
	// there, never in the file.
	if dsnHasPassword(c.Registry.DSN.Reveal()) {
		return nil, errors.New("registry.dsn: holds a password; pass it via DECRYPTD_REGISTRY_DSN, PGPASSWORD or PGPASSFILE instead of the file")
	}
	if env != nil {
		if err := applyEnv(c, env); err != nil {
			return nil, err
		}
	}
	c.applyDefaults()
	return c, nil
}

// cleanYAMLError turns the decoder's Go type names into what the user
// wrote: "field bogus not found in type config.MQTT" becomes
// "unknown key "bogus"".
func cleanYAMLError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		if strings.HasPrefix(err.Error(), "yaml: ") {
			return err
		}
		return fmt.Errorf("yaml: %w", err)
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, m := range te.Errors {
		if i := strings.Index(m, "field "); i >= 0 && strings.Contains(m, " not found in type ") {
			name := m[i+len("field "):]
			name = name[:strings.Index(name, " not found in type ")]
			m = m[:i] + fmt.Sprintf("unknown key %q", name)
		}
		m = strings.Replace(m, "into time.Duration", "into a duration (write a Go duration string such as 30s)", 1)
		msgs = append(msgs, m)
	}
	return errors.New("yaml: " + strings.Join(msgs, "; "))
}

// dsnHasPassword recognises a password in a URL DSN
// (postgres://u:pw@host/db) or a key=value DSN (password=pw).
func dsnHasPassword(dsn string) bool {
	if dsn == "" {
		return false
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		rest := dsn[strings.Index(dsn, "://")+3:]
		if at := strings.LastIndex(strings.SplitN(rest, "/", 2)[0], "@"); at >= 0 {
			if strings.Contains(rest[:at], ":") {
				return true
			}
		}
		if q := strings.Index(rest, "?"); q >= 0 && strings.Contains("&"+rest[q+1:], "&password=") {
			return true
		}
		return false
	}
	for _, f := range strings.Fields(dsn) {
		if strings.HasPrefix(f, "password=") {
			return true
		}
	}
	return false
}

func (c *Config) applyDefaults() {
	setS := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	setI := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	setD := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	setS(&c.Input.Type, DefaultInputType)
	if c.MQTT.ClientID == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			c.MQTT.ClientID = h
		} else {
			c.MQTT.ClientID = "decryptd"
		}
	}
	setI(&c.MQTT.MaxInFlight, DefaultMaxInFlight)
	if c.MQTT.MaxInFlightBytes == 0 {
		c.MQTT.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	setI(&c.MQTT.Workers, DefaultWorkers)
	setD(&c.MQTT.KeepAlive, DefaultKeepAlive)
	setD(&c.MQTT.ConnectTimeout, DefaultConnectTimeout)

	k := &c.Kafka
	setS(&k.Group, DefaultKafkaGroup)
	setS(&k.ClientID, c.MQTT.ClientID)
	setS(&k.TopicHeader, DefaultKafkaTopicHeader)
	setS(&k.TopicFrom, TopicFromHeader)
	setI(&k.MaxInFlight, DefaultKafkaMaxInFlight)
	setI(&k.MaxInFlightBytes, DefaultKafkaMaxInFlightBytes)
	setI(&k.Workers, DefaultWorkers)
	setD(&k.CommitInterval, DefaultKafkaCommitInterval)
	setI(&k.ReplayLookback, DefaultKafkaReplayLookback)
	setD(&k.ReplayRebuildTimeout, DefaultKafkaReplayRebuildTimeout)
	setI(&k.ReplayRebuildWorkers, DefaultKafkaReplayRebuildWorkers)
	setD(&k.SessionTimeout, DefaultKafkaSessionTimeout)
	setD(&k.RebalanceTimeout, DefaultKafkaRebalanceTimeout)

	c.KMS.KeyProtect.BaseURL = strings.TrimRight(c.KMS.KeyProtect.BaseURL, "/")
	setD(&c.KMS.KeyProtect.Timeout, DefaultKeyProtectTimeout)

	setD(&c.Cache.TTL, DefaultCacheTTL)
	setD(&c.Cache.RefreshAhead, DefaultRefreshAhead)
	setD(&c.Cache.StaleLimit, DefaultStaleLimit)
	setD(&c.Cache.NegativeTTL, DefaultNegativeTTL)
	setI(&c.Cache.MaxEntries, DefaultMaxEntries)
	setI(&c.Cache.MaxConcurrentUnwraps, DefaultMaxUnwraps)

	setI(&c.Decrypt.MaxMessageBytes, DefaultMaxMessageBytes)
	setS(&c.Decrypt.TopicPattern, DefaultTopicPattern)
	setI(&c.Decrypt.ReplayWindowEntries, DefaultReplayWindowEntries)
	setD(&c.Decrypt.ReplayWindowAge, DefaultReplayWindowAge)

	for i := range c.Sinks {
		s := &c.Sinks[i]
		setS(&s.Name, s.Type)
		if s.Config != nil {
			s.Config.Defaults()
		}
	}
	if c.DeadLetter.Type == SinkFile && c.DeadLetter.Fsync == nil {
		t := true
		c.DeadLetter.Fsync = &t
	}

	r := &c.Rotation
	setD(&r.MaxDEKAge, DefaultRotationMaxDEKAge)
	setD(&r.GracePeriod, DefaultRotationGracePeriod)
	if r.SharePerDay == 0 {
		r.SharePerDay = DefaultRotationSharePerDay
	}
	setD(&r.RetryInterval, DefaultRotationRetryInterval)
	if r.MessageLimit == 0 {
		r.MessageLimit = DefaultRotationMessageLimit
	}
	if r.PauseThreshold == 0 {
		r.PauseThreshold = DefaultRotationPauseThreshold
	}
	setI(&r.PauseMinSample, DefaultRotationPauseMinSample)
	setS(&r.CommandTopic, DefaultCommandTopic)
	setS(&r.DeviceType, DefaultRotationDeviceType)
	if r.RotateRootKey == nil {
		t := true
		r.RotateRootKey = &t
	}
	setD(&r.RootKeyMaxAge, DefaultRotationRootKeyMaxAge)
	setD(&r.Tick, DefaultRotationTick)
	setD(&r.FlushInterval, DefaultRotationFlushInterval)

	setI(&c.Batch.MaxRecords, DefaultBatchMaxRecords)
	setI(&c.Batch.MaxBytes, DefaultBatchMaxBytes)
	setD(&c.Batch.Linger, DefaultBatchLinger)

	setS(&c.Metrics.Listen, DefaultMetricsListen)
	setS(&c.Log.Level, DefaultLogLevel)
	setS(&c.Log.Format, DefaultLogFormat)
	setD(&c.ShutdownTimeout, DefaultShutdownTimeout)
	c.Spool.applyDefaults()
}

// resolvePaths makes every relative file path absolute against dir.
func (c *Config) resolvePaths(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	c.MQTT.TLS.ResolvePaths(abs)
	abs(&c.Kafka.TLS.CAFile)
	abs(&c.Kafka.TLS.CertFile)
	abs(&c.Kafka.TLS.KeyFile)
	abs(&c.Kafka.SASL.SecretFile)
	abs(&c.KMS.Local.RootKeyFile)
	abs(&c.KMS.KeyProtect.APIKeyFile)
	abs(&c.KMS.KeyProtect.CAFile)
	abs(&c.Registry.Path)
	for _, s := range c.Sinks {
		if r, ok := s.Config.(sink.PathResolver); ok {
			r.ResolvePaths(abs)
		}
	}
	abs(&c.DeadLetter.Path)
	c.DeadLetter.TLS.ResolvePaths(abs)
	abs(&c.Audit.Path)
	abs(&c.Spool.Dir)
}
