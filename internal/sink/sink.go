package sink

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/decryptd/decryptd/internal/intake"
)

// ErrClosed is returned by Write (and Flush) on a sink that was closed.
var ErrClosed = errors.New("sink closed")

// ErrBadRecord means a record can never be written as it is: empty JSON,
// JSON spanning lines (every sink's medium is line- or message-framed), or a
// field the sink needs that it cannot use (an MQTT topic level with a
// wildcard). It is permanent: retrying the same batch fails again. A sink
// checks the whole batch before writing any of it.
var ErrBadRecord = errors.New("bad record")

// Record is what a sink receives: one JSON object, already encoded, plus the
// few fields a sink may need without parsing it (a Kafka sink keys by
// device, every sink may drop a record whose ID it already holds).
type Record struct {
	ID       string // stable across redeliveries (spec: record id)
	DeviceID string
	JSON     []byte // one JSON object, no trailing newline

	// KeyID and KeyVersion name the DEK that opened the record (empty when
	// none did), for sinks that carry them outside the JSON (Kafka
	// headers, PostgreSQL columns).
	KeyID, KeyVersion string
	// Sealed lists the values of the record's "data" member that arrived
	// encrypted, as RFC 6901 pointers relative to it ("" is the whole of
	// data), for a field policy's default for encrypted fields. Shared and
	// read-only.
	Sealed []string
}

// Sink is a destination for records. Write returns nil only once the sink
// holds every record of the batch (to the durability its policy promises);
// the caller acknowledges the messages behind them only then. A Write error
// means none of the batch may be considered held; the caller retries the
// whole batch, so sinks must tolerate repeats (records carry a stable ID).
//
// Write, Flush and Close are never called concurrently on one sink. Write
// must neither modify batch nor keep it (or the slice) after it returns:
// the pipeline hands over its own queue, which it reuses and retries from.
type Sink interface {
	Name() string
	Write(ctx context.Context, batch []Record) error
	// Flush forces buffered data down to the sink's durable medium.
	Flush(ctx context.Context) error
	Close(ctx context.Context) error
}

// GroupWriter is a Sink whose Write ends with a step that makes the batch
// durable (a file's fsync), and that can leave that step out, so that a
// caller holding several batches at once makes them durable with one step
// instead of one per batch. WriteUnsynced writes a batch as Write does,
// except for that step; Sync then makes every batch written with
// WriteUnsynced since the last Write or Sync as durable as Write would
// have. A record written with WriteUnsynced is held only once a Sync after
// it returns nil: when WriteUnsynced or Sync fails, none of the batches
// since the last successful Write or Sync may be considered held (write
// them again, with Write; a failed fsync is not cured by a later one that
// succeeds). Like Write, they are never called concurrently with the
// sink's other methods.
type GroupWriter interface {
	Sink
	WriteUnsynced(ctx context.Context, batch []Record) error
	Sync(ctx context.Context) error
}

// DeadLetter is one message that could not be decrypted, kept exactly as
// received so it can be replayed once the cause is fixed: the message and
// why. Its Topic, Payload, Redelivered flag, ReceivedAt, Source (the line's
// "input") and Position (the line's "kafka": the Kafka record it came
// from) are kept; DeviceID is not, replay determines the device id again.
type DeadLetter struct {
	Reason string
	Error  string // text without secrets
	intake.Message
}

// deadLetterJSON is a dead letter's line, field order and names fixed
// (testdata/deadletter*.golden.json): replay reads it back. The fields
// after payload_b64 are omitted when empty, so a line without them is what
// it was before they existed.
type deadLetterJSON struct {
	Reason     string    `json:"reason"`
	Error      string    `json:"error"`
	Topic      string    `json:"topic"`
	ReceivedAt time.Time `json:"received_at"`
	Dup        bool      `json:"dup"`
	Payload    []byte    `json:"payload_b64"` // encoding/json writes []byte as standard base64
	// Input is the message's Source ("mqtt", "kafka").
	Input string `json:"input,omitempty"`
	// Kafka is the message's Position: the record of the Kafka input it
	// came from; nil for a message without one.
	Kafka *logPositionJSON `json:"kafka,omitempty"`
}

// logPositionJSON is an intake.LogPosition in a dead-letter line.
type logPositionJSON struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
}

func positionJSON(p intake.LogPosition) *logPositionJSON {
	if p.IsZero() {
		return nil
	}
	return &logPositionJSON{Topic: p.Topic, Partition: p.Partition, Offset: p.Offset}
}

// position is the intake.LogPosition of l, zero for nil or a topic-less
// one.
func (l *logPositionJSON) position() intake.LogPosition {
	if l == nil || l.Topic == "" {
		return intake.LogPosition{}
	}
	return intake.LogPosition{Topic: l.Topic, Partition: l.Partition, Offset: l.Offset}
}

// MarshalJSON writes the dead-letter line (without DeviceID).
func (d DeadLetter) MarshalJSON() ([]byte, error) {
	return json.Marshal(deadLetterJSON{Reason: d.Reason, Error: d.Error, Topic: d.Topic, ReceivedAt: d.ReceivedAt, Dup: d.Redelivered, Payload: d.Payload,
		Input: d.Source, Kafka: positionJSON(d.Position)})
}

// UnmarshalJSON reads a dead-letter line leniently (missing fields stay
// zero); ReadDeadLetters is the strict reader.
func (d *DeadLetter) UnmarshalJSON(b []byte) error {
	var l deadLetterJSON
	if err := json.Unmarshal(b, &l); err != nil {
		return err
	}
	*d = DeadLetter{Reason: l.Reason, Error: l.Error, Message: intake.Message{Source: l.Input, Topic: l.Topic, ReceivedAt: l.ReceivedAt, Redelivered: l.Dup, Payload: l.Payload,
		Position: l.Kafka.position()}}
	return nil
}
