package decrypt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/bits"
	"strconv"
	"unicode/utf8"
)

// The JSON scanner works on the raw message bytes: it validates RFC 8259
// strictly (UTF-8, no bare control characters, no trailing commas or
// garbage, no leading zeros), rejects a member name repeated within one
// object at any depth, and, in message mode, records what the envelope
// needs: the top-level members and every string value that starts with the
// sealed-field prefix, with its RFC 6901 pointer. It never converts numbers
// and never builds maps of values, so numbers keep their exact text and a
// message costs no allocation beyond the scanner's reused buffers.

// sealedPrefix starts an encrypted field's string value (shape B).
const sealedPrefix = "ENC:AES256:"

// maxDepth bounds nesting so a hostile message cannot drive the recursive
// descent arbitrarily deep. The spec sets no limit; 1000 is far beyond any
// telemetry and well within what other JSON stacks (Python's json) handle.
const maxDepth = 1000

// linearNames is how many member names of one object are compared linearly
// for repeats; past it the object switches to a set, so a hostile object
// with thousands of members costs O(n), not O(n²).
const linearNames = 16

type valueKind uint8

const (
	kindString valueKind = iota + 1
	kindNumber
	kindObject
	kindArray
	kindTrue
	kindFalse
	kindNull
)

type span struct{ start, end int }

// nameRef locates a decoded member name: in the document at off when
// off >= 0 (the name has no escapes), else in the arena at ^off. Offsets
// rather than slices keep the scanner's bookkeeping free of pointers: no
// write barriers, nothing to clear for the garbage collector's sake.
type nameRef struct{ off, n int32 }

func (s *scanner) name(r nameRef) []byte {
	if r.off >= 0 {
		return s.buf[r.off : r.off+r.n]
	}
	o := ^r.off
	return s.arena[o : o+r.n]
}

// member is one member of the scanned document's top-level object.
type member struct {
	name  nameRef
	start int  // offset of the name's opening quote
	val   span // raw value (strings include their quotes)
	kind  valueKind
	esc   bool // a string value holding escapes
}

// sealedRef is one string value that starts with sealedPrefix.
type sealedRef struct {
	raw  span   // the string value in the document, quotes included
	top  int    // index of the top-level member it sits in
	text []byte // decoded base64 text after the prefix
	ptr  []byte // RFC 6901 pointer
	bin  span   // SEALED bytes in state.bin, once decoded
}

// nameTag is a member name with a summary of it (length, first and last
// byte): two names with different tags differ, so the repeated-name check
// compares bytes only when the tags are equal.
type nameTag struct {
	ref nameRef
	tag uint64
}

func tagOf(name []byte) uint64 {
	if len(name) == 0 {
		return 0
	}
	return uint64(len(name)) | uint64(name[0])<<40 | uint64(name[len(name)-1])<<48
}

type pathSeg struct {
	name  nameRef
	index int
	isIdx bool
}

// errScan carries no document content: offsets only, since the document may
// be plaintext.
type scanError struct {
	off int
	msg string
}

func (e *scanError) Error() string { return e.msg + " at offset " + strconv.Itoa(e.off) }

// scanner is reused across messages (pooled); reset clears it.
type scanner struct {
	buf     []byte
	pos     int
	depth   int
	collect bool // message mode: record top-level members and sealed strings

	names   []nameTag // member names of the objects currently open, innermost last
	path    []pathSeg
	arena   []byte // decoded names and strings; only ever appended to during one scan
	top     []member
	meta    []member // members of the top-level "metadata" object, if it is one
	sealed  []sealedRef
	curTop  int     // index the top-level member being scanned will have
	curName nameRef // and its name

	// Indices (+1, 0 = absent) of the members the envelope needs, noted
	// as they are scanned so that lookups cost nothing.
	known [numKnown]int
}

// The envelope's member names: top-level ones, then metadata's.
const (
	knownEncryptedData = iota
	knownKeyVersion
	knownKeyID
	knownMetadata
	knownDeviceID
	knownTimestamp
	knownMetaDeviceID
	knownMetaTimestamp
	numKnown
)

func knownTop(name []byte) int {
	switch string(name) {
	case "encrypted_data":
		return knownEncryptedData
	case "key_version":
		return knownKeyVersion
	case "key_id":
		return knownKeyID
	case "metadata":
		return knownMetadata
	case "device_id":
		return knownDeviceID
	case "timestamp":
		return knownTimestamp
	}
	return -1
}

