// Package sinktypes lists the sink types decryptd can build: the one place
// a new sink type is registered. A sink type is a package (or a file of
// package sink) with its typed configuration (sink.Config: YAML keys,
// Defaults, Validate naming fields, New) and a sink.Type; adding one is its
// package plus one line below.
//
// The configuration decodes each sinks entry with this registry
// (config.Parse, config.Load), and the daemon builds sinks with it; tests
// pass their own (config.ParseWith, daemon.Options.SinkTypes).
package sinktypes

import (
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/sink/kafka"
	"github.com/decryptd/decryptd/internal/sink/mqttsink"
	"github.com/decryptd/decryptd/internal/sink/postgres"
)

// Types returns every sink type, in the order configuration errors list
// them.
func Types() []sink.Type {
	return []sink.Type{
		sink.FileType(),
		sink.StdoutType(),
		mqttsink.Type(),
		sink.HTTPType(),
		kafka.SinkType(),
		postgres.SinkType(),
	}
}

// Registry returns a registry of Types.
func Registry() *sink.Registry {
	r, err := sink.NewRegistry(Types()...)
	if err != nil {
		// Types is a fixed list; TestRegistry keeps it valid.
		panic(err)
	}
	return r
}
