package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/decryptd/decryptd/internal/dek"
)

// Prefix starts a sealed field's string value (shape B).
const Prefix = "ENC:AES256:"

// NonceSize is the GCM nonce length the spec fixes.
const NonceSize = 12

// NewAEAD builds the AES-256-GCM cipher for a 32-byte DEK. The caller
// should wipe dek afterwards; the cipher keeps its own expanded key.
func NewAEAD(dek []byte) (cipher.AEAD, error) {
	if len(dek) != 32 {
		return nil, fmt.Errorf("seal: DEK of %d bytes, want 32", len(dek))
	}
	block, err := aes.NewCipher(dek)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return cipher.NewGCM(block)
}

// Envelope names what a message is bound to.
type Envelope struct {
	DeviceID  string
	Timestamp int64 // seconds, or milliseconds (above 10^11); not negative
	// KeyID is written only when set; the spec then implies
	// device/<DeviceID>.
	KeyID      string
	KeyVersion string
}

func (e Envelope) validate() error {
	if !dek.ValidDeviceID(e.DeviceID) {
		return fmt.Errorf("seal: device id %q outside the spec's alphabet or length", e.DeviceID)
	}
	if e.Timestamp < 0 {
		return errors.New("seal: negative timestamp")
	}
	if e.KeyID != "" && !dek.ValidKeyID(e.KeyID) {
		return fmt.Errorf("seal: key id %q outside the spec's alphabet or length", e.KeyID)
	}
	if e.KeyVersion != "" && !dek.ValidKeyVersion(e.KeyVersion) {
		return fmt.Errorf("seal: key version %q outside the spec's alphabet or length", e.KeyVersion)
	}
	return nil
}

// Sealer seals values with nonces drawn from its reader.
type Sealer struct {
	rand io.Reader
}

// New returns a Sealer drawing nonces from random; nil means
// crypto/rand.Reader. Tests inject a deterministic reader.
func New(random io.Reader) *Sealer {
	if random == nil {
		random = rand.Reader
	}
	return &Sealer{rand: random}
}

// PayloadAAD appends the associated data of a whole payload (shape A):
// device_id 0x00 timestamp.
func PayloadAAD(dst []byte, deviceID string, ts int64) []byte {
	dst = append(dst, deviceID...)
	dst = append(dst, 0)
	return strconv.AppendInt(dst, ts, 10)
}

// FieldAAD appends the associated data of one field (shape B):
// device_id 0x00 timestamp 0x00 pointer.
func FieldAAD(dst []byte, deviceID string, ts int64, pointer string) []byte {
	dst = PayloadAAD(dst, deviceID, ts)
	dst = append(dst, 0)
	return append(dst, pointer...)
}

// Pointer returns the RFC 6901 JSON Pointer of the given reference tokens
// (member names as decoded, or array indices in decimal).
func Pointer(tokens ...string) string {
	var b []byte
	for _, t := range tokens {
		b = append(b, '/')
		for i := 0; i < len(t); i++ {
			switch t[i] {
			case '~':
				b = append(b, '~', '0')
			case '/':
				b = append(b, '~', '1')
			default:
				b = append(b, t[i])
			}
		}
	}
	return string(b)
}

// Seal appends SEALED (nonce || ciphertext || tag) of plaintext under aad.
func (s *Sealer) Seal(dst []byte, aead cipher.AEAD, plaintext, aad []byte) ([]byte, error) {
	if aead.NonceSize() != NonceSize {
		return dst, fmt.Errorf("seal: cipher nonce size %d, want %d", aead.NonceSize(), NonceSize)
	}
	n := len(dst)
	dst = append(dst, make([]byte, NonceSize)...)
	if _, err := io.ReadFull(s.rand, dst[n:]); err != nil {
		return dst[:n], fmt.Errorf("seal: nonce: %w", err)
	}
	return aead.Seal(dst, dst[n:n+NonceSize], plaintext, aad), nil
}

// appendSealedText appends SEALED in standard padded base64.
func (s *Sealer) appendSealedText(dst []byte, aead cipher.AEAD, plaintext, aad []byte) ([]byte, error) {
	sealed, err := s.Seal(nil, aead, plaintext, aad)
	if err != nil {
		return dst, err
	}
	return base64.StdEncoding.AppendEncode(dst, sealed), nil
}

// AppendField appends the JSON string "ENC:AES256:<base64 SEALED>" sealing
// value (one JSON value's text, e.g. `"P-0012345"` with its quotes) as the
// field at pointer. Tests use it to build nested or tampered shape B
// messages by hand.
func (s *Sealer) AppendField(dst []byte, aead cipher.AEAD, env Envelope, pointer string, value []byte) ([]byte, error) {
	if err := env.validate(); err != nil {
		return dst, err
	}
	dst = append(dst, '"')
	dst = append(dst, Prefix...)
	dst, err := s.appendSealedText(dst, aead, value, FieldAAD(nil, env.DeviceID, env.Timestamp, pointer))
	if err != nil {
		return dst, err
	}
	return append(dst, '"'), nil
}

