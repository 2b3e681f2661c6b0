package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/decryptd/decryptd/internal/intake"
)

// On disk, a segment is a header (segMagic) followed by records; each
// record is
//
//	u32 body length | u32 CRC-32C of the body | body
//
// (little endian), and a body is
//
//	u8 version (1 or 2) | u8 flags (bit 0: redelivered) | i64 receive time (Unix ns)
//	| uvarint length + source | uvarint length + device id
//	| uvarint length + topic
//	| version 2 only: uvarint length + log topic | varint partition | varint offset
//	| uvarint length + payload
//
// Version 2 carries the message's Position (a Kafka record's topic,
// partition and offset); a message without one (MQTT) is written as
// version 1, byte for byte as before version 2 existed, so a spool of an
// MQTT input still reads in a decryptd that knows version 1 only. Both are
// read. The payload is the message as received: ciphertext, never
// plaintext.
const (
	segMagic      = "DSPOOL1\n"
	recHeader     = 8
	bodyVersion1  = 1 // no Position
	bodyVersion   = 2 // with Position
	flagRedeliv   = 1
	maxStringLen  = 64 << 10  // source, device id, topic
	maxRecordBody = 256 << 20 // a payload beyond this is refused (decrypt's own limit is far lower)
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errTorn is what a record that is cut short or fails its CRC wraps.
var errTorn = errors.New("spool: torn or corrupt record")

// appendRecord appends m's record to dst.
func appendRecord(dst []byte, m intake.Message) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, recHeader)...)
	version := byte(bodyVersion1)
	if !m.Position.IsZero() {
		version = bodyVersion
	}
	dst = append(dst, version, 0)
	if m.Redelivered {
		dst[len(dst)-1] = flagRedeliv
	}
	var ns int64
	if !m.ReceivedAt.IsZero() {
		ns = m.ReceivedAt.UnixNano()
	}
	dst = binary.LittleEndian.AppendUint64(dst, uint64(ns))
	for _, s := range []string{m.Source, m.DeviceID, m.Topic} {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	if version == bodyVersion {
		dst = binary.AppendUvarint(dst, uint64(len(m.Position.Topic)))
		dst = append(dst, m.Position.Topic...)
		dst = binary.AppendVarint(dst, int64(m.Position.Partition))
		dst = binary.AppendVarint(dst, m.Position.Offset)
	}
	dst = binary.AppendUvarint(dst, uint64(len(m.Payload)))
	dst = append(dst, m.Payload...)
	body := dst[start+recHeader:]
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(dst[start+4:], crc32.Checksum(body, castagnoli))
	return dst
}

// recordLen returns the length of the record m would be.
func recordLen(m intake.Message) int {
	n := recHeader + 2 + 8
	for _, l := range []int{len(m.Source), len(m.DeviceID), len(m.Topic), len(m.Payload)} {
		n += uvarintLen(uint64(l)) + l
	}
	if p := m.Position; !p.IsZero() {
		n += uvarintLen(uint64(len(p.Topic))) + len(p.Topic) + varintLen(int64(p.Partition)) + varintLen(p.Offset)
	}
	return n
}

// varintLen is the length of binary.AppendVarint's encoding of x.
func varintLen(x int64) int {
	ux := uint64(x) << 1
	if x < 0 {
		ux = ^ux
	}
	return uvarintLen(ux)
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// recordHeader checks a record header: the body length it announces.
func recordHeader(h []byte) (int, error) {
	if len(h) < recHeader {
		return 0, fmt.Errorf("%w: %d header bytes of %d", errTorn, len(h), recHeader)
	}
	n := binary.LittleEndian.Uint32(h)
	if n < 2+8+4 || n > maxRecordBody {
		return 0, fmt.Errorf("%w: body length %d", errTorn, n)
	}
	return int(n), nil
}

// decodeRecord decodes one whole record (header and body). The message's
// Payload aliases rec.
func decodeRecord(rec []byte) (intake.Message, error) {
	n, err := recordHeader(rec)
	if err != nil {
		return intake.Message{}, err
	}
	if len(rec) != recHeader+n {
		return intake.Message{}, fmt.Errorf("%w: %d bytes, header says %d", errTorn, len(rec), recHeader+n)
	}
	body := rec[recHeader:]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(rec[4:]) {
		return intake.Message{}, fmt.Errorf("%w: CRC mismatch", errTorn)
	}
	return decodeBody(body)
}

func decodeBody(b []byte) (intake.Message, error) {
	var m intake.Message
	if len(b) < 10 {
		return m, fmt.Errorf("%w: body of %d bytes", errTorn, len(b))
	}
	version := b[0]
	if version != bodyVersion1 && version != bodyVersion {
		return m, fmt.Errorf("spool: record version %d, want %d or %d", version, bodyVersion1, bodyVersion)
	}
	if b[1]&^flagRedeliv != 0 {
		return m, fmt.Errorf("spool: unknown record flags %#x", b[1])
	}
	m.Redelivered = b[1]&flagRedeliv != 0
	if ns := int64(binary.LittleEndian.Uint64(b[2:])); ns != 0 {
		m.ReceivedAt = time.Unix(0, ns)
	}
	b = b[10:]
	var strs [3]string
	for i := range strs {
		f, rest, err := field(b, maxStringLen)
		if err != nil {
			return intake.Message{}, err
		}
		strs[i], b = string(f), rest
	}
	m.Source, m.DeviceID, m.Topic = strs[0], strs[1], strs[2]
	if version == bodyVersion {
		var err error
		if m.Position, b, err = position(b); err != nil {
			return intake.Message{}, err
		}
	}
	p, rest, err := field(b, maxRecordBody)
	if err != nil {
		return intake.Message{}, err
	}
	if len(rest) != 0 {
		return intake.Message{}, fmt.Errorf("spool: %d bytes after the payload", len(rest))
	}
	m.Payload = p
	return m, nil
}

func field(b []byte, limit int) (f, rest []byte, err error) {
	l, k := binary.Uvarint(b)
	if k <= 0 {
		return nil, nil, fmt.Errorf("spool: bad field length")
	}
	if l > uint64(limit) || l > uint64(len(b)-k) {
		return nil, nil, fmt.Errorf("spool: field of %d bytes, %d left", l, len(b)-k)
	}
	return b[k : k+int(l)], b[k+int(l):], nil
}

// position decodes a version 2 body's Position; a position without a
// topic (which appendRecord never writes) is refused.
func position(b []byte) (intake.LogPosition, []byte, error) {
	t, b, err := field(b, maxStringLen)
	if err != nil {
		return intake.LogPosition{}, nil, err
	}
	if len(t) == 0 {
		return intake.LogPosition{}, nil, fmt.Errorf("spool: version %d record without a log topic", bodyVersion)
	}
	part, k := binary.Varint(b)
	if k <= 0 || part != int64(int32(part)) {
		return intake.LogPosition{}, nil, fmt.Errorf("spool: bad partition")
	}
	b = b[k:]
	off, k := binary.Varint(b)
	if k <= 0 {
		return intake.LogPosition{}, nil, fmt.Errorf("spool: bad offset")
	}
	return intake.LogPosition{Topic: string(t), Partition: int32(part), Offset: off}, b[k:], nil
}
