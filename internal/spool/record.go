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
//	u8 version (1) | u8 flags (bit 0: redelivered) | i64 receive time (Unix ns)
//	| uvarint length + source | uvarint length + device id
//	| uvarint length + topic | uvarint length + payload
//
// The payload is the message as received: ciphertext, never plaintext.
const (
	segMagic      = "DSPOOL1\n"
	recHeader     = 8
	bodyVersion   = 1
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
	dst = append(dst, bodyVersion, 0)
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
	return n
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
	if b[0] != bodyVersion {
		return m, fmt.Errorf("spool: record version %d, want %d", b[0], bodyVersion)
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
