package kafka

import (
	"fmt"
	"net"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Conn is the connection part of a Kafka client's configuration: what
// the Kafka sink and the Kafka input (package kafkainput) share, with the
// same keys and the same rules (brokers, tls, allow_plaintext, sasl).
type Conn struct {
	Brokers        []string
	TLS            TLS
	AllowPlaintext bool
	SASL           SASL
}

// Conn returns c's connection settings.
func (c Config) Conn() Conn {
	return Conn{Brokers: c.Brokers, TLS: c.TLS, AllowPlaintext: c.AllowPlaintext, SASL: c.SASL}
}

// Problems lists what is wrong with the connection settings, one problem
// per key, named relative to the section ("sasl.mechanism").
func (c Conn) Problems() []Problem {
	var ps []Problem
	add := func(key, format string, a ...any) { ps = append(ps, Problem{key, fmt.Sprintf(format, a...)}) }
	if len(c.Brokers) == 0 {
		add("brokers", "at least one host:port required")
	}
	for i, b := range c.Brokers {
		if _, port, err := net.SplitHostPort(b); err != nil || port == "" {
			add(fmt.Sprintf("brokers[%d]", i), "want host:port, got %q", b)
		}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		add("tls", "cert_file and key_file go together")
	}
	if c.AllowPlaintext && c.TLS != (TLS{}) {
		add("allow_plaintext", "set together with tls")
	}
	s := c.SASL
	switch s.Mechanism {
	case "":
		if s != (SASL{}) {
			add("sasl.mechanism", "required when sasl is set")
		}
		return ps
	case MechPlain, MechScramSHA512:
		if s.Username == "" {
			add("sasl.username", "required for %s", s.Mechanism)
		}
	case MechOAuthBearer:
		if s.Username != "" {
			add("sasl.username", "not used by oauthbearer")
		}
	default:
		add("sasl.mechanism", "%q: want plain, scram-sha-512 or oauthbearer", s.Mechanism)
	}
	if (s.SecretFile == "") == (s.SecretEnv == "") {
		add("sasl", "exactly one of secret_file and secret_env (the secret is never written in the configuration)")
	}
	return ps
}

// ClientOptions are the franz-go options that connect as c says: the seed
// brokers, the client id, TLS (loaded now; unless AllowPlaintext) and the
// SASL mechanism (its secret read at each authentication from the file,
// or looked up with getenv; nil means os.LookupEnv). It does not validate
// c: call Problems first.
func (c Conn) ClientOptions(clientID string, getenv func(string) (string, bool)) ([]kgo.Opt, error) {
	if getenv == nil {
		getenv = lookupEnv
	}
	opts := []kgo.Opt{kgo.SeedBrokers(c.Brokers...), kgo.ClientID(clientID)}
	if !c.AllowPlaintext {
		tc, err := tlsConfig(c.TLS)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	if m := mechanism(c.SASL, getenv); m != nil {
		opts = append(opts, kgo.SASL(m))
	}
	return opts, nil
}
