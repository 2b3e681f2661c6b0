package consumer

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Defaults applied by New to zero-valued Options fields.
const (
	DefaultSharedGroup          = "decryptd" // for the config layer; New takes SharedGroup literally
	DefaultKeepAlive            = 30 * time.Second
	DefaultConnectTimeout       = 10 * time.Second
	DefaultMaxReconnectInterval = 30 * time.Second
	DefaultMaxInFlight          = 1024
	DefaultMaxInFlightBytes     = 64 << 20
	DefaultWorkers              = 64
	DefaultShutdownTimeout      = 15 * time.Second
	// MaxConnections bounds Options.Connections.
	MaxConnections = 64

	// ClientIDEnv names the environment variable DefaultClientID reads.
	ClientIDEnv = "DECRYPTD_MQTT_CLIENT_ID"

	pingTimeout = 10 * time.Second
)

// Options configure a Consumer. The QoS is always 1 and the session always
// persistent (clean session off); neither is configurable because the
// delivery promise depends on both.
type Options struct {
	// Brokers are tried in order: ssl:// (also tls://, mqtts://, tcps://)
	// with mutual TLS, or tcp:// (also mqtt://) only with AllowPlainTCP.
	// Each needs an explicit port.
	Brokers []string
	// ClientID must be stable per replica and unique across replicas: the
	// broker keeps the session (subscriptions and unacknowledged messages)
	// under it and kicks an older connection using the same id. Empty means
	// DefaultClientID(). With several Connections, connection 0 uses
	// ClientID itself and connection n the id "<ClientID>-<n>" (see
	// Connections).
	ClientID string
	// Connections is how many MQTT connections the consumer opens, each
	// its own persistent session in the same shared subscription group,
	// read by its own paho client (reader and router goroutines), all
	// feeding one set of lanes, workers and one Processor under one
	// MaxInFlight. One connection keeps paho's reader and router serial at
	// about 60,000 messages/s; several let a many-core replica read as fast
	// as the broker sends. Default DefaultConnections(): GOMAXPROCS/2,
	// between 1 and 8. At most MaxConnections.
	//
	// Client ids: connection 0 uses ClientID, connection n ≥ 1
	// "<ClientID>-<n>", so they are stable across restarts (each session,
	// with what the broker queued for it, is found again) and going from
	// one connection to several keeps the session the replica had. Lowering
	// Connections leaves the sessions of the ids no longer used in the
	// shared group, where the broker keeps queueing their share: stop the
	// replica once with UnsubscribeOnShutdown before lowering it.
	//
	// Order: the broker's shared subscription spreads one topic's messages
	// over the connections (Mosquitto round-robins per message), so
	// connections read them concurrently. The consumer keeps them in the
	// order their connections' routers handed them over (one topic, one
	// lane and one worker, whatever connection) but that order across
	// connections is only the order of arrival inside the process, not
	// the broker's: see the package documentation.
	Connections int
	// Topics are MQTT topic filters (wildcards allowed), subscribed at QoS 1.
	Topics []string
	// TopicPattern says where a topic carries the device id
	// (intake.ParseTopicPattern); each message's intake.Message.DeviceID is
	// read from its topic with it. Empty: no message carries a device id.
	TopicPattern string
	// SharedGroup subscribes through $share/<SharedGroup>/<filter> so
	// replicas split the load. Taken literally: empty means plain
	// subscriptions (every replica gets every message); the configuration
	// layer supplies DefaultSharedGroup.
	SharedGroup string
	// TLS is the client configuration for ssl:// brokers: RootCAs, a client
	// certificate and a ServerName (when the broker URL's host is not the
	// name in its certificate). MinVersion is raised to TLS 1.2 if lower.
	// tlsfiles.Client.Config builds one from PEM files.
	TLS *tls.Config
	// AllowPlainTCP permits tcp:// brokers (no encryption, no client
	// certificate). Off by default; meant for a broker on the same host.
	AllowPlainTCP bool
	// Username and Password are optional (with use_identity_as_username the
	// certificate CN is the username). Password is never logged.
	Username string
	Password string

	KeepAlive            time.Duration // default DefaultKeepAlive
	ConnectTimeout       time.Duration // TCP + TLS + CONNACK; default DefaultConnectTimeout
	MaxReconnectInterval time.Duration // back-off cap; default DefaultMaxReconnectInterval
	// MaxInFlight bounds the messages the consumer holds between receipt
	// and acknowledgement (queued for a worker, being processed, or done
	// and waiting for earlier messages to be acknowledged first). Set the
	// broker's max_inflight_messages at or below it. Default
	// DefaultMaxInFlight.
	MaxInFlight int
	// MaxInFlightBytes bounds the bytes of the messages held between
	// receipt and acknowledgement, each counted as its payload, its topic
	// and MessageOverhead, beside MaxInFlight's count: intake waits (see
	// Budget) while a message would take the held bytes past it. A single
	// message larger than it is admitted alone. Default
	// DefaultMaxInFlightBytes. Ignored when Budget is set.
	MaxInFlightBytes int64
	// Budget, if set, is the byte budget shared by every consumer
	// (connection) of the replica, NewBudget's; nil: New makes one of
	// MaxInFlightBytes and registers its gauges with Registerer.
	Budget *Budget
	// Workers is the number of goroutines that process messages which may
	// wait (a key being loaded); messages of one topic always go to the
	// same worker. Default DefaultWorkers.
	Workers int
	// Lanes is the number of goroutines that take messages from the intake
	// and hand the ones that need no waiting to the Processor themselves
	// (TryProcess), so that decryption runs beside paho's reading instead
	// of on its one router goroutine; messages of one topic always go to
	// the same lane. Default: with one connection GOMAXPROCS-1, at least
	// 1; with several, none (negative also means none): each connection's
	// router hands its messages on itself, the connections give the
	// parallelism, and no message costs a goroutine hand-off (a lane that
	// waits for its next message costs a wake-up per message, and with
	// many lanes on many cores most lanes wait).
	Lanes int
	// UnsubscribeOnShutdown unsubscribes before stopping, for a replica
	// removed for good: otherwise the broker keeps queueing this replica's
	// share of $share messages under its durable session until it returns.
	UnsubscribeOnShutdown bool
	// ShutdownTimeout bounds the shutdown Run performs when its context
	// ends. Default DefaultShutdownTimeout. Shutdown uses its own context.
	ShutdownTimeout time.Duration

	Logger     *zap.Logger           // nil: no logging
	Registerer prometheus.Registerer // nil: metrics are kept but not registered
}

