package rekey

import (
	"bytes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/decryptd/decryptd/internal/registry"
)

// Sizes of the format.
const (
	DEKSize    = 32
	NonceSize  = 12
	TagSize    = 16
	SealedSize = NonceSize + DEKSize + TagSize // 60
	// MaxMessage bounds a rekey message.
	MaxMessage = 4 << 10
	// AADLabel opens the associated data of sealed_dek.
	AADLabel = "decryptd-rekey-v1"
	// GenAADLabel opens the associated data of sealed_dek_gen (amendment 1:
	// the key generation, docs/rekey-v1.md).
	GenAADLabel = "decryptd-rekey-v1-gen"
	// MaxGeneration is the largest generation (and issued_at) a message may
	// carry: 2^53-1, exact in every JSON reader, C's double included.
	MaxGeneration = 1<<53 - 1
	// Type is the value of the "type" member.
	Type = "rekey"
	// DefaultTopic is the command topic pattern: {device_type} and
	// {device_id} are replaced.
	DefaultTopic = "iot-2/type/{device_type}/id/{device_id}/cmd/rekey/fmt/json"
)

// Errors callers switch on.
var (
	// ErrMalformed: not a rekey message of version 1 (see docs/rekey-v1.md).
	ErrMalformed = errors.New("rekey: malformed message")
	// ErrAuth: the sealed key did not authenticate under the wrapping key.
	ErrAuth = errors.New("rekey: sealed key does not authenticate")
	// ErrNotForDevice: the rekey names another device, or a key the device
	// does not use.
	ErrNotForDevice = errors.New("rekey: not for this device")
	// ErrWrapUnknown: sealed under a key version the device does not hold.
	ErrWrapUnknown = errors.New("rekey: sealed under a key version the device does not hold")
	// ErrRollback: the rekey's generation is not above the highest the
	// device accepted for that key, or it carries none after one was
	// accepted (a replayed older rekey, or a downgrade).
	ErrRollback = errors.New("rekey: generation not above the highest accepted (rollback)")
)

// Header names what a rekey carries: the device, the key and new version
// it installs, the key it is sealed under, and the new version's
// generation (amendment 1; 0 for a message without one).
type Header struct {
	DeviceID       string
	KeyID          string
	NewVersion     string
	WrapKeyID      string
	WrapKeyVersion string
	// Generation orders the versions of KeyID: each new version the
	// backend makes has a higher one. Authenticated by sealed_dek_gen.
	Generation uint64
}

// Message is a parsed rekey.
type Message struct {
	Header
	Sealed    []byte // SealedSize bytes: sealed_dek
	SealedGen []byte // SealedSize bytes: sealed_dek_gen, when Generation > 0
	IssuedAt  int64
}

func (h Header) check() error {
	switch {
	case !registry.ValidDeviceID(h.DeviceID):
		return fmt.Errorf("%w: device_id", ErrMalformed)
	case !registry.ValidKeyID(h.KeyID):
		return fmt.Errorf("%w: key_id", ErrMalformed)
	case !registry.ValidKeyVersion(h.NewVersion):
		return fmt.Errorf("%w: new_version", ErrMalformed)
	case !registry.ValidKeyID(h.WrapKeyID):
		return fmt.Errorf("%w: wrap_key_id", ErrMalformed)
	case !registry.ValidKeyVersion(h.WrapKeyVersion):
		return fmt.Errorf("%w: wrap_key_version", ErrMalformed)
	case h.WrapKeyID == h.KeyID && h.WrapKeyVersion == h.NewVersion:
		return fmt.Errorf("%w: a key cannot be sealed under itself", ErrMalformed)
	case h.Generation > MaxGeneration:
		return fmt.Errorf("%w: generation above 2^53-1", ErrMalformed)
	}
	return nil
}

// GenAAD returns the associated data of sealed_dek_gen: the label, the
// names as in AAD, then generation and issued_at as 8-byte big-endian
// integers (docs/rekey-v1.md, amendment 1).
func (h Header) GenAAD(issuedAt int64) []byte {
	b := bytes.NewBuffer(make([]byte, 0, 128))
	for i, s := range []string{GenAADLabel, h.DeviceID, h.KeyID, h.NewVersion, h.WrapKeyID, h.WrapKeyVersion} {
		if i > 0 {
			b.WriteByte(0)
		}
		b.WriteString(s)
	}
	b.WriteByte(0)
	var n [16]byte
	binary.BigEndian.PutUint64(n[:8], h.Generation)
	binary.BigEndian.PutUint64(n[8:], uint64(issuedAt))
	b.Write(n[:])
	return b.Bytes()
}

