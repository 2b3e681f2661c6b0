package mqttsink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/decryptd/decryptd/internal/mqttcheck"
	"github.com/decryptd/decryptd/internal/mqttstore"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/tlsfiles"
)

// DeviceIDPlaceholder in Options.Topic is replaced by each record's
// DeviceID.
const DeviceIDPlaceholder = "{device_id}"

// Options configures an MQTT sink.
type Options struct {
	Name string // sink name, required
	// Broker is the broker URL: ssl:// (or tls://, mqtts://) unless
	// AllowPlain, e.g. ssl://broker:8883.
	Broker string
	// AllowPlain permits a tcp:// broker (tests, loopback). Records hold
	// PHI: do not use it across a network.
	AllowPlain bool
	// TLS is the client TLS configuration (RootCAs, the client certificate
	// for mutual TLS, as the consumer's); it is cloned.
	TLS *tls.Config
	// ClientID is this sink's own MQTT client id, required; it must differ
	// from the consumer's and from every other client's (the broker drops
	// the older connection of a duplicate id).
	ClientID string
	// Topic is where each record is published; DeviceIDPlaceholder in it
	// is replaced by the record's DeviceID (a record whose DeviceID is
	// empty or holds '/', '+', '#' is then refused with sink.ErrBadRecord).
	Topic string

	// ConnectTimeout bounds connecting; default 10 s.
	ConnectTimeout time.Duration
	// WriteTimeout bounds one Write's wait for its PUBACKs, besides the
	// context; default 30 s.
	WriteTimeout time.Duration
	// KeepAlive is the MQTT keep-alive; default 30 s.
	KeepAlive time.Duration
	// MaxReconnectInterval caps the back-off of reconnection after a lost
	// connection; default 10 s.
	MaxReconnectInterval time.Duration
}

func (o *Options) validate() error {
	if o.Name == "" {
		return errors.New("mqtt sink: name: required")
	}
	errf := func(field, msg string) error { return fmt.Errorf("mqtt sink %q: %s: %s", o.Name, field, msg) }
	if o.Broker == "" {
		return errf("broker", "required")
	}
	u, err := url.Parse(o.Broker)
	if err != nil || u.Host == "" {
		return errf("broker", "not a URL with a host")
	}
	switch u.Scheme {
	case "ssl", "tls", "mqtts", "tcps":
	case "tcp", "mqtt":
		if !o.AllowPlain {
			return errf("broker", "must be ssl:// (records hold PHI)")
		}
	default:
		return errf("broker", fmt.Sprintf("scheme %q: want ssl", u.Scheme))
	}
	if u.User != nil {
		return errf("broker", "must not carry credentials")
	}
	if o.ClientID == "" {
		return errf("client_id", "required")
	}
	switch t := strings.ReplaceAll(o.Topic, DeviceIDPlaceholder, "x"); {
	case o.Topic == "":
		return errf("topic", "required")
	case strings.ContainsAny(t, "+#\x00") || !utf8.ValidString(t):
		return errf("topic", "wildcards, NUL or invalid UTF-8 are not allowed in a topic to publish to")
	case strings.HasPrefix(t, "$"):
		return errf("topic", "topics starting with $ are the broker's")
	case strings.ContainsAny(t, "{}"):
		return errf("topic", "unknown placeholder (only "+DeviceIDPlaceholder+")")
	}
	for _, d := range []struct {
		field string
		v     *time.Duration
		def   time.Duration
	}{
		{"connect_timeout", &o.ConnectTimeout, 10 * time.Second},
		{"write_timeout", &o.WriteTimeout, 30 * time.Second},
		{"keep_alive", &o.KeepAlive, 30 * time.Second},
		{"max_reconnect_interval", &o.MaxReconnectInterval, 10 * time.Second},
	} {
		if *d.v < 0 {
			return errf(d.field, "must not be negative")
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if o.KeepAlive < time.Second {
		return errf("keep_alive", "under 1 s")
	}
	return nil
}

// MQTT is a Sink republishing each record (its JSON as the payload) to a
// topic on a broker, at QoS 1. Write returns nil only once the broker sent
// PUBACK for every record of the batch, i.e. took responsibility for it. A
// connection lost during a Write fails the Write within about 50 ms (the
// caller retries the whole batch; records already acknowledged are
// published again, which the stable record id makes harmless), unless
// paho reconnected at once and the broker acknowledged the resent
// publishes, in which case the batch is held and Write returns nil. The
// client reconnects on its own in the background; a Write while
// disconnected fails at once.
type MQTT struct {
	opts   Options
	client mqtt.Client
	// conns counts successful connections; a Write that sees it change
	// knows the connection it published on is gone.
	conns  atomic.Int64
	closed bool
	topics []string
}

// connPoll is how often a Write waiting for PUBACKs checks that its
// connection is still up. The loss itself is noticed by paho at once; this
// only bounds how late a Write learns of it.
const connPoll = 50 * time.Millisecond

// New connects to the broker; it fails if the first connection cannot
// be made within ctx and ConnectTimeout (a wrong address or certificate
// shows at start-up, not as failing Writes).
func New(ctx context.Context, opts Options) (*MQTT, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	s := &MQTT{opts: opts}
	connected := make(chan struct{}, 1)
	co := mqtt.NewClientOptions().
		AddBroker(opts.Broker).
		SetClientID(opts.ClientID).
		// A publisher has no subscriptions to keep.
		SetCleanSession(true).
		// Keep no outgoing packets for paho to resend after a reconnect: a
		// Write that lost its connection fails and the caller retries the
		// whole batch, so a resend adds nothing, and paho v1.5.1's resend
		// races with the dying connection's writer (it flips the packet's
		// DUP bit while the old goroutine may still be encoding it).
		SetStore(mqttstore.Discard{}).
		SetOrderMatters(false).
		SetKeepAlive(opts.KeepAlive).
		SetPingTimeout(10 * time.Second).
		SetConnectTimeout(opts.ConnectTimeout).
		SetWriteTimeout(opts.WriteTimeout).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(opts.MaxReconnectInterval).
		SetConnectRetry(false).
		SetOnConnectHandler(func(mqtt.Client) {
			s.conns.Add(1)
			select {
			case connected <- struct{}{}:
			default:
			}
		})
	if opts.TLS != nil {
		co.SetTLSConfig(opts.TLS.Clone())
	}
	s.client = mqtt.NewClient(co)
	tok := s.client.Connect()
	cctx, cancel := context.WithTimeout(ctx, opts.ConnectTimeout)
	defer cancel()
	fail := func(err error) (*MQTT, error) {
		s.client.Disconnect(0)
		return nil, fmt.Errorf("mqtt sink %q: connect %s: %w", opts.Name, opts.Broker, err)
	}
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fail(err)
		}
	case <-cctx.Done():
		return fail(cctx.Err())
	}
	// OnConnect runs on its own goroutine; wait for it so that conns
	// counts this first connection before any Write looks at it.
	select {
	case <-connected:
	case <-cctx.Done():
		return fail(cctx.Err())
	}
	return s, nil
}