// DefaultClientID returns $DECRYPTD_MQTT_CLIENT_ID, or else the host name,
// which is stable for a Kubernetes StatefulSet pod or a VM but not for a
// Deployment's pods (set the variable there, e.g. from the pod ordinal).
func DefaultClientID() (string, error) {
	if id := os.Getenv(ClientIDEnv); id != "" {
		return id, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("consumer: client id: %w", err)
	}
	if h == "" {
		return "", errors.New("consumer: client id: empty host name")
	}
	return h, nil
}

// DefaultConnections is the default of Options.Connections:
// GOMAXPROCS/2, at least 1 and at most 8.
//
// Each connection's paho reader and router handle one message after the
// other (TLS decryption and packet decoding on the reader, admission on the
// router), about 60,000 messages/s; the other half of the Ps decrypts,
// writes the sinks and acknowledges. With up to 3 Ps (a 2-vCPU pod) this is
// one connection under the plain client id, as before. Eight connections
// already read faster than one Mosquitto (single-threaded; its own C client
// drains 150,000-200,000 messages/s on a 16-core machine) can send, and
// every connection is one more session on the broker, so more would only
// add sessions and goroutines.
func DefaultConnections() int {
	return max(1, min(8, runtime.GOMAXPROCS(0)/2))
}

// linkClientID is connection n's client id: ClientID for connection 0,
// "<ClientID>-<n>" for the others.
func (o Options) linkClientID(n int) string {
	if n == 0 {
		return o.ClientID
	}
	return o.ClientID + "-" + strconv.Itoa(n)
}

