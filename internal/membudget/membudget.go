package membudget

import (
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/consumer"
	"github.com/decryptd/decryptd/internal/kafkainput"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/sink/postgres"
)

// Terms of the budget (the figures are the formula's; deploy/README.md
// explains each).
const (
	// BaseBytes is the process without load: Go runtime, TLS, the MQTT
	// client, metrics, the pipeline's pooled buffers (the idle daemon is
	// 30-40 MiB RSS in BENCHMARKS.md).
	BaseBytes = 64 << 20
	// MessageCopies is how many times a message held in flight is in
	// memory at most, beside the per-sink encodings: as received (the
	// payload), then either the decryption's scratch (base64-decoded
	// ciphertext opened in place, and for field-level messages the
	// rebuilt data) or the record's plaintext data, and the record's JSON
	// line that every sink without a field policy shares. A dead letter
	// is the payload and its JSON line with the payload in base64 (4/3),
	// fewer.
	MessageCopies = 3
	// MessageSlack is added to decrypt.max_message_bytes for a message's
	// share of the count bound (mqtt.max_in_flight): the consumer's
	// per-message overhead and a topic.
	MessageSlack = consumer.MessageOverhead + 1024
	// ReadCopies: messages the MQTT client holds that admission has not
	// counted yet. paho passes each packet through a chain of unbuffered
	// hand-offs between goroutines (the reader, its incoming logic, the
	// comms relay, the client's relay to the router): while the handler
	// waits for room with one message, up to four more sit in that chain,
	// the one being read twice (its packet buffer and its payload's copy).
	ReadCopies = 6
	// KafkaFetchCopies: what one fetch response the Kafka input's client
	// holds (kafkainput.ConcurrentFetches of them, each at most
	// kafkainput.FetchMaxBytes) may take in memory, in multiples of its
	// size: its batches decompressed (up to 2.5 times the compressed
	// bytes for JSON telemetry whose bulk is base64 ciphertext) and the
	// records' headers (each record's struct, key and header slices).
	KafkaFetchCopies = 3
	// DefaultConnectionsBound bounds the connections mqtt.connections 0
	// can mean (consumer.DefaultConnections: GOMAXPROCS/2, at most 4; 8,
	// its earlier maximum, leaves room): the budget may not depend on the
	// machine it runs on.
	DefaultConnectionsBound = 8
	// CachedDEKBytes bounds one cached DEK version (1,414 B RSS measured
	// in BENCHMARKS.md, bound 1,536 B).
	CachedDEKBytes = 1536
	// ReplayEntryBytes is one replay-window entry (config.example.yaml).
	ReplayEntryBytes = 64
	// LimitHeadroom: the container's memory limit is the budget times
	// this, so the garbage collector, working to GOMEMLIMIT, has room, and
	// memory outside the Go heap (stacks, fragmentation) fits.
	LimitHeadroom = 1.25
	// LimitStep rounds the limit up.
	LimitStep = 64 << 20
)

// SinkCopies is how many copies of the batch it writes a sink of each type
// makes, at most, beyond the records the pipeline holds: a file or stdout
// sink one buffer of lines, an HTTP sink one request body, an MQTT sink
// one encoded packet per record, a Kafka sink its arena of keys and values
// plus the client's encoded (and compressed) produce requests, a
// PostgreSQL sink the data columns, the COPY stream's buffers and, with
// typed columns, each record decoded (encoding/json into maps, several
// times the text). A type not listed counts DefaultSinkCopies.
var SinkCopies = map[string]int{
	"file":     1,
	"stdout":   2, // the pretty format re-encodes
	"http":     1,
	"mqtt":     1,
	"kafka":    3,
	"postgres": 4,
}

// DefaultSinkCopies is SinkCopies for a sink type it does not list.
const DefaultSinkCopies = 4