// reset prepares the scanner for buf. It first wipes what the previous
// scan left: the arena may hold decoded plaintext strings, and the sealed
// references point into the previous document.
func (s *scanner) reset(buf []byte, collect bool) {
	clear(s.arena)
	clear(s.sealed)
	s.buf = buf
	s.pos = 0
	s.depth = 0
	s.collect = collect
	s.names = s.names[:0]
	s.path = s.path[:0]
	s.arena = s.arena[:0]
	s.top = s.top[:0]
	s.meta = s.meta[:0]
	s.sealed = s.sealed[:0]
	s.curTop, s.curName = -1, nameRef{}
	s.known = [numKnown]int{}
}

// release wipes the scanner and drops its references, for the pool.
func (s *scanner) release() { s.reset(nil, false) }

func (s *scanner) fail(msg string) error { return &scanError{off: s.pos, msg: msg} }

// failAt is fail at pos, for the loops that keep the position in a local.
func (s *scanner) failAt(pos int, msg string) error {
	s.pos = pos
	return s.fail(msg)
}

// document scans buf as one JSON text and returns the kind and span of its
// value (surrounding whitespace excluded).
func (s *scanner) document(buf []byte, collect bool) (valueKind, span, error) {
	s.reset(buf, collect)
	s.skipWS()
	start := s.pos
	if collect && (s.pos >= len(s.buf) || s.buf[s.pos] != '{') {
		return 0, span{}, s.fail("not a JSON object")
	}
	k, err := s.value()
	if err != nil {
		return 0, span{}, err
	}
	end := s.pos
	s.skipWS()
	if s.pos != len(s.buf) {
		return 0, span{}, s.fail("data after the JSON value")
	}
	return k, span{start, end}, nil
}

// The scanning loops (skipWSAt, strFrom, number, object, array) keep the
// position in a local: through the pointer the compiler would load and
// store s.pos on every byte. s.pos is stored around the calls that read it.
func (s *scanner) skipWS() { s.pos = skipWSAt(s.buf, s.pos) }

// skipWSAt returns the offset of the first byte at or after pos that is
// not JSON whitespace.
func skipWSAt(b []byte, pos int) int {
	for pos < len(b) && b[pos] <= ' ' && (b[pos] == ' ' || b[pos] == '\t' || b[pos] == '\n' || b[pos] == '\r') {
		pos++
	}
	return pos
}

func (s *scanner) value() (valueKind, error) {
	if s.pos >= len(s.buf) {
		return 0, s.fail("unexpected end of JSON")
	}
	switch c := s.buf[s.pos]; {
	case c == '{':
		return kindObject, s.object()
	case c == '[':
		return kindArray, s.array()
	case c == '"':
		start := s.pos
		esc, err := s.str()
		if err != nil {
			return 0, err
		}
		if s.collect && s.depth > 0 {
			s.checkSealed(start, esc)
		}
		return kindString, nil
	case c == '-' || (c >= '0' && c <= '9'):
		return kindNumber, s.number()
	case c == 't':
		return kindTrue, s.literal("true")
	case c == 'f':
		return kindFalse, s.literal("false")
	case c == 'n':
		return kindNull, s.literal("null")
	}
	return 0, s.fail("invalid character")
}

// valueAt scans the value of a member or an array element, which starts
// at pos (whitespace skipped), and returns its kind and end. Strings and
// numbers, most of telemetry, are scanned here with the position in a
// local; anything else is value's.
func (s *scanner) valueAt(pos int) (kind valueKind, esc bool, end int, err error) {
	b := s.buf
	if pos < len(b) {
		switch c := b[pos]; {
		case c == '"':
			p := plainEnd(b, pos+1)
			if p < len(b) && b[p] == '"' {
				s.pos = p + 1
			} else {
				s.pos = pos
				if esc, err = s.strFrom(p); err != nil {
					return 0, false, 0, err
				}
			}
			if s.collect {
				s.checkSealed(pos, esc)
			}
			return kindString, esc, s.pos, nil
		case c >= '0' && c <= '9' || c == '-':
			s.pos = pos
			err = s.number()
			return kindNumber, false, s.pos, err
		}
	}
	s.pos = pos
	kind, err = s.value()
	return kind, false, s.pos, err
}