// withDefaults validates o and fills in defaults; it returns a copy.
func (o Options) withDefaults() (Options, error) {
	if len(o.Brokers) == 0 {
		return o, errors.New("consumer: brokers: at least one is required")
	}
	for i, b := range o.Brokers {
		u, err := url.Parse(b)
		if err != nil {
			return o, fmt.Errorf("consumer: brokers[%d]: %w", i, err)
		}
		if u.Port() == "" || u.Hostname() == "" {
			return o, fmt.Errorf("consumer: brokers[%d]: %q needs host and port", i, b)
		}
		switch {
		case isTLSScheme(u.Scheme):
			if o.TLS == nil {
				return o, fmt.Errorf("consumer: brokers[%d]: %s needs a TLS configuration", i, u.Scheme)
			}
		case isPlainScheme(u.Scheme):
			if !o.AllowPlainTCP {
				return o, fmt.Errorf("consumer: brokers[%d]: plain %s:// is not allowed (set AllowPlainTCP for a local broker)", i, u.Scheme)
			}
		default:
			return o, fmt.Errorf("consumer: brokers[%d]: unsupported scheme %q (ssl or tcp)", i, u.Scheme)
		}
	}
	if o.TLS != nil {
		o.TLS = o.TLS.Clone()
		if o.TLS.MinVersion < tls.VersionTLS12 {
			o.TLS.MinVersion = tls.VersionTLS12
		}
	}
	if o.ClientID == "" {
		id, err := DefaultClientID()
		if err != nil {
			return o, err
		}
		o.ClientID = id
	}
	if len(o.Topics) == 0 {
		return o, errors.New("consumer: topics: at least one filter is required")
	}
	if strings.ContainsAny(o.SharedGroup, "/+#") {
		return o, fmt.Errorf("consumer: shared group %q: must not contain '/', '+' or '#'", o.SharedGroup)
	}
	for i, f := range o.Topics {
		if err := validFilter(f); err != nil {
			return o, fmt.Errorf("consumer: topics[%d]: %w", i, err)
		}
		if strings.HasPrefix(f, "$share/") || strings.HasPrefix(f, "$queue/") {
			return o, fmt.Errorf("consumer: topics[%d]: %q: give the plain filter and set SharedGroup", i, f)
		}
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = DefaultKeepAlive
	}
	if o.KeepAlive < 2*time.Second {
		return o, errors.New("consumer: keep alive: at least 2s")
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.MaxReconnectInterval <= 0 {
		o.MaxReconnectInterval = DefaultMaxReconnectInterval
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.MaxInFlightBytes < 0 {
		return o, errors.New("consumer: max in-flight bytes: must not be negative")
	}
	if o.MaxInFlightBytes == 0 {
		o.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	switch {
	case o.Connections < 0 || o.Connections > MaxConnections:
		return o, fmt.Errorf("consumer: connections: want 1-%d (0: the default), got %d", MaxConnections, o.Connections)
	case o.Connections == 0:
		o.Connections = DefaultConnections()
	}
	switch {
	case o.Lanes < 0:
		o.Lanes = 0
	case o.Lanes == 0 && o.Connections == 1:
		o.Lanes = max(runtime.GOMAXPROCS(0)-1, 1)
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return o, nil
}

func isTLSScheme(s string) bool {
	switch s {
	case "ssl", "tls", "mqtts", "tcps":
		return true
	}
	return false
}

func isPlainScheme(s string) bool { return s == "tcp" || s == "mqtt" }

// validFilter checks an MQTT 3.1.1 topic filter (§4.7): non-empty, no NUL,
// '+' and '#' only as a whole level, '#' only last.
func validFilter(f string) error {
	if f == "" {
		return errors.New("empty topic filter")
	}
	if strings.ContainsRune(f, 0) {
		return errors.New("topic filter contains NUL")
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return fmt.Errorf("%q: '#' must be the whole last level", f)
		}
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("%q: '+' must be a whole level", f)
		}
	}
	return nil
}

// byteBudget returns Budget, or a new one of MaxInFlightBytes whose gauges
// are registered with Registerer.
func (o Options) byteBudget() (*Budget, error) {
	if o.Budget != nil {
		return o.Budget, nil
	}
	return NewBudget(o.MaxInFlightBytes, o.Registerer)
}

// subscription returns the filter as subscribed: $share/<group>/<filter>.
func (o Options) subscription(filter string) string {
	if o.SharedGroup == "" {
		return filter
	}
	return "$share/" + o.SharedGroup + "/" + filter
}
