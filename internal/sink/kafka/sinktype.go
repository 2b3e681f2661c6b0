package kafka

import (
	"context"

	"github.com/decryptd/decryptd/internal/sink"
)

// SinkType registers the kafka sink type (package sinktypes).
func SinkType() sink.Type {
	return sink.Type{Name: Type, NewConfig: func() sink.Config { return &Config{} }}
}

// Defaults leaves everything as written (client_id defaults at New).
func (c *Config) Defaults() {}

// Validate checks the keys without touching the network or the files
// named, naming each key at fault relative to the sink's entry.
func (c *Config) Validate(sink.Env) error {
	var p sink.Problems
	for _, pr := range c.Problems() {
		p.Add(pr.Key, "%s", pr.Text)
	}
	return p.Err()
}

// ResolvePaths makes the TLS files and the secret file absolute.
func (c *Config) ResolvePaths(abs func(*string)) {
	abs(&c.TLS.CAFile)
	abs(&c.TLS.CertFile)
	abs(&c.TLS.KeyFile)
	abs(&c.SASL.SecretFile)
}

// New starts the producer of the sink called name (client id: the one the
// daemon derives for the sink unless client_id is set).
func (c *Config) New(ctx context.Context, name string, env sink.Env) (sink.Sink, error) {
	cfg := *c
	cfg.Name = name
	if cfg.ClientID == "" {
		cfg.ClientID = env.ClientID
	}
	return New(ctx, cfg)
}