func (s *scanner) literal(lit string) error {
	if len(s.buf)-s.pos < len(lit) || string(s.buf[s.pos:s.pos+len(lit)]) != lit {
		return s.fail("invalid literal")
	}
	s.pos += len(lit)
	return nil
}

// number scans the number at s.pos.
func (s *scanner) number() error {
	b, pos := s.buf, s.pos
	if b[pos] == '-' {
		pos++
	}
	if pos >= len(b) {
		return s.failAt(pos, "truncated number")
	}
	switch c := b[pos]; {
	case c == '0':
		pos++
	case c >= '1' && c <= '9':
		pos++
		for pos < len(b) && b[pos]-'0' <= 9 {
			pos++
		}
	default:
		return s.failAt(pos, "invalid number")
	}
	if pos < len(b) && b[pos] == '.' {
		pos++
		d := pos
		for pos < len(b) && b[pos]-'0' <= 9 {
			pos++
		}
		if pos == d {
			return s.failAt(pos, "invalid number fraction")
		}
	}
	if pos < len(b) && (b[pos] == 'e' || b[pos] == 'E') {
		pos++
		if pos < len(b) && (b[pos] == '+' || b[pos] == '-') {
			pos++
		}
		d := pos
		for pos < len(b) && b[pos]-'0' <= 9 {
			pos++
		}
		if pos == d {
			return s.failAt(pos, "invalid number exponent")
		}
	}
	s.pos = pos
	return nil
}

// str scans a string starting at its opening quote and reports whether it
// holds escapes. It validates UTF-8 and escapes, and rejects lone
// surrogates (\ud800 alone cannot be written in UTF-8, so neither the AAD
// pointer nor a sink could carry it faithfully).
func (s *scanner) str() (esc bool, err error) { return s.strFrom(s.pos + 1) }

// strFrom is str for the string whose opening quote is at s.pos, its bytes
// before pos already known to be plain (plainByte).
func (s *scanner) strFrom(pos int) (esc bool, err error) {
	b := s.buf
	for {
		// Most of a message is base64 text and short names: plainEnd
		// skips plain ASCII eight bytes at a time.
		pos = plainEnd(b, pos)
		if pos >= len(b) {
			break
		}
		c := b[pos]
		switch {
		case c == '"':
			s.pos = pos + 1
			return esc, nil
		case c == '\\':
			esc = true
			s.pos = pos
			if err := s.escape(); err != nil {
				return false, err
			}
			pos = s.pos
		case c < 0x20:
			s.pos = pos
			return false, s.fail("control character in string")
		default:
			r, n := utf8.DecodeRune(b[pos:])
			if r == utf8.RuneError && n == 1 {
				s.pos = pos
				return false, s.fail("invalid UTF-8 in string")
			}
			pos += n
		}
	}
	s.pos = pos
	return false, s.fail("unterminated string")
}

// plainEnd returns the offset of the first byte at or after p that is not
// plain (plainByte: a quote, a backslash, a control character or
// non-ASCII), or len(b). It reads eight bytes at a time (specialMask), the
// last ones with one load that overlaps bytes already passed, so a short
// name costs one or two loads and no branch per byte.
func plainEnd(b []byte, p int) int {
	for p+16 <= len(b) {
		if m := specialMask(binary.LittleEndian.Uint64(b[p:])); m != 0 {
			return p + bits.TrailingZeros64(m)>>3
		}
		if m := specialMask(binary.LittleEndian.Uint64(b[p+8:])); m != 0 {
			return p + 8 + bits.TrailingZeros64(m)>>3
		}
		p += 16
	}
	if p+8 <= len(b) {
		if m := specialMask(binary.LittleEndian.Uint64(b[p:])); m != 0 {
			return p + bits.TrailingZeros64(m)>>3
		}
		p += 8
	}
	if p >= len(b) {
		return len(b)
	}
	if len(b) >= 8 {
		// The last eight bytes, shifted so that lane 0 is b[p]; the zero
		// bytes shifted in are control characters, so m is never 0.
		w := binary.LittleEndian.Uint64(b[len(b)-8:]) >> (8 * uint(p-(len(b)-8)))
		return min(p+bits.TrailingZeros64(specialMask(w))>>3, len(b))
	}
	for p < len(b) && plainByte[b[p]] != 0 {
		p++
	}
	return p
}

