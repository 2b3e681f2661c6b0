package daemon

import (
	"fmt"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/consumer"
	"github.com/decryptd/decryptd/internal/intake"
)

// input is one of the daemon's inputs with the name its errors, logs and
// /readyz carry.
type input struct {
	name string
	intake.Input
}

// buildInputs makes the inputs input.type names, each handing its messages
// to proc. The daemon runs, readies and shuts down every input alike; an
// input type is one case here and its own package.
func buildInputs(o Options, proc intake.Processor) ([]input, error) {
	cfg := o.Config
	switch cfg.Input.Type {
	case config.InputMQTT, "":
		c, err := newMQTTInput(o, proc)
		if err != nil {
			return nil, err
		}
		return []input{{name: config.InputMQTT, Input: c}}, nil
	default:
		return nil, fmt.Errorf("input.type %q: not supported", cfg.Input.Type)
	}
}

// newMQTTInput is the MQTT consumer configured by the mqtt section; the
// device id of each message is read from its topic with
// decrypt.topic_pattern.
func newMQTTInput(o Options, proc intake.Processor) (*consumer.Consumer, error) {
	m := o.Config.MQTT
	tc, err := tlsConfig(m.TLS)
	if err != nil {
		return nil, fmt.Errorf("mqtt.tls: %w", err)
	}
	return consumer.New(consumer.Options{
		Brokers: m.Brokers, ClientID: m.ClientID, Topics: m.Topics, SharedGroup: m.SharedGroup,
		TopicPattern: o.Config.Decrypt.TopicPattern,
		TLS:          tc, AllowPlainTCP: m.AllowPlaintext,
		KeepAlive: m.KeepAlive, ConnectTimeout: m.ConnectTimeout,
		MaxInFlight: m.MaxInFlight, MaxInFlightBytes: m.MaxInFlightBytes, Workers: m.Workers,
		UnsubscribeOnShutdown: m.UnsubscribeOnShutdown,
		ShutdownTimeout:       o.Config.ShutdownTimeout,
		Logger:                o.Logger, Registerer: o.Registry,
	}, proc)
}
