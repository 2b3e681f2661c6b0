package kafka

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/oauth"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/decryptd/decryptd/internal/sink"
)

// Type is the sink type's name in the configuration.
const Type = "kafka"

// Header names carried by every produced record.
const (
	HeaderRecordID   = "record_id"
	HeaderKeyID      = "key_id"
	HeaderKeyVersion = "key_version"
)

// SASL mechanisms.
const (
	MechPlain       = "plain"
	MechScramSHA512 = "scram-sha-512"
	MechOAuthBearer = "oauthbearer"
)

// Config is a Kafka sink's configuration (the keys under a sink of type
// kafka).
type Config struct {
	// Name labels the sink in metrics and logs: the sink entry's name,
	// not a key of its own.
	Name string `yaml:"-" json:"-"`
	// Brokers are the bootstrap brokers, host:port.
	Brokers []string `yaml:"brokers" json:"brokers"`
	// Topic receives every record.
	Topic string `yaml:"topic" json:"topic"`
	// ClientID names the producer to the brokers (default decryptd).
	ClientID string `yaml:"client_id,omitempty" json:"client_id,omitempty"`
	// TLS: on unless AllowPlaintext; CAFile replaces the system roots,
	// CertFile and KeyFile give a client certificate (both or neither).
	TLS TLS `yaml:"tls,omitempty" json:"tls,omitempty"`
	// AllowPlaintext connects without TLS (tests, a broker on loopback).
	// Records hold PHI: never across a network.
	AllowPlaintext bool `yaml:"allow_plaintext,omitempty" json:"allow_plaintext,omitempty"`
	SASL           SASL `yaml:"sasl,omitempty" json:"sasl,omitempty"`
}

// TLS names the files of the TLS client.
type TLS struct {
	CAFile     string `yaml:"ca_file,omitempty" json:"ca_file,omitempty"`
	CertFile   string `yaml:"cert_file,omitempty" json:"cert_file,omitempty"`
	KeyFile    string `yaml:"key_file,omitempty" json:"key_file,omitempty"`
	ServerName string `yaml:"server_name,omitempty" json:"server_name,omitempty"`
}

// SASL configures authentication. The secret (password for plain and
// scram-sha-512, token for oauthbearer) comes from SecretFile or the
// environment variable SecretEnv, exactly one.
type SASL struct {
	// Mechanism is plain, scram-sha-512 or oauthbearer; empty: none.
	Mechanism string `yaml:"mechanism,omitempty" json:"mechanism,omitempty"`
	// Username for plain and scram-sha-512 ("token" for Event Streams).
	Username   string `yaml:"username,omitempty" json:"username,omitempty"`
	SecretFile string `yaml:"secret_file,omitempty" json:"secret_file,omitempty"`
	SecretEnv  string `yaml:"secret_env,omitempty" json:"secret_env,omitempty"`
}

// Problem is one problem with one key of the configuration, named
// relative to the sink's entry ("sasl.mechanism").
type Problem struct{ Key, Text string }

// Validate checks c without touching the network or the files it names,
// naming the field at fault.
func (c Config) validate() error {
	ps := c.Problems()
	if len(ps) == 0 {
		return nil
	}
	msgs := make([]string, len(ps))
	for i, p := range ps {
		msgs[i] = p.Key + ": " + p.Text
	}
	return fmt.Errorf("kafka sink %q: %s", c.Name, strings.Join(msgs, "; "))
}

// Problems lists what Validate reports, one problem per key: the
// connection's (Conn.Problems, shared with the Kafka input) and the topic.
func (c Config) Problems() []Problem {
	ps := c.Conn().Problems()
	switch {
	case c.Topic == "":
		ps = append(ps, Problem{"topic", "required"})
	case !ValidTopic(c.Topic):
		ps = append(ps, Problem{"topic", "want 1-249 of A-Z a-z 0-9 . _ -"})
	}
	return ps
}

// ValidTopic reports whether name is a legal Kafka topic name.
func ValidTopic(name string) bool {
	return name != "" && len(name) <= 249 && name != "." && name != ".." &&
		strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == ""
}

// Option adjusts New.
type Option func(*options)