// Name returns the sink's name.
func (s *MQTT) Name() string { return s.opts.Name }

// Write publishes the batch in order at QoS 1 and waits for every PUBACK.
func (s *MQTT) Write(ctx context.Context, batch []sink.Record) error {
	if s.closed {
		return sink.ErrClosed
	}
	if err := sink.ContextError(ctx, "mqtt", s.opts.Name); err != nil {
		return err
	}
	if err := sink.CheckBatch(batch); err != nil {
		return fmt.Errorf("mqtt sink %q: %w", s.opts.Name, err)
	}
	topics, err := s.topicsFor(batch)
	if err != nil {
		return fmt.Errorf("mqtt sink %q: %w", s.opts.Name, err)
	}
	if len(batch) == 0 {
		return nil
	}
	gen := s.conns.Load()
	if !s.client.IsConnectionOpen() {
		return fmt.Errorf("mqtt sink %q: not connected to %s (reconnecting)", s.opts.Name, s.opts.Broker)
	}
	tokens := make([]mqtt.Token, len(batch))
	for i, r := range batch {
		// Publish hands the packet to paho's writer in call order, so the
		// broker receives the batch in order.
		tokens[i] = s.client.Publish(topics[i], 1, false, r.JSON)
	}
	timer := time.NewTimer(s.opts.WriteTimeout)
	defer timer.Stop()
	poll := time.NewTicker(connPoll)
	defer poll.Stop()
	for i, tok := range tokens {
	wait:
		for {
			select {
			case <-tok.Done():
				break wait
			case <-ctx.Done():
				return fmt.Errorf("mqtt sink %q: waiting for PUBACK of %d records: %w", s.opts.Name, len(tokens)-i, sink.ContextError(ctx, "mqtt", s.opts.Name))
			case <-timer.C:
				return fmt.Errorf("mqtt sink %q: no PUBACK for %d records within %v", s.opts.Name, len(tokens)-i, s.opts.WriteTimeout)
			case <-poll.C:
				if !s.client.IsConnectionOpen() || s.conns.Load() != gen {
					return fmt.Errorf("mqtt sink %q: connection to %s lost before PUBACK of %d records", s.opts.Name, s.opts.Broker, len(tokens)-i)
				}
			}
		}
		if err := tok.Error(); err != nil {
			return fmt.Errorf("mqtt sink %q: publish record %d (id %q): %w", s.opts.Name, i, batch[i].ID, err)
		}
	}
	return nil
}