// plainByte[c] is 1 for a byte a string holds as is: printable ASCII but
// the quote and the backslash. A constant, so no package state.
const plainByte = "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x01\x00\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x00\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

const (
	lo8 = 0x0101010101010101
	hi8 = 0x8080808080808080
)

// plainASCII8 reports whether none of the eight bytes of w is a quote, a
// backslash, a control character or non-ASCII.
func plainASCII8(w uint64) bool { return specialMask(w) == 0 }

// specialMask sets the high bit of each byte lane of w (little-endian: lane
// 0 is the first byte) that holds a quote, a backslash, a control character
// or non-ASCII (SWAR: a byte test in each lane's high bit). A borrow only
// runs from a lane that matches into the lanes above it, so the lowest set
// bit is exact (the first special byte), and the mask is zero exactly when
// no byte is special; lanes above the first match may be set spuriously.
func specialMask(w uint64) uint64 {
	ctl := (w - lo8*0x20) &^ w
	quote := w ^ (lo8 * '"')
	quote = (quote - lo8) &^ quote
	bslash := w ^ (lo8 * '\\')
	bslash = (bslash - lo8) &^ bslash
	return (ctl | quote | bslash | w) & hi8
}

// escape validates one escape sequence at s.pos (the backslash).
func (s *scanner) escape() error {
	b := s.buf
	if s.pos+1 >= len(b) {
		return s.fail("truncated escape")
	}
	switch b[s.pos+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		s.pos += 2
		return nil
	case 'u':
	default:
		return s.fail("invalid escape")
	}
	r, ok := hex4(b, s.pos+2)
	if !ok {
		return s.fail("invalid \\u escape")
	}
	switch {
	case r >= 0xdc00 && r <= 0xdfff:
		return s.fail("lone surrogate escape")
	case r >= 0xd800 && r <= 0xdbff:
		if s.pos+12 > len(b) || b[s.pos+6] != '\\' || b[s.pos+7] != 'u' {
			return s.fail("lone surrogate escape")
		}
		r2, ok := hex4(b, s.pos+8)
		if !ok || r2 < 0xdc00 || r2 > 0xdfff {
			return s.fail("lone surrogate escape")
		}
		s.pos += 12
		return nil
	}
	s.pos += 6
	return nil
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return r, true
}

// appendUnescaped appends the decoded content of a validated string body
// (quotes excluded).
func appendUnescaped(dst, body []byte) []byte {
	for i := 0; i < len(body); {
		c := body[i]
		if c != '\\' {
			j := bytes.IndexByte(body[i:], '\\')
			if j < 0 {
				return append(dst, body[i:]...)
			}
			dst = append(dst, body[i:i+j]...)
			i += j
			continue
		}
		switch body[i+1] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, _ := hex4(body, i+2)
			if r >= 0xd800 && r <= 0xdbff {
				r2, _ := hex4(body, i+8)
				r = ((r - 0xd800) << 10) + (r2 - 0xdc00) + 0x10000
				i += 6
			}
			dst = utf8.AppendRune(dst, r)
			i += 6
			continue
		default: // '"', '\\', '/'
			dst = append(dst, body[i+1])
		}
		i += 2
	}
	return dst
}

// decoded returns the decoded content of the validated string whose
// opening quote is at start and which ends before s.pos.
func (s *scanner) decoded(start, end int, esc bool) []byte {
	body := s.buf[start+1 : end-1]
	if !esc {
		return body
	}
	n := len(s.arena)
	s.arena = appendUnescaped(s.arena, body)
	return s.arena[n:len(s.arena):len(s.arena)]
}

// base64String skips the string at pos (setting s.pos past it) when it holds no escape, without
// checking its characters: only for the value of a top-level
// encrypted_data, whose text every outcome other than malformed decodes as
// base64, and the decoder refuses every character that is not base64 (so
// control characters and non-ASCII). The SEALED text is most of a shape A
// message; this spares it a second pass.
func (s *scanner) base64String(pos int) bool {
	body := s.buf[pos+1:]
	q := bytes.IndexByte(body, '"')
	if q < 0 || bytes.IndexByte(body[:q], '\\') >= 0 {
		return false
	}
	s.pos = pos + q + 2
	return true
}