// GenerationOf is the backend's rule for a version's generation: the
// versions it makes are named v<N> (N counting up per key, shredded names
// never reused), and v<N>'s generation is N. Other names (imported keys)
// have none.
func GenerationOf(version string) (uint64, bool) {
	if len(version) < 2 || len(version) > 17 || version[0] != 'v' || (version[1] == '0' && len(version) > 2) {
		return 0, false
	}
	n, err := strconv.ParseUint(version[1:], 10, 64)
	if err != nil || n == 0 || n > MaxGeneration {
		return 0, false
	}
	return n, true
}

// AAD returns the associated data of h (docs/rekey-v1.md).
func (h Header) AAD() []byte {
	var b bytes.Buffer
	for i, s := range []string{AADLabel, h.DeviceID, h.KeyID, h.NewVersion, h.WrapKeyID, h.WrapKeyVersion} {
		if i > 0 {
			b.WriteByte(0)
		}
		b.WriteString(s)
	}
	return b.Bytes()
}

// Topic fills a topic pattern's {device_type} and {device_id}.
func Topic(pattern, deviceType, deviceID string) string {
	if pattern == "" {
		pattern = DefaultTopic
	}
	return strings.NewReplacer("{device_type}", deviceType, "{device_id}", deviceID).Replace(pattern)
}

type wire struct {
	Type           string `json:"type"`
	V              int    `json:"v"`
	DeviceID       string `json:"device_id"`
	KeyID          string `json:"key_id"`
	NewVersion     string `json:"new_version"`
	WrapKeyID      string `json:"wrap_key_id"`
	WrapKeyVersion string `json:"wrap_key_version"`
	SealedDEK      string `json:"sealed_dek"`
	IssuedAt       int64  `json:"issued_at"`
	Generation     uint64 `json:"generation,omitempty"`
	SealedDEKGen   string `json:"sealed_dek_gen,omitempty"`
}

// Seal makes the rekey message that carries newDEK for h, sealed under wrap
// (the AEAD of h.WrapKeyID@h.WrapKeyVersion) with nonces read from rnd.
// With h.Generation set the message also carries generation and
// sealed_dek_gen (amendment 1); without, it is an original v1 message.
// newDEK is not kept; the caller wipes it.
func Seal(rnd io.Reader, wrap cipher.AEAD, h Header, newDEK []byte, issued time.Time) ([]byte, error) {
	if err := h.check(); err != nil {
		return nil, err
	}
	if len(newDEK) != DEKSize {
		return nil, fmt.Errorf("rekey: new DEK is %d bytes, want %d", len(newDEK), DEKSize)
	}
	if wrap.NonceSize() != NonceSize || wrap.Overhead() != TagSize {
		return nil, errors.New("rekey: wrapping cipher is not AES-GCM with a 96-bit nonce and 128-bit tag")
	}
	if issued.Unix() < 0 || issued.Unix() > MaxGeneration {
		return nil, errors.New("rekey: issued_at out of range")
	}
	sealOne := func(aad []byte) ([]byte, error) {
		sealed := make([]byte, NonceSize, SealedSize)
		if _, err := io.ReadFull(rnd, sealed); err != nil {
			return nil, fmt.Errorf("rekey: nonce: %w", err)
		}
		return wrap.Seal(sealed, sealed[:NonceSize], newDEK, aad), nil
	}
	sealed, err := sealOne(h.AAD())
	if err != nil {
		return nil, err
	}
	w := wire{
		Type: Type, V: 1, DeviceID: h.DeviceID, KeyID: h.KeyID, NewVersion: h.NewVersion,
		WrapKeyID: h.WrapKeyID, WrapKeyVersion: h.WrapKeyVersion,
		SealedDEK: base64.StdEncoding.EncodeToString(sealed), IssuedAt: issued.Unix(),
	}
	if h.Generation > 0 {
		g, err := sealOne(h.GenAAD(w.IssuedAt))
		if err != nil {
			return nil, err
		}
		w.Generation, w.SealedDEKGen = h.Generation, base64.StdEncoding.EncodeToString(g)
	}
	return json.Marshal(w)
}

