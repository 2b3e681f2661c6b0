package fleet

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/seal"
)

// Kind says what a message is meant to be: good, or bad for one reason.
type Kind string

// Kinds. Every bad kind makes the daemon fail the message with one reason
// of the spec (Kind.Reason).
const (
	Good Kind = "good"
	// Tampered: one character of the first sealed value's base64 changed,
	// so the GCM tag no longer verifies (auth_failed).
	Tampered Kind = "tampered"
	// UnknownVersion: sealed under the device's key but naming a key
	// version the registry does not have (unknown_key).
	UnknownVersion Kind = "unknown_version"
	// Replayed: an earlier good message of the same device, its sealed
	// value unchanged but the message re-serialised (a space after the
	// opening brace), on the same topic and connection (replay). An exact
	// copy would be a duplicate, acknowledged as a QoS 1 resend is
	// (envelope amendment 1), not a replay.
	Replayed Kind = "replayed"
	// Malformed: a good message cut in half, no longer JSON (malformed).
	Malformed Kind = "malformed"
	// TopicMismatch: a good message published on another device's topic
	// (topic_mismatch).
	TopicMismatch Kind = "topic_mismatch"
)

// BadKinds lists the bad kinds in a fixed order.
func BadKinds() []Kind {
	return []Kind{Tampered, UnknownVersion, Replayed, Malformed, TopicMismatch}
}

// Reason is the failure reason (decrypt.Reason's name) the daemon reports
// for a message of this kind; "" for Good.
func (k Kind) Reason() string {
	switch k {
	case Tampered:
		return "auth_failed"
	case UnknownVersion:
		return "unknown_key"
	case Replayed:
		return "replay"
	case Malformed:
		return "malformed"
	case TopicMismatch:
		return "topic_mismatch"
	}
	return ""
}

// ParseKind accepts a kind's name, or the reason name it causes
// (auth_failed, unknown_key, replay).
func ParseKind(s string) (Kind, error) {
	for _, k := range append([]Kind{Good}, BadKinds()...) {
		if s == string(k) || (k != Good && s == k.Reason()) {
			return k, nil
		}
	}
	return "", fmt.Errorf("unknown message kind %q (want good, tampered, unknown_version, replayed, malformed or topic_mismatch)", s)
}

// Shape is the envelope shape of a message.
type Shape string

const (
	ShapeA Shape = "A" // whole payload sealed
	ShapeB Shape = "B" // selected fields sealed
)

// UnknownKeyVersion is the key version UnknownVersion messages name: valid
// in the spec's alphabet, never made by keyops ("v<digits>").
const UnknownKeyVersion = "v0-unknown"

// Message is one message to publish.
type Message struct {
	Device    *Device // the device that sends it (its connection)
	Topic     string
	Payload   []byte
	Kind      Kind
	Shape     Shape
	Timestamp int64
	// Burst: held while its device was offline and sent late.
	Burst bool
}

// Mix says what a generator makes.
type Mix struct {
	// ShapeB is the share of shape B among messages (0..1); the rest are
	// shape A.
	ShapeB float64
	// Bad is the share of all messages per bad kind; the shares add up to
	// at most 1.
	Bad map[Kind]float64
}

// DefaultMix is half shape A, half shape B, no bad messages.
func DefaultMix() Mix { return Mix{ShapeB: 0.5} }

// Validate checks the shares.
func (m Mix) Validate() error {
	if !(m.ShapeB >= 0 && m.ShapeB <= 1) {
		return fmt.Errorf("fleet: shape B share %v: want 0..1", m.ShapeB)
	}
	sum := 0.0
	for k, v := range m.Bad {
		if k == Good || k.Reason() == "" {
			return fmt.Errorf("fleet: %q is not a bad message kind", k)
		}
		if !(v >= 0 && v <= 1) {
			return fmt.Errorf("fleet: share of %s %v: want 0..1", k, v)
		}
		sum += v
	}
	if sum > 1+1e-9 {
		return fmt.Errorf("fleet: bad message shares add up to %v, over 1", sum)
	}
	return nil
}

// ParseBadMix parses "tampered=0.01,replayed=0.005,..." (kinds or reason
// names, shares of all messages). "" is no bad messages.
func ParseBadMix(s string) (map[Kind]float64, error) {
	out := map[Kind]float64{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("fleet: bad mix %q: want kind=share", part)
		}
		k, err := ParseKind(strings.TrimSpace(name))
		if err != nil || k == Good {
			return nil, fmt.Errorf("fleet: bad mix %q: %v", part, errOr(err, "good is not a bad kind"))
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			return nil, fmt.Errorf("fleet: bad mix %q: share is not a number", part)
		}
		out[k] += v
	}
	if err := (Mix{Bad: out}).Validate(); err != nil {
		return nil, err
	}
	return out, nil
}

