package decrypt

import (
	"encoding/binary"
	"encoding/hex"
	"strconv"
	"time"
	"unicode/utf8"
)

// Record is one decrypted message, as the spec's "decrypted record".
// Strings and byte slices are the caller's: Open never reuses them.
type Record struct {
	// ID is the record's stable id: lowercase hex SHA-256 of key_id 0x00
	// key_version 0x00 nonce of the first sealed value, or of the payload
	// for a shape B message without sealed values.
	ID       string
	DeviceID string
	// Timestamp is the message's timestamp as sent (seconds, or milliseconds
	// above 10^11). Its decimal text is exactly the text of the message:
	// the spec allows no sign, fraction, exponent or leading zero.
	Timestamp int64
	// KeyID and KeyVersion name the DEK that opened the message; both are
	// empty for a shape B message with no sealed value (no key was used).
	KeyID      string
	KeyVersion string
	Topic      string
	ReceivedAt time.Time
	// Metadata is the shape A metadata object less device_id and timestamp
	// (raw JSON, "{}" when nothing else was there); nil for shape B.
	Metadata []byte
	// Data is the plaintext readings (shape A), or the message with its
	// sealed fields replaced by their plaintext values, less device_id,
	// timestamp, key_version and key_id (shape B). Raw JSON: numbers keep
	// their exact text.
	Data []byte
	// Sealed names the values of Data that arrived encrypted, as RFC 6901
	// pointers relative to Data: "" (the whole of Data) for shape A, each
	// sealed field's pointer for shape B, nil when nothing was sealed. A
	// per-sink field policy uses it (package fieldpolicy). Shared and
	// read-only: never modify it.
	Sealed []string

	// Replay-window entries this record was accepted under, for Forget.
	rk0    replayKey
	rkN    int
	rkMore []replayKey
}

// Time returns the timestamp as a time, reading values above 10^11 as
// milliseconds as the spec says.
func (r *Record) Time() time.Time { return timestampTime(r.Timestamp) }

func timestampTime(ts int64) time.Time {
	if ts > 1e11 {
		return time.UnixMilli(ts).UTC()
	}
	return time.Unix(ts, 0).UTC()
}

func (r *Record) replayKeys() []replayKey {
	switch r.rkN {
	case 0:
		return nil
	case 1:
		return []replayKey{r.rk0}
	}
	return r.rkMore
}

// AppendJSON appends the spec's record object to dst: id, device_id,
// timestamp, key_id and key_version (when a key was used), topic,
// received_at (RFC 3339 with nanoseconds, UTC), metadata (shape A) and
// data. Metadata and Data are copied as they are, so numbers keep their
// text.
func (r *Record) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"id":"`...)
	dst = append(dst, r.ID...)
	dst = append(dst, `","device_id":`...)
	dst = appendJSONString(dst, r.DeviceID)
	dst = append(dst, `,"timestamp":`...)
	dst = strconv.AppendInt(dst, r.Timestamp, 10)
	if r.KeyVersion != "" {
		dst = append(dst, `,"key_id":`...)
		dst = appendJSONString(dst, r.KeyID)
		dst = append(dst, `,"key_version":`...)
		dst = appendJSONString(dst, r.KeyVersion)
	}
	dst = append(dst, `,"topic":`...)
	dst = appendJSONString(dst, r.Topic)
	dst = append(dst, `,"received_at":"`...)
	dst = r.ReceivedAt.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, '"')
	if r.Metadata != nil {
		dst = append(dst, `,"metadata":`...)
		dst = append(dst, r.Metadata...)
	}
	dst = append(dst, `,"data":`...)
	if r.Data == nil {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, r.Data...)
	}
	return append(dst, '}')
}

// appendJSONString writes s as a JSON string. Invalid UTF-8 (a topic is
// the broker's, not validated here) becomes U+FFFD so the output is always
// valid JSON.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r != utf8.RuneError || n != 1 {
				i += n
				continue
			}
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, `\u00`...)
			dst = hex.AppendEncode(dst, []byte{c})
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// hexEncode writes the lowercase hex of src (a multiple of four bytes) to
// dst (twice as long), as encoding/hex does, four bytes at a time: the
// nibbles are spread one to a byte lane and turned into digits in all
// lanes at once (SWAR), instead of two table lookups per byte.
func hexEncode(dst, src []byte) {
	_ = dst[2*len(src)-1]
	for i := 0; i+4 <= len(src); i += 4 {
		x := uint64(binary.BigEndian.Uint32(src[i:]))
		x = (x | x<<16) & 0x0000ffff0000ffff
		x = (x | x<<8) & 0x00ff00ff00ff00ff
		x = (x | x<<4) & 0x0f0f0f0f0f0f0f0f
		// Lanes of 10 and more get 'a'-'0'-10 more than '0'.
		gt9 := (x + 0x0606060606060606) >> 4 & 0x0101010101010101
		x += 0x3030303030303030 + gt9*('a'-'0'-10)
		binary.BigEndian.PutUint64(dst[2*i:], x)
	}
}