// Parse checks a rekey message's form (not its authenticity: Open does).
func Parse(payload []byte) (Message, error) {
	if len(payload) > MaxMessage {
		return Message{}, fmt.Errorf("%w: over %d bytes", ErrMalformed, MaxMessage)
	}
	if err := noRepeatedMembers(payload); err != nil {
		return Message{}, err
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(payload, &raw); err != nil || raw == nil {
		return Message{}, fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	var w wire
	for _, f := range []struct {
		name string
		dst  any
	}{
		{"type", &w.Type}, {"v", &w.V}, {"device_id", &w.DeviceID}, {"key_id", &w.KeyID},
		{"new_version", &w.NewVersion}, {"wrap_key_id", &w.WrapKeyID}, {"wrap_key_version", &w.WrapKeyVersion},
		{"sealed_dek", &w.SealedDEK}, {"issued_at", &w.IssuedAt},
	} {
		r, ok := raw[f.name]
		if !ok {
			return Message{}, fmt.Errorf("%w: %s missing", ErrMalformed, f.name)
		}
		if err := json.Unmarshal(r, f.dst); err != nil || bytes.Equal(bytes.TrimSpace(r), []byte("null")) {
			return Message{}, fmt.Errorf("%w: %s: wrong type", ErrMalformed, f.name)
		}
	}
	if w.Type != Type {
		return Message{}, fmt.Errorf("%w: type is not %q", ErrMalformed, Type)
	}
	if w.V != 1 {
		return Message{}, fmt.Errorf("%w: v %d, want 1", ErrMalformed, w.V)
	}
	if w.IssuedAt < 0 {
		return Message{}, fmt.Errorf("%w: issued_at negative", ErrMalformed)
	}
	if err := parseGeneration(raw, &w); err != nil {
		return Message{}, err
	}
	m := Message{Header: Header{DeviceID: w.DeviceID, KeyID: w.KeyID, NewVersion: w.NewVersion,
		WrapKeyID: w.WrapKeyID, WrapKeyVersion: w.WrapKeyVersion, Generation: w.Generation}, IssuedAt: w.IssuedAt}
	if err := m.check(); err != nil {
		return Message{}, err
	}
	sealed, err := decodeBase64(w.SealedDEK)
	if err != nil || len(sealed) != SealedSize {
		return Message{}, fmt.Errorf("%w: sealed_dek: want base64 of %d bytes", ErrMalformed, SealedSize)
	}
	m.Sealed = sealed
	if m.Generation > 0 {
		g, err := decodeBase64(w.SealedDEKGen)
		if err != nil || len(g) != SealedSize {
			return Message{}, fmt.Errorf("%w: sealed_dek_gen: want base64 of %d bytes", ErrMalformed, SealedSize)
		}
		m.SealedGen = g
	}
	return m, nil
}

// parseGeneration reads amendment 1's members: generation (an integer,
// 1 to MaxGeneration) and sealed_dek_gen (a string), both or neither;
// issued_at is then bounded by MaxGeneration too (it is in the AAD).
func parseGeneration(raw map[string]json.RawMessage, w *wire) error {
	g, hasG := raw["generation"]
	s, hasS := raw["sealed_dek_gen"]
	switch {
	case !hasG && !hasS:
		return nil
	case hasG != hasS:
		return fmt.Errorf("%w: generation and sealed_dek_gen go together", ErrMalformed)
	}
	if err := json.Unmarshal(g, &w.Generation); err != nil || w.Generation == 0 || w.Generation > MaxGeneration {
		return fmt.Errorf("%w: generation: want an integer from 1 to 2^53-1", ErrMalformed)
	}
	if err := json.Unmarshal(s, &w.SealedDEKGen); err != nil || bytes.Equal(bytes.TrimSpace(s), []byte("null")) {
		return fmt.Errorf("%w: sealed_dek_gen: wrong type", ErrMalformed)
	}
	if w.IssuedAt > MaxGeneration {
		return fmt.Errorf("%w: issued_at above 2^53-1", ErrMalformed)
	}
	return nil
}

// Open returns the new DEK (DEKSize bytes, the caller wipes it), or ErrAuth.
// A message with a generation is opened from sealed_dek_gen, which
// authenticates the generation and issued_at with the names; one without
// from sealed_dek.
func (m Message) Open(wrap cipher.AEAD) ([]byte, error) {
	sealed, aad := m.Sealed, m.AAD()
	if m.Generation > 0 {
		sealed, aad = m.SealedGen, m.GenAAD(m.IssuedAt)
	}
	if len(sealed) != SealedSize {
		return nil, fmt.Errorf("%w: sealed length", ErrMalformed)
	}
	if wrap.NonceSize() != NonceSize || wrap.Overhead() != TagSize {
		return nil, errors.New("rekey: wrapping cipher is not AES-GCM with a 96-bit nonce and 128-bit tag")
	}
	out, err := wrap.Open(make([]byte, 0, DEKSize), sealed[:NonceSize], sealed[NonceSize:], aad)
	if err != nil {
		return nil, ErrAuth
	}
	return out, nil
}

// decodeBase64 accepts the standard and URL-safe alphabets, padded or not.
func decodeBase64(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		return base64.RawURLEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// noRepeatedMembers refuses a top-level object that names a member twice
// (encoding/json would silently keep the last).
func noRepeatedMembers(payload []byte) error {
	dec := json.NewDecoder(bytes.NewReader(payload))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("%w: not JSON", ErrMalformed)
		}
		name, _ := tok.(string)
		if seen[name] {
			return fmt.Errorf("%w: member %q repeated", ErrMalformed, clip(name))
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return fmt.Errorf("%w: not JSON", ErrMalformed)
		}
	}
	if _, err := dec.Token(); err != nil {
		return fmt.Errorf("%w: not JSON", ErrMalformed)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	return nil
}

func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}