// Terms is the budget, term by term, in bytes.
type Terms struct {
	// Base is BaseBytes.
	Base int64
	// InFlight is the bytes of messages in flight, the smaller of
	// mqtt.max_in_flight_bytes and mqtt.max_in_flight x
	// (decrypt.max_message_bytes + MessageSlack), times MessageCopies plus
	// one per sink with a field policy (its own encoding of each record).
	// With the Kafka input (input.type kafka), whose byte bound counts
	// record values only, the smaller of kafka.max_in_flight_bytes +
	// kafka.max_in_flight x MessageSlack and kafka.max_in_flight x
	// (decrypt.max_message_bytes + MessageSlack), times the same copies.
	InFlight int64
	// Reading is ReadCopies x decrypt.max_message_bytes per MQTT
	// connection (mqtt.connections, 0 counting DefaultConnectionsBound):
	// packets each connection's client holds before admission. With the
	// Kafka input it is 2 x KafkaFetchCopies x kafkainput.ConcurrentFetches
	// x kafkainput.FetchMaxBytes(kafka.max_in_flight_bytes), the fetch
	// responses its group client and its replay rebuild's reader hold,
	// plus one FetchMaxBytes of read-back values the rebuild queues.
	Reading int64
	// Batches is, for each sink and the dead-letter sink, its SinkCopies x
	// the largest batch it writes: batch.max_bytes, or a record larger
	// than that written alone (at most 2 x decrypt.max_message_bytes, a
	// dead letter's JSON).
	Batches int64
	// Cache is cache.max_entries x CachedDEKBytes.
	Cache int64
	// Replay is decrypt.replay_window_entries x ReplayEntryBytes.
	Replay int64
}

// Total is the budget: the sum of the terms.
func (t Terms) Total() int64 {
	return t.Base + t.InFlight + t.Reading + t.Batches + t.Cache + t.Replay
}

// Of computes the budget of a validated configuration (defaults applied).
func Of(c *config.Config) Terms {
	msg := int64(c.Decrypt.MaxMessageBytes)
	held := min(c.MQTT.MaxInFlightBytes, int64(c.MQTT.MaxInFlight)*(msg+MessageSlack))
	reading := ReadCopies * msg * int64(connections(c))
	if c.Input.Type == config.InputKafka {
		k := c.Kafka
		held = min(int64(k.MaxInFlightBytes)+int64(k.MaxInFlight)*MessageSlack, int64(k.MaxInFlight)*(msg+MessageSlack))
		// The group client's fetch responses, and while partitions are
		// assigned the replay rebuild's reader's as many, with the
		// read-back values it queues (one response's worth).
		fetch := int64(kafkainput.FetchMaxBytes(k.MaxInFlightBytes))
		reading = 2*KafkaFetchCopies*kafkainput.ConcurrentFetches*fetch + fetch
	}
	copies := int64(MessageCopies)
	for _, s := range c.Sinks {
		if s.Policy != nil {
			copies++
		}
	}
	batch := max(int64(c.Batch.MaxBytes), 2*msg)
	var batches int64
	for _, s := range c.Sinks {
		batches += int64(sinkCopies(s)) * batch
	}
	batches += int64(deadLetterCopies(c.DeadLetter)) * batch
	return Terms{
		Base:     BaseBytes,
		InFlight: held * copies,
		Reading:  reading,
		Batches:  batches,
		Cache:    int64(c.Cache.MaxEntries) * CachedDEKBytes,
		Replay:   int64(c.Decrypt.ReplayWindowEntries) * ReplayEntryBytes,
	}
}

func connections(c *config.Config) int {
	if c.MQTT.Connections > 0 {
		return c.MQTT.Connections
	}
	return DefaultConnectionsBound
}

func sinkCopies(s config.Sink) int {
	n, ok := SinkCopies[s.Type]
	if !ok {
		return DefaultSinkCopies
	}
	switch cfg := s.Config.(type) {
	case *sink.StdoutConfig:
		if cfg.Format != "pretty" {
			n = 1
		}
	case *postgres.Config:
		if len(cfg.Columns) == 0 {
			n = 2
		}
	}
	return n
}

func deadLetterCopies(d config.DeadLetter) int {
	if n, ok := SinkCopies[d.Type]; ok {
		return n
	}
	return DefaultSinkCopies
}

// Budget is Of(c).Total(): what the configuration lets decryptd hold, in
// bytes.
func Budget(c *config.Config) int64 { return Of(c).Total() }

// GoMemLimitMiB is the budget rounded up to whole MiB: the process's
// GOMEMLIMIT (GOMEMLIMIT=<n>MiB).
func GoMemLimitMiB(c *config.Config) int64 {
	return (Budget(c) + (1<<20 - 1)) >> 20
}

// ContainerLimit is the container's memory limit (and request) in bytes:
// the budget times LimitHeadroom, rounded up to LimitStep.
func ContainerLimit(c *config.Config) int64 {
	l := int64(float64(Budget(c)) * LimitHeadroom)
	return (l + LimitStep - 1) / LimitStep * LimitStep
}