// nameAt is decoded for a member name, as a nameRef.
func (s *scanner) nameAt(start, end int, esc bool) nameRef {
	if !esc {
		return nameRef{int32(start + 1), int32(end - start - 2)}
	}
	n := len(s.arena)
	s.arena = appendUnescaped(s.arena, s.buf[start+1:end-1])
	return nameRef{^int32(n), int32(len(s.arena) - n)}
}

func (s *scanner) checkSealed(start int, esc bool) {
	body := s.buf[start+1 : s.pos-1]
	if len(body) < len(sealedPrefix) {
		return
	}
	if !esc {
		if string(body[:len(sealedPrefix)]) != sealedPrefix {
			return
		}
	} else {
		// Rare: only decode when the raw text could spell the prefix.
		d := s.decoded(start, s.pos, true)
		if len(d) < len(sealedPrefix) || string(d[:len(sealedPrefix)]) != sealedPrefix {
			return
		}
		body = d
		esc = false
	}
	ref := sealedRef{raw: span{start, s.pos}, top: s.curTop, text: body[len(sealedPrefix):]}
	n := len(s.arena)
	for _, seg := range s.path {
		s.arena = append(s.arena, '/')
		if seg.isIdx {
			s.arena = strconv.AppendInt(s.arena, int64(seg.index), 10)
			continue
		}
		for _, c := range s.name(seg.name) {
			switch c {
			case '~':
				s.arena = append(s.arena, '~', '0')
			case '/':
				s.arena = append(s.arena, '~', '1')
			default:
				s.arena = append(s.arena, c)
			}
		}
	}
	ref.ptr = s.arena[n:len(s.arena):len(s.arena)]
	s.sealed = append(s.sealed, ref)
}

func (s *scanner) object() error {
	s.depth++
	if s.depth > maxDepth {
		return s.fail("nesting too deep")
	}
	// The position is kept in a local (see skipWS) and stored in s.pos
	// only around calls that read it.
	b := s.buf
	pos := s.pos + 1 // '{'
	isTop := s.collect && s.depth == 1
	// Shape A needs the members of metadata; catching them here saves a
	// second scan.
	isMeta := s.collect && s.depth == 2 && string(s.name(s.curName)) == "metadata"
	base := len(s.names)
	var set map[string]struct{}
	if s.collect {
		s.path = append(s.path, pathSeg{})
	}
	pos = skipWSAt(b, pos)
	if pos < len(b) && b[pos] == '}' {
		pos++
	} else {
		for {
			pos = skipWSAt(b, pos)
			if pos >= len(b) || b[pos] != '"' {
				return s.failAt(pos, "expected member name")
			}
			nameStart := pos
			// Most names are short plain ASCII: found here with plainEnd
			// and kept as offsets into the document; anything else is
			// strFrom's, from the first byte that is not plain.
			var ref nameRef
			if p := plainEnd(b, pos+1); p < len(b) && b[p] == '"' {
				pos = p + 1
				ref = nameRef{int32(nameStart + 1), int32(p - nameStart - 1)}
			} else {
				s.pos = nameStart
				esc, err := s.strFrom(p)
				if err != nil {
					return err
				}
				pos = s.pos
				ref = s.nameAt(nameStart, pos, esc)
			}
			name := s.name(ref)
			if set != nil {
				if _, dup := set[string(name)]; dup {
					return &scanError{off: nameStart, msg: "member name repeated"}
				}
				set[string(name)] = struct{}{}
			} else {
				tag := tagOf(name)
				for _, prev := range s.names[base:] {
					if prev.tag == tag && bytes.Equal(s.name(prev.ref), name) {
						return &scanError{off: nameStart, msg: "member name repeated"}
					}
				}
				s.names = append(s.names, nameTag{ref, tag})
				if len(s.names)-base > linearNames {
					set = make(map[string]struct{}, 2*linearNames)
					for _, prev := range s.names[base:] {
						set[string(s.name(prev.ref))] = struct{}{}
					}
				}
			}
			pos = skipWSAt(b, pos)
			if pos >= len(b) || b[pos] != ':' {
				return s.failAt(pos, "expected ':'")
			}
			pos = skipWSAt(b, pos+1)
			if s.collect {
				s.path[len(s.path)-1] = pathSeg{name: ref}
			}
			if isTop {
				s.curTop, s.curName = len(s.top), ref
			}
			valStart := pos
			var kind valueKind
			var esc bool
			if isTop && pos < len(b) && b[pos] == '"' && string(name) == "encrypted_data" && s.base64String(pos) {
				kind, pos = kindString, s.pos
			} else {
				var err error
				if kind, esc, pos, err = s.valueAt(pos); err != nil {
					return err
				}
			}
			switch {
			case isTop:
				s.top = append(s.top, member{name: ref, start: nameStart, val: span{valStart, pos}, kind: kind, esc: esc})
				if k := knownTop(name); k >= 0 {
					s.known[k] = len(s.top)
				}
			case isMeta:
				s.meta = append(s.meta, member{name: ref, start: nameStart, val: span{valStart, pos}, kind: kind, esc: esc})
				switch string(name) {
				case "device_id":
					s.known[knownMetaDeviceID] = len(s.meta)
				case "timestamp":
					s.known[knownMetaTimestamp] = len(s.meta)
				}
			}
			pos = skipWSAt(b, pos)
			if pos >= len(b) {
				return s.failAt(pos, "unterminated object")
			}
			if c := b[pos]; c == ',' {
				pos++
				continue
			} else if c == '}' {
				pos++
				break
			}
			return s.failAt(pos, "expected ',' or '}'")
		}
	}
	s.pos = pos
	s.names = s.names[:base]
	if s.collect {
		s.path = s.path[:len(s.path)-1]
	}
	s.depth--
	return nil
}