type options struct {
	kgo    []kgo.Opt
	getenv func(string) (string, bool)
}

// WithClientOptions appends franz-go options (tests, benchmarks).
func WithClientOptions(o ...kgo.Opt) Option {
	return func(op *options) { op.kgo = append(op.kgo, o...) }
}

// WithGetenv replaces os.LookupEnv for sasl.secret_env.
func WithGetenv(f func(string) (string, bool)) Option {
	return func(op *options) { op.getenv = f }
}

// Sink produces records to Kafka. See the package documentation.
type Sink struct {
	name  string
	topic string
	cl    *kgo.Client

	mu     sync.Mutex // guards closed against a Close racing a Write's check
	closed bool
}

// New validates cfg and starts a producer. It does not wait for the
// brokers: the first Write does.
func New(ctx context.Context, cfg Config, opts ...Option) (*Sink, error) {
	if cfg.Name == "" {
		return nil, errors.New("kafka sink: a name is required")
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	o := options{getenv: os.LookupEnv}
	for _, f := range opts {
		f(&o)
	}
	clientID := cfg.ClientID
	if clientID == "" {
		clientID = "decryptd"
	}
	kopts, err := cfg.Conn().ClientOptions(clientID, o.getenv)
	if err != nil {
		return nil, fmt.Errorf("kafka sink %q: %w", cfg.Name, err)
	}
	kopts = append(kopts,
		kgo.DefaultProduceTopic(cfg.Topic),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		// Idempotence is franz-go's default with acks=all (no
		// DisableIdempotentWrite here). A Write waits for its records, so
		// lingering for more would only add latency.
		kgo.ProducerLinger(0),
		// Keyed records hash by key (Kafka's murmur2): one device, one
		// partition, in order.
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
	)
	cl, err := kgo.NewClient(append(kopts, o.kgo...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka sink %q: %w", cfg.Name, err)
	}
	return &Sink{name: cfg.Name, topic: cfg.Topic, cl: cl}, nil
}

func tlsConfig(t TLS) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate", t.CAFile)
		}
		c.RootCAs = pool
	}
	if t.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", t.CertFile, err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

func lookupEnv(name string) (string, bool) { return os.LookupEnv(name) }

// maxSecret bounds a secret file (an API key or token is far smaller).
const maxSecret = 64 << 10

// secret reads the SASL secret at each authentication: a rotated file is
// picked up on the next connection. Errors name the source, never the value.
func secret(s SASL, getenv func(string) (string, bool)) (string, error) {
	if s.SecretFile != "" {
		b, err := os.ReadFile(s.SecretFile)
		defer clear(b)
		if err != nil {
			return "", fmt.Errorf("sasl.secret_file: %w", err)
		}
		if len(b) > maxSecret {
			return "", fmt.Errorf("sasl.secret_file %s: larger than %d bytes", s.SecretFile, maxSecret)
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			return "", fmt.Errorf("sasl.secret_file %s: empty", s.SecretFile)
		}
		return v, nil
	}
	v, ok := getenv(s.SecretEnv)
	if v = strings.TrimSpace(v); !ok || v == "" {
		return "", fmt.Errorf("sasl.secret_env: environment variable %s is not set", s.SecretEnv)
	}
	return v, nil
}

func mechanism(s SASL, getenv func(string) (string, bool)) sasl.Mechanism {
	switch s.Mechanism {
	case MechPlain:
		return plain.Plain(func(context.Context) (plain.Auth, error) {
			p, err := secret(s, getenv)
			return plain.Auth{User: s.Username, Pass: p}, err
		})
	case MechScramSHA512:
		return scram.Sha512(func(context.Context) (scram.Auth, error) {
			p, err := secret(s, getenv)
			return scram.Auth{User: s.Username, Pass: p}, err
		})
	case MechOAuthBearer:
		return oauth.Oauth(func(context.Context) (oauth.Auth, error) {
			t, err := secret(s, getenv)
			return oauth.Auth{Token: t}, err
		})
	}
	return nil
}

// Name returns the sink's name.
func (s *Sink) Name() string { return s.name }