// topicsFor returns each record's topic, refusing device ids that would
// change the topic's structure or that the broker would reject (and
// disconnect for).
func (s *MQTT) topicsFor(batch []sink.Record) ([]string, error) {
	s.topics = s.topics[:0]
	if !strings.Contains(s.opts.Topic, DeviceIDPlaceholder) {
		for range batch {
			s.topics = append(s.topics, s.opts.Topic)
		}
		return s.topics, nil
	}
	for i, r := range batch {
		d := r.DeviceID
		if d == "" || strings.ContainsAny(d, "/+#\x00") || !utf8.ValidString(d) {
			return nil, fmt.Errorf("record %d (id %q): device id unusable in a topic: %w", i, r.ID, sink.ErrBadRecord)
		}
		s.topics = append(s.topics, strings.ReplaceAll(s.opts.Topic, DeviceIDPlaceholder, d))
	}
	return s.topics, nil
}

// Flush does nothing: Write returns only once the broker acknowledged.
func (s *MQTT) Flush(ctx context.Context) error {
	if s.closed {
		return sink.ErrClosed
	}
	return nil
}

// Close disconnects, allowing up to 250 ms (or less, per ctx) for the
// DISCONNECT to go out; nothing is in flight, as Write waited for its
// PUBACKs.
func (s *MQTT) Close(ctx context.Context) error {
	if s.closed {
		return nil
	}
	s.closed = true
	quiesce := 250 * time.Millisecond
	if dl, ok := ctx.Deadline(); ok {
		quiesce = min(quiesce, max(time.Until(dl), 0))
	}
	s.client.Disconnect(uint(quiesce / time.Millisecond))
	return nil
}

var _ sink.Sink = (*MQTT)(nil)

// Type is the mqtt sink type, for the registry (package sinktypes).
func Type() sink.Type {
	return sink.Type{Name: "mqtt", NewConfig: func() sink.Config { return &Config{} }}
}

// Config is an mqtt sink's entry in the configuration: records published
// at QoS 1 to Topic ({device_id} replaced by each record's device) on
// Broker (same URL rules as mqtt.brokers), with TLS like mqtt.tls.
type Config struct {
	Broker string          `yaml:"broker,omitempty" json:"broker,omitempty"`
	Topic  string          `yaml:"topic,omitempty" json:"topic,omitempty"`
	TLS    tlsfiles.Client `yaml:"tls,omitempty" json:"tls,omitempty"`
}

// Defaults does nothing: every key is required or optional without a
// default.
func (c *Config) Defaults() {}

// Validate checks broker, topic and tls.
func (c *Config) Validate(env sink.Env) error {
	var p sink.Problems
	if c.Broker == "" {
		p.Add("broker", "required for type mqtt")
	} else if tls, s := mqttcheck.BrokerURL(c.Broker); s != "" {
		p.Add("broker", "%s", s)
	} else if !tls && !env.AllowPlaintext {
		p.Add("broker", "tcp:// sends plaintext records in the clear; use ssl:// or set mqtt.allow_plaintext: true")
	}
	if c.Topic == "" {
		p.Add("topic", "required for type mqtt")
	} else if s := mqttcheck.TopicName(c.Topic); s != "" {
		p.Add("topic", "%s", s)
	}
	for _, tp := range c.TLS.Check() {
		p.Add("tls."+tp.Key, "%s", tp.Text)
	}
	return p.Err()
}

// ResolvePaths resolves the TLS files.
func (c *Config) ResolvePaths(abs func(*string)) { c.TLS.ResolvePaths(abs) }

// New connects as env.ClientID (New).
func (c *Config) New(ctx context.Context, name string, env sink.Env) (sink.Sink, error) {
	tc, err := c.TLS.Config()
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(c.Broker)
	if err != nil {
		return nil, fmt.Errorf("mqtt sink %q: broker: not a URL", name)
	}
	return New(ctx, Options{
		Name: name, Broker: c.Broker, AllowPlain: u.Scheme == "tcp" || u.Scheme == "mqtt", TLS: tc,
		ClientID: env.ClientID, Topic: c.Topic,
	})
}