func errOr(err error, s string) string {
	if err != nil {
		return err.Error()
	}
	return s
}

// replayHistory is how many recent good messages a generator keeps to
// replay.
const replayHistory = 256

// Generator makes messages for a set of devices. Its choices (shape, kind,
// readings, the device a topic mismatch names) come from a PRNG seeded by
// the caller, so a seed reproduces a run's content; nonces always come from
// the sealer's reader (crypto/rand by default), since repeating nonces
// across runs would make the daemon see replays. Not safe for concurrent
// use: give each publishing goroutine its own.
type Generator struct {
	rng     *rand.Rand
	sealer  *seal.Sealer
	mix     Mix
	cum     []float64 // cumulative thresholds of bad kinds
	kinds   []Kind
	peers   []*Device
	history []Message
	hpos    int
	seq     uint64
}

// NewGenerator returns a generator for messages of devices (used also to
// pick the device a topic mismatch names), seeded with seed. nonces is the
// nonce source (nil: crypto/rand).
func NewGenerator(devices []*Device, mix Mix, seed uint64, nonces io.Reader) (*Generator, error) {
	if err := mix.Validate(); err != nil {
		return nil, err
	}
	g := &Generator{
		rng:    rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		sealer: seal.New(nonces),
		mix:    mix,
		peers:  devices,
	}
	kinds := make([]Kind, 0, len(mix.Bad))
	for k := range mix.Bad {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool { return kinds[i] < kinds[j] }) // map order must not change a seeded run
	acc := 0.0
	for _, k := range kinds {
		if mix.Bad[k] <= 0 {
			continue
		}
		acc += mix.Bad[k]
		g.kinds = append(g.kinds, k)
		g.cum = append(g.cum, acc)
	}
	return g, nil
}

// Next makes d's next message at timestamp ts (seconds), good or bad as
// the mix draws. A replay needs an earlier good message of Next: until
// there is one, a replay draw makes a good message.
func (g *Generator) Next(d *Device, ts int64) (Message, error) {
	kind := Good
	if len(g.cum) > 0 {
		x := g.rng.Float64()
		for i, c := range g.cum {
			if x < c {
				kind = g.kinds[i]
				break
			}
		}
	}
	if kind == Replayed {
		if m, ok := g.replay(); ok {
			return m, nil
		}
		kind = Good
	}
	m, err := g.Good(d, ts)
	if err != nil {
		return Message{}, err
	}
	switch kind {
	case Good:
		g.remember(m)
	case Tampered:
		m.Payload = tamper(m.Payload)
	case UnknownVersion:
		m, err = g.message(d, ts, UnknownKeyVersion)
		if err != nil {
			return Message{}, err
		}
	case Malformed:
		m.Payload = m.Payload[:len(m.Payload)/2]
	case TopicMismatch:
		m.Topic = g.otherTopic(d)
	}
	m.Kind = kind
	return m, nil
}

// Good makes a good message of d at ts without drawing a kind (offline
// bursts) and without keeping it for replays.
func (g *Generator) Good(d *Device, ts int64) (Message, error) {
	return g.message(d, ts, "")
}

