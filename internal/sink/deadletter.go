package sink

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"time"

	"github.com/decryptd/decryptd/internal/intake"
)

// ErrBadDeadLetter marks a dead-letter line that cannot be decoded; the
// error's text names the line number.
var ErrBadDeadLetter = errors.New("bad dead letter")

// MaxDeadLetterLine bounds one dead-letter line for ReadDeadLetters: the
// largest message the daemon accepts (256 KiB by default) in base64, plus
// the other fields, with room to spare.
const MaxDeadLetterLine = 1 << 20

// Record turns the dead letter into a Record, so that a dead-letter stream
// is just a Sink (file or mqtt) fed with these. ID is the lowercase hex
// SHA-256 of the payload, stable across redeliveries of the same message;
// DeviceID is empty (a dead letter's device is not trusted).
func (d DeadLetter) Record() Record {
	sum := sha256.Sum256(d.Payload)
	b, err := json.Marshal(d)
	if err != nil {
		// Only a ReceivedAt outside years 0-9999 makes encoding/json fail;
		// the payload matters more than a nonsense timestamp.
		d.ReceivedAt = time.Time{}
		b, _ = json.Marshal(d)
	}
	return Record{ID: hex.EncodeToString(sum[:]), JSON: b}
}

// deadLetterLine is what ReadDeadLetters accepts: payload_b64 is required,
// and a topic or a kafka position (pointers tell missing from empty); the
// rest optional, unknown fields ignored.
type deadLetterLine struct {
	Reason     string           `json:"reason"`
	Error      string           `json:"error"`
	Topic      *string          `json:"topic"`
	ReceivedAt *time.Time       `json:"received_at"`
	Dup        bool             `json:"dup"`
	Payload    *[]byte          `json:"payload_b64"`
	Input      string           `json:"input"`
	Kafka      *logPositionJSON `json:"kafka"`
}

// ReadDeadLetters decodes dead letters from r, one JSON object per line (as
// written by a dead-letter sink). payload_b64 is required, and a non-empty
// topic unless the line names its Kafka record ("kafka" with a non-empty
// topic: a record of the Kafka input that could not be mapped to an MQTT
// topic is dead-lettered without one); dup, reason, error, received_at,
// input and kafka are optional (a "kafka" without a topic counts as none);
// unknown fields are ignored; blank lines are skipped.
//
// A line that cannot be decoded yields an error wrapping ErrBadDeadLetter
// and naming its line number; iteration then goes on with the next line, so
// a caller may skip bad lines or stop (break). A read error from r yields
// that error and ends the iteration. Errors never quote the line (it may
// hold a payload).
func ReadDeadLetters(r io.Reader) iter.Seq2[DeadLetter, error] {
	return func(yield func(DeadLetter, error) bool) {
		br := bufio.NewReaderSize(r, 64<<10)
		var line []byte
		for n := 1; ; n++ {
			line = line[:0]
			tooLong := false
			var err error
			for {
				var frag []byte
				frag, err = br.ReadSlice('\n')
				if !tooLong {
					if len(line)+len(frag) > MaxDeadLetterLine+2 { // +2: "\r\n"
						tooLong = true
						line = line[:0]
					} else {
						line = append(line, frag...)
					}
				}
				if !errors.Is(err, bufio.ErrBufferFull) {
					break
				}
			}
			if err != nil && !errors.Is(err, io.EOF) {
				yield(DeadLetter{}, fmt.Errorf("dead letters: line %d: read: %w", n, err))
				return
			}
			eof := err != nil
			switch {
			case tooLong:
				if !yield(DeadLetter{}, fmt.Errorf("dead letters: line %d: longer than %d bytes: %w", n, MaxDeadLetterLine, ErrBadDeadLetter)) {
					return
				}
			case len(bytes.TrimSpace(line)) > 0:
				d, derr := decodeDeadLetter(line)
				if derr != nil {
					derr = fmt.Errorf("dead letters: line %d: %w: %w", n, ErrBadDeadLetter, derr)
				}
				if !yield(d, derr) {
					return
				}
			}
			if eof {
				return
			}
		}
	}
}

func decodeDeadLetter(line []byte) (DeadLetter, error) {
	var l deadLetterLine
	if err := json.Unmarshal(line, &l); err != nil {
		return DeadLetter{}, jsonErrorWithoutInput(err)
	}
	pos := l.Kafka.position()
	switch {
	case l.Topic == nil && pos.IsZero():
		return DeadLetter{}, errors.New("topic missing (and no kafka position)")
	case l.Topic != nil && *l.Topic == "" && pos.IsZero():
		return DeadLetter{}, errors.New("topic empty (and no kafka position)")
	case l.Payload == nil:
		return DeadLetter{}, errors.New("payload_b64 missing")
	}
	d := DeadLetter{Reason: l.Reason, Error: l.Error, Message: intake.Message{Source: l.Input, Redelivered: l.Dup, Payload: *l.Payload, Position: pos}}
	if l.Topic != nil {
		d.Topic = *l.Topic
	}
	if d.Payload == nil {
		d.Payload = []byte{}
	}
	if l.ReceivedAt != nil {
		d.ReceivedAt = *l.ReceivedAt
	}
	return d, nil
}

// jsonErrorWithoutInput reduces an encoding/json error to text that cannot
// carry the input: a syntax error's message only names the offending
// character, but a type error names the field and the JSON type, and a
// base64 error its offset; none quotes a value. Other errors (from
// time.Time's UnmarshalJSON, which quotes the input) are replaced.
func jsonErrorWithoutInput(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("not JSON at offset %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Errorf("field %s: want %s, got JSON %s", te.Field, te.Type, te.Value)
	default:
		return errors.New("a field has a bad value (payload_b64 not base64, or received_at not RFC 3339)")
	}
}
