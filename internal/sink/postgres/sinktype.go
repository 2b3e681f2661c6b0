package postgres

import (
	"context"

	"github.com/decryptd/decryptd/internal/sink"
)

// SinkType registers the postgres sink type (package sinktypes).
func SinkType() sink.Type {
	return sink.Type{Name: Type, NewConfig: func() sink.Config { return &Config{} }}
}

// Defaults leaves everything as written (table and timescale default at
// New).
func (c *Config) Defaults() {}

// Validate checks the keys without connecting, naming each key at fault
// relative to the sink's entry.
func (c *Config) Validate(sink.Env) error {
	var p sink.Problems
	for _, pr := range c.Problems() {
		p.Add(pr.Key, "%s", pr.Text)
	}
	return p.Err()
}

// New connects, migrates and returns the sink called name.
func (c *Config) New(ctx context.Context, name string, _ sink.Env) (sink.Sink, error) {
	cfg := *c
	cfg.Name = name
	return New(ctx, cfg)
}