// message seals a message of d under version ("": the device's current
// one, which a rekey may have changed).
func (g *Generator) message(d *Device, ts int64, version string) (Message, error) {
	cur, aead := d.Current()
	if aead == nil {
		return Message{}, errors.New("fleet: device without a key")
	}
	if version == "" {
		version = cur
	}
	g.seq++
	env := seal.Envelope{DeviceID: d.ID, Timestamp: ts, KeyVersion: version}
	if d.KeyID != dek.DeviceKeyID(d.ID) {
		env.KeyID = d.KeyID // a group key must be named
	}
	m := Message{Device: d, Topic: d.Topic(), Kind: Good, Timestamp: ts, Shape: ShapeA}
	if g.rng.Float64() < g.mix.ShapeB {
		m.Shape = ShapeB
	}
	// Readings of a plausible patient monitor; the patient stays with the
	// device so a run's records look like one patient per bed.
	temp := 97.0 + float64(g.rng.IntN(36))/10
	hr := 55 + g.rng.IntN(56)
	spo2 := 90 + g.rng.IntN(11)
	pid := patientID(d.ID)
	var scratch [64]byte
	tempText := strconv.AppendFloat(scratch[:0], temp, 'f', 1, 64)
	buf := make([]byte, 0, 384)
	var err error
	if m.Shape == ShapeA {
		readings := make([]byte, 0, 96)
		readings = append(readings, `{"temperature":`...)
		readings = append(readings, tempText...)
		readings = append(readings, `,"heart_rate":`...)
		readings = strconv.AppendInt(readings, int64(hr), 10)
		readings = append(readings, `,"spo2":`...)
		readings = strconv.AppendInt(readings, int64(spo2), 10)
		readings = append(readings, `,"patient_id":"`...)
		readings = append(readings, pid...)
		readings = append(readings, `"}`...)
		meta := make([]byte, 0, 48)
		meta = append(meta, `{"fw":"1.4.2","seq":`...)
		meta = strconv.AppendUint(meta, g.seq, 10)
		meta = append(meta, '}')
		buf, err = g.sealer.AppendShapeA(buf, aead, env, readings, meta)
		clear(readings)
	} else {
		pidJSON := []byte(`"` + pid + `"`)
		mrn := []byte(`"MRN-` + pid[2:] + `"`)
		buf, err = g.sealer.AppendShapeB(buf, aead, env, []seal.Field{
			{Name: "temperature", Value: tempText},
			{Name: "heart_rate", Value: strconv.AppendInt(nil, int64(hr), 10)},
			{Name: "spo2", Value: strconv.AppendInt(nil, int64(spo2), 10)},
			{Name: "patient_id", Value: pidJSON, Seal: true},
			{Name: "medical_record", Value: mrn, Seal: true},
		})
	}
	if err != nil {
		return Message{}, fmt.Errorf("fleet: seal message of %s: %w", d.ID, err)
	}
	m.Payload = buf
	return m, nil
}

// patientID derives a stable patient id from the device id (FNV-1a).
func patientID(deviceID string) string {
	h := uint32(2166136261)
	for i := 0; i < len(deviceID); i++ {
		h ^= uint32(deviceID[i])
		h *= 16777619
	}
	s := strconv.FormatUint(uint64(h%10_000_000), 10)
	return "P-" + strings.Repeat("0", 7-len(s)) + s
}

func (g *Generator) remember(m Message) {
	if len(g.history) < replayHistory {
		g.history = append(g.history, m)
		return
	}
	g.history[g.hpos] = m
	g.hpos = (g.hpos + 1) % replayHistory
}

// replay copies a remembered message (of any device of this generator: it
// goes out on its own device's topic and connection, after the original).
func (g *Generator) replay() (Message, bool) {
	if len(g.history) == 0 {
		return Message{}, false
	}
	m := g.history[g.rng.IntN(len(g.history))]
	m.Payload = ReplayOf(m.Payload)
	m.Kind = Replayed
	return m, true
}

// ReplayOf is what an attacker replaying payload (a JSON object) sends: the
// same members and sealed values, other bytes (a space after the opening
// brace), so it is a replay and not an exact repeat (envelope amendment 1:
// a duplicate).
func ReplayOf(payload []byte) []byte {
	out := make([]byte, 0, len(payload)+1)
	out = append(out, '{', ' ')
	return append(out, bytes.TrimPrefix(payload, []byte("{"))...)
}

// otherTopic is the topic of another device than d.
func (g *Generator) otherTopic(d *Device) string {
	if len(g.peers) > 1 {
		for range 4 {
			p := g.peers[g.rng.IntN(len(g.peers))]
			if p.ID != d.ID {
				return p.Topic()
			}
		}
	}
	return TopicFor(d.Type, d.ID+"-other")
}

// tamper changes one base64 character inside the first sealed value, past
// the nonce, so the tag check fails (never the JSON or the base64 itself).
func tamper(p []byte) []byte {
	i := bytes.Index(p, []byte(`"encrypted_data":"`))
	if i >= 0 {
		i += len(`"encrypted_data":"`)
	} else if i = bytes.Index(p, []byte(seal.Prefix)); i >= 0 {
		i += len(seal.Prefix)
	} else {
		return p
	}
	i += 20 // base64 of bytes 15..17: ciphertext, well before any padding
	if i >= len(p) {
		return p
	}
	if p[i] == 'A' {
		p[i] = 'B'
	} else {
		p[i] = 'A'
	}
	return p
}