// AppendShapeA appends a shape A message: readings (a JSON object, the
// plaintext) sealed whole. metadata is nil or a JSON object whose members
// are passed through in the message's metadata after device_id and
// timestamp (repeating either makes the message malformed, which tests may
// want). KeyVersion is required.
func (s *Sealer) AppendShapeA(dst []byte, aead cipher.AEAD, env Envelope, readings, metadata []byte) ([]byte, error) {
	if err := env.validate(); err != nil {
		return dst, err
	}
	if env.KeyVersion == "" {
		return dst, errors.New("seal: shape A needs a key version")
	}
	if !isObject(readings) {
		return dst, errors.New("seal: readings must be one JSON object")
	}
	var extra []byte
	if metadata != nil {
		if !isObject(metadata) {
			return dst, errors.New("seal: metadata must be one JSON object")
		}
		extra = objectBody(metadata)
	}
	dst = append(dst, `{"encrypted_data":"`...)
	dst, err := s.appendSealedText(dst, aead, readings, PayloadAAD(nil, env.DeviceID, env.Timestamp))
	if err != nil {
		return dst, err
	}
	dst = append(dst, `","key_version":"`...)
	dst = append(dst, env.KeyVersion...)
	dst = append(dst, '"')
	if env.KeyID != "" {
		dst = append(dst, `,"key_id":"`...)
		dst = append(dst, env.KeyID...)
		dst = append(dst, '"')
	}
	dst = append(dst, `,"metadata":{"device_id":"`...)
	dst = append(dst, env.DeviceID...)
	dst = append(dst, `","timestamp":`...)
	dst = strconv.AppendInt(dst, env.Timestamp, 10)
	if len(extra) > 0 {
		dst = append(dst, ',')
		dst = append(dst, extra...)
	}
	return append(dst, "}}"...), nil
}

// Field is one top-level member of a shape B message.
type Field struct {
	Name  string
	Value []byte // one JSON value's text
	Seal  bool   // seal it as an ENC:AES256: string
}

// AppendShapeB appends a shape B message: device_id, timestamp, key_version
// (when set; required if any field is sealed), key_id (when set), then the
// fields in order, the sealed ones bound to their pointer "/<name>".
func (s *Sealer) AppendShapeB(dst []byte, aead cipher.AEAD, env Envelope, fields []Field) ([]byte, error) {
	if err := env.validate(); err != nil {
		return dst, err
	}
	for _, f := range fields {
		switch f.Name {
		case "device_id", "timestamp", "key_version", "key_id":
			return dst, fmt.Errorf("seal: field %q is an envelope member", f.Name)
		}
		if !json.Valid(f.Value) {
			return dst, fmt.Errorf("seal: field %q: value is not one JSON value", f.Name)
		}
		if f.Seal && env.KeyVersion == "" {
			return dst, errors.New("seal: sealed fields need a key version")
		}
	}
	dst = append(dst, `{"device_id":"`...)
	dst = append(dst, env.DeviceID...)
	dst = append(dst, `","timestamp":`...)
	dst = strconv.AppendInt(dst, env.Timestamp, 10)
	if env.KeyVersion != "" {
		dst = append(dst, `,"key_version":"`...)
		dst = append(dst, env.KeyVersion...)
		dst = append(dst, '"')
	}
	if env.KeyID != "" {
		dst = append(dst, `,"key_id":"`...)
		dst = append(dst, env.KeyID...)
		dst = append(dst, '"')
	}
	var aad []byte
	for _, f := range fields {
		dst = append(dst, ',')
		dst = appendJSONString(dst, f.Name)
		dst = append(dst, ':')
		if !f.Seal {
			dst = append(dst, f.Value...)
			continue
		}
		aad = FieldAAD(aad[:0], env.DeviceID, env.Timestamp, Pointer(f.Name))
		dst = append(dst, '"')
		dst = append(dst, Prefix...)
		var err error
		if dst, err = s.appendSealedText(dst, aead, f.Value, aad); err != nil {
			return dst, err
		}
		dst = append(dst, '"')
	}
	return append(dst, '}'), nil
}

func isObject(b []byte) bool {
	t := strings.TrimSpace(string(b))
	return len(t) > 0 && t[0] == '{' && json.Valid(b)
}

// objectBody returns a valid JSON object's text between its braces.
func objectBody(b []byte) []byte {
	t := []byte(strings.TrimSpace(string(b)))
	return []byte(strings.TrimSpace(string(t[1 : len(t)-1])))
}

func appendJSONString(dst []byte, s string) []byte {
	b, _ := json.Marshal(s) // a string always marshals
	return append(dst, b...)
}
