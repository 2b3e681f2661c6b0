package daemon

import (
	"cmp"
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/consumer"
	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/kafkainput"
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
func buildInputs(o Options, proc intake.Processor, dec *decrypt.Decryptor) ([]input, error) {
	cfg := o.Config
	if o.Registry != nil {
		// Which input this replica runs, for dashboards that show the
		// source-neutral metrics by input (one input per process, so no
		// label on every series).
		info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "decryptd_input_info",
			Help: "1 for the input this replica runs (input.type: mqtt or kafka).",
		}, []string{"input"})
		info.WithLabelValues(cmp.Or(cfg.Input.Type, config.InputMQTT)).Set(1)
		if err := o.Registry.Register(info); err != nil {
			return nil, fmt.Errorf("input metrics: %w", err)
		}
	}
	switch cfg.Input.Type {
	case config.InputMQTT, "":
		c, err := newMQTTInput(o, proc)
		if err != nil {
			return nil, err
		}
		return []input{{name: config.InputMQTT, Input: c}}, nil
	case config.InputKafka:
		k, err := newKafkaInput(o, proc, dec)
		if err != nil {
			return nil, err
		}
		return []input{{name: config.InputKafka, Input: k}}, nil
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
		MaxInFlight: m.MaxInFlight, MaxInFlightBytes: m.MaxInFlightBytes, Workers: m.Workers, Connections: m.Connections,
		UnsubscribeOnShutdown: m.UnsubscribeOnShutdown,
		ShutdownTimeout:       o.Config.ShutdownTimeout,
		Logger:                o.Logger, Registerer: o.Registry,
	}, proc)
}

// newKafkaInput is the Kafka consumer group configured by the kafka
// section (TLS and SASL as for the kafka sink); the device id of each
// message is read from its MQTT topic with decrypt.topic_pattern, and the
// decryptor's replay window is rebuilt from the log of every partition
// assigned.
func newKafkaInput(o Options, proc intake.Processor, dec *decrypt.Decryptor) (*kafkainput.Input, error) {
	k := o.Config.Kafka
	copts, err := k.Conn().ClientOptions(k.ClientID, o.env)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	var win kafkainput.Window
	if dec != nil {
		win = rememberer{dec}
	}
	return kafkainput.New(kafkainput.Options{
		ClientOptions: copts, Group: k.Group, Topics: k.Topics,
		TopicFrom: k.TopicFrom, TopicHeader: k.TopicHeader, TopicTemplate: k.TopicTemplate,
		TopicPattern: o.Config.Decrypt.TopicPattern,
		MaxInFlight:  k.MaxInFlight, MaxInFlightBytes: k.MaxInFlightBytes, Workers: k.Workers,
		CommitInterval: k.CommitInterval,
		Window:         win, ReplayLookback: k.ReplayLookback, ReplayMaxAge: o.Config.Decrypt.ReplayWindowAge,
		ReplayRebuildTimeout: k.ReplayRebuildTimeout, ReplayRebuildWorkers: k.ReplayRebuildWorkers,
		SessionTimeout: k.SessionTimeout, RebalanceTimeout: k.RebalanceTimeout,
		ShutdownTimeout: o.Config.ShutdownTimeout,
		Logger:          o.Logger, Registerer: o.Registry,
	}, proc)
}

// rememberer is the decryptor's replay window as the Kafka input rebuilds
// it: an answer about the message (remembered, a repeat, a failure) is
// final, a key fault or an ended context is retried.
type rememberer struct{ d *decrypt.Decryptor }

func (r rememberer) Remember(ctx context.Context, m intake.Message) error {
	if err := r.d.Remember(ctx, m); decrypt.IsRetryable(err) {
		return err
	}
	return nil
}