// Write produces the batch and returns once every record is acknowledged
// (acks=all), or at the first failure, or when ctx ends.
func (s *Sink) Write(ctx context.Context, batch []sink.Record) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return sink.ErrClosed
	}
	if err := s.ctxErr(ctx); err != nil {
		return err
	}
	if err := checkBatch(batch); err != nil {
		return fmt.Errorf("kafka sink %q: %w", s.name, err)
	}
	if len(batch) == 0 {
		return nil
	}
	// One copy of every key and value: the caller recycles its buffers
	// once Write returns, which may be before a produce finishes.
	n := 0
	for _, r := range batch {
		n += len(r.JSON) + len(r.DeviceID) + len(r.ID) + len(r.KeyID) + len(r.KeyVersion)
	}
	arena := make([]byte, 0, n)
	take := func(s string) []byte {
		start := len(arena)
		arena = append(arena, s...)
		return arena[start:len(arena):len(arena)]
	}
	recs := make([]kgo.Record, len(batch))
	done := make(chan error, len(batch))
	for i, r := range batch {
		kr := &recs[i]
		kr.Key = take(r.DeviceID)
		start := len(arena)
		arena = append(arena, r.JSON...)
		kr.Value = arena[start:len(arena):len(arena)]
		kr.Headers = make([]kgo.RecordHeader, 1, 3)
		kr.Headers[0] = kgo.RecordHeader{Key: HeaderRecordID, Value: take(r.ID)}
		if r.KeyVersion != "" {
			kr.Headers = append(kr.Headers,
				kgo.RecordHeader{Key: HeaderKeyID, Value: take(r.KeyID)},
				kgo.RecordHeader{Key: HeaderKeyVersion, Value: take(r.KeyVersion)})
		}
	}
	for i := range recs {
		s.cl.Produce(ctx, &recs[i], func(_ *kgo.Record, err error) { done <- err })
	}
	for range recs {
		select {
		case err := <-done:
			if err != nil {
				if cerr := s.ctxErr(ctx); cerr != nil {
					return cerr
				}
				if errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.InvalidRecord) {
					return fmt.Errorf("kafka sink %q: %w: %w", s.name, sink.ErrBadRecord, err)
				}
				if errors.Is(err, kgo.ErrClientClosed) {
					return sink.ErrClosed
				}
				return fmt.Errorf("kafka sink %q: produce: %w", s.name, err)
			}
		case <-ctx.Done():
			return s.ctxErr(ctx)
		}
	}
	return nil
}

// Flush waits for anything still buffered (nothing, after a Write that
// returned nil).
func (s *Sink) Flush(ctx context.Context) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return sink.ErrClosed
	}
	if err := s.cl.Flush(ctx); err != nil {
		return fmt.Errorf("kafka sink %q: flush: %w", s.name, err)
	}
	return nil
}

// Close flushes what is buffered (bounded by ctx) and closes the producer.
// Closing again returns nil.
func (s *Sink) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	err := s.cl.Flush(ctx)
	s.cl.Close()
	if err != nil {
		return fmt.Errorf("kafka sink %q: close: %w", s.name, err)
	}
	return nil
}

func (s *Sink) ctxErr(ctx context.Context) error {
	ce := ctx.Err()
	if ce == nil {
		return nil
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, ce) {
		return fmt.Errorf("kafka sink %q: %w (%w)", s.name, ce, cause)
	}
	return fmt.Errorf("kafka sink %q: %w", s.name, ce)
}

// checkBatch refuses a batch holding a record no sink frames (package
// sink's rule, kept by every sink): empty JSON or JSON spanning lines.
func checkBatch(batch []sink.Record) error {
	for i, r := range batch {
		switch {
		case len(r.JSON) == 0:
			return fmt.Errorf("record %d (id %q): empty JSON: %w", i, r.ID, sink.ErrBadRecord)
		case bytes.ContainsAny(r.JSON, "\r\n"):
			return fmt.Errorf("record %d (id %q): JSON spans lines: %w", i, r.ID, sink.ErrBadRecord)
		}
	}
	return nil
}

var _ sink.Sink = (*Sink)(nil)
