package intake

import (
	"context"
	"time"
)

// Message is one message as an input received it and hands it to the
// Processor. The Processor must not modify Payload, and may use it only
// until it calls done.
type Message struct {
	// Source names the input kind that received the message ("mqtt",
	// "kafka"). Dead letters keep it, and replay hands it back.
	Source string
	// Topic is where the message was published: an MQTT topic, or, for an
	// input that carries MQTT messages (a Kafka bridge), the MQTT topic it
	// carries. Dead letters keep it, and replay hands it back.
	Topic string
	// DeviceID is the device the input determined sent the message (the
	// MQTT input reads it from the topic through a TopicPattern); empty
	// when the input cannot tell. The decryptor refuses a message whose
	// own device_id differs (topic_mismatch).
	DeviceID string
	Payload  []byte
	// Redelivered is set when the source says it may have delivered the
	// message before (MQTT's DUP flag, a Kafka offset at or below the last
	// committed one after a rebalance).
	Redelivered bool
	// ReceivedAt is when the input received it; zero means "now" to
	// whoever needs a time.
	ReceivedAt time.Time
	// Position is where the message sits in a log input's partitioned log
	// (the Kafka input: the record's topic, partition and offset); zero
	// for an input without one (MQTT). Dead letters and the key-pending
	// spool keep it, and replay hands it back, so a message is traced to
	// its record however often it is dead-lettered again.
	Position LogPosition
}

// LogPosition is a message's place in a partitioned log (a Kafka record's
// topic, partition and offset). Topic may share its storage with the
// input's client (the Kafka input passes the record's own topic string):
// the value costs no allocation per message. The zero LogPosition (Topic
// empty; a log topic is never empty) means "none".
type LogPosition struct {
	Topic     string
	Partition int32
	Offset    int64
}

// IsZero reports whether p is the zero LogPosition (no position).
func (p LogPosition) IsZero() bool { return p.Topic == "" }

// Processor takes messages to their destinations.
//
// Process starts taking m there and calls done exactly once: nil when m
// may be acknowledged (every sink, or the dead-letter sink, holds it, or it
// is a known duplicate), non-nil only when ctx ended (m is never
// acknowledged and the source redelivers it). done is the input's
// acknowledgement hook. Process retries transient failures itself. It may
// return before calling done (the message is then on its way, e.g. in a
// sink's next batch) and may block meanwhile (a key being loaded); done may
// run on any goroutine and must not block.
//
// TryProcess is Process for an input's own intake goroutine, which must not
// block: it returns false, having done nothing, when m would have to wait,
// and the input then calls Process on a goroutine that may wait.
//
// Calls for messages of one topic never overlap and come in receive order,
// so whatever a Processor hands on during a call keeps that order; calls
// for different topics run concurrently.
type Processor interface {
	Process(ctx context.Context, m Message, done func(error))
	TryProcess(ctx context.Context, m Message, done func(error)) bool
}

// Input receives messages from one source and hands them to a Processor
// (given at construction).
type Input interface {
	// Run connects and receives until ctx ends or Shutdown is called; when
	// ctx ends it shuts down gracefully within the input's own bound and
	// returns that shutdown's error. Source outages are retried, not
	// errors. Call it once.
	Run(ctx context.Context) error
	// Ready reports whether the input is connected and receiving (what
	// /readyz reports, together with the other inputs).
	Ready() bool
	// Shutdown stops receiving, lets in-flight messages finish and
	// acknowledges them, and disconnects, all within ctx; what is
	// unfinished at ctx's end stays unacknowledged. Safe to call more than
	// once and concurrently with Run.
	Shutdown(ctx context.Context) error
}
