package decrypt

import (
	"encoding/binary"
	"errors"
)

// The spec's name alphabets live in package dek (dek.ValidDeviceID and
// friends), shared with the registry.

// sealedMin is the shortest SEALED value: a 12-byte nonce and a 16-byte tag.
const (
	nonceSize = 12
	tagSize   = 16
	sealedMin = nonceSize + tagSize
)

// b64Value maps a base64 character to its 6-bit value, marking '+' and '/'
// with 0x40 (standard alphabet) and '-' and '_' with 0x80 (URL-safe);
// anything else is 0xff. OR-ing every character's entry together tells, in
// one pass, whether any character was invalid or the alphabets were mixed:
// both show as 0xc0 set. A constant, so no package state.
const b64Value = "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7e\xff\xbe\xff\x7f\x34\x35\x36\x37\x38\x39\x3a\x3b\x3c\x3d\xff\xff\xff\xff\xff\xff\xff\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\xff\xff\xff\xff\xbf\xff\x1a\x1b\x1c\x1d\x1e\x1f\x20\x21\x22\x23\x24\x25\x26\x27\x28\x29\x2a\x2b\x2c\x2d\x2e\x2f\x30\x31\x32\x33\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"

// appendBase64 decodes a SEALED value's text, in the standard or URL-safe
// alphabet, padded or not, and appends the bytes to dst. It refuses any
// other character (line breaks and spaces included), a mix of the two
// alphabets, and padding that is not the standard one. Like encoding/base64
// without Strict, it ignores the unused low bits of the last character.
func appendBase64(dst, text []byte) ([]byte, error) {
	n := len(text)
	if n > 0 && text[n-1] == '=' {
		if n%4 != 0 {
			return dst, errors.New("bad base64: padding")
		}
		n--
		if text[n-1] == '=' {
			n--
		}
	}
	src := text[:n]
	if n%4 == 1 {
		return dst, errors.New("bad base64: length")
	}
	if len(text) != n && (len(text)-n) != (4-n%4)%4 {
		return dst, errors.New("bad base64: padding")
	}
	out := len(dst)
	dst = grow(dst, n/4*3+4)
	dst = dst[:out+n/4*3+(n%4*3)/4]
	d := dst[out:]
	var acc byte
	// Eight characters make six bytes; the eight-byte store needs two
	// bytes of slack past them, which grow reserved.
	for len(src) >= 8 && cap(d) >= 8 {
		a, b, c, e := b64Value[src[0]], b64Value[src[1]], b64Value[src[2]], b64Value[src[3]]
		f, g, h, i := b64Value[src[4]], b64Value[src[5]], b64Value[src[6]], b64Value[src[7]]
		acc |= a | b | c | e | f | g | h | i
		v := uint64(a&63)<<58 | uint64(b&63)<<52 | uint64(c&63)<<46 | uint64(e&63)<<40 |
			uint64(f&63)<<34 | uint64(g&63)<<28 | uint64(h&63)<<22 | uint64(i&63)<<16
		binary.BigEndian.PutUint64(d[:8:cap(d)], v)
		src, d = src[8:], d[6:]
	}
	for len(src) >= 4 && len(d) >= 3 {
		a, b, c, e := b64Value[src[0]], b64Value[src[1]], b64Value[src[2]], b64Value[src[3]]
		acc |= a | b | c | e
		v := uint32(a&63)<<18 | uint32(b&63)<<12 | uint32(c&63)<<6 | uint32(e&63)
		d[0], d[1], d[2] = byte(v>>16), byte(v>>8), byte(v)
		src, d = src[4:], d[3:]
	}
	switch len(src) {
	case 2:
		a, b := b64Value[src[0]], b64Value[src[1]]
		acc |= a | b
		d[0] = (a&63)<<2 | (b&63)>>4
	case 3:
		a, b, c := b64Value[src[0]], b64Value[src[1]], b64Value[src[2]]
		acc |= a | b | c
		v := uint32(a&63)<<18 | uint32(b&63)<<12 | uint32(c&63)<<6
		d[0], d[1] = byte(v>>16), byte(v>>8)
	}
	if acc&0xc0 == 0xc0 {
		return dst[:out], errors.New("bad base64: character outside the alphabet, or alphabets mixed")
	}
	return dst, nil
}

// grow extends b's capacity for n more bytes and returns it with its old
// length.
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := make([]byte, len(b), 2*cap(b)+n)
	copy(nb, b)
	return nb
}