func (s *scanner) array() error {
	s.depth++
	if s.depth > maxDepth {
		return s.fail("nesting too deep")
	}
	b := s.buf
	pos := s.pos + 1 // '['
	if s.collect {
		s.path = append(s.path, pathSeg{isIdx: true})
	}
	pos = skipWSAt(b, pos)
	if pos < len(b) && b[pos] == ']' {
		pos++
	} else {
		for i := 0; ; i++ {
			pos = skipWSAt(b, pos)
			if s.collect {
				s.path[len(s.path)-1].index = i
			}
			var err error
			if _, _, pos, err = s.valueAt(pos); err != nil {
				return err
			}
			pos = skipWSAt(b, pos)
			if pos >= len(b) {
				return s.failAt(pos, "unterminated array")
			}
			if c := b[pos]; c == ',' {
				pos++
				continue
			} else if c == ']' {
				pos++
				break
			}
			return s.failAt(pos, "expected ',' or ']'")
		}
	}
	s.pos = pos
	if s.collect {
		s.path = s.path[:len(s.path)-1]
	}
	s.depth--
	return nil
}

// find returns the top-level member with the given decoded name.
// get returns the envelope member k (a known* constant), or nil.
func (s *scanner) get(k int) *member {
	i := s.known[k]
	switch {
	case i == 0:
		return nil
	case k >= knownMetaDeviceID:
		return &s.meta[i-1]
	}
	return &s.top[i-1]
}

// stringValue decodes a top-level string member's value.
func (s *scanner) stringValue(m *member) []byte {
	if !m.esc {
		return s.buf[m.val.start+1 : m.val.end-1]
	}
	return s.decoded(m.val.start, m.val.end, true)
}

// parseTimestamp reads a JSON number's text as the spec's timestamp: base-10
// digits only. JSON already forbids leading zeros, so valid digits are the
// canonical text. Values beyond int64 are refused (the spec sets no bound;
// such a value is no time at all).
func parseTimestamp(text []byte) (int64, error) {
	if len(text) == 0 {
		return 0, errors.New("timestamp is not a non-negative integer")
	}
	var v int64
	// Up to 18 digits cannot overflow an int64: no division per digit
	// (the common case, 10 or 13 digits); beyond, each step is checked.
	checked := len(text) > 18
	for _, c := range text {
		if c < '0' || c > '9' {
			return 0, errors.New("timestamp is not a non-negative integer")
		}
		d := int64(c - '0')
		if checked && v > (1<<63-1-d)/10 {
			return 0, errors.New("timestamp out of range")
		}
		v = v*10 + d
	}
	return v, nil
}
