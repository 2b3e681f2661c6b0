package decrypt

import (
	"bytes"
	"encoding/base64"
	"errors"
)

// Name alphabets of the spec. Each check is a switch, not a lookup table,
// so there is no package-level state.

func validDeviceID(b []byte) bool {
	if len(b) < 1 || len(b) > 128 {
		return false
	}
	for _, c := range b {
		if !alnum(c) && c != '.' && c != '_' && c != ':' && c != '-' {
			return false
		}
	}
	return true
}

func validKeyVersion(b []byte) bool {
	if len(b) < 1 || len(b) > 32 {
		return false
	}
	for _, c := range b {
		if !alnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func validKeyID(b []byte) bool {
	if len(b) < 1 || len(b) > 200 {
		return false
	}
	for _, c := range b {
		if !alnum(c) && c != '.' && c != '_' && c != ':' && c != '/' && c != '-' {
			return false
		}
	}
	return true
}

func alnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// sealedMin is the shortest SEALED value: a 12-byte nonce and a 16-byte tag.
const (
	nonceSize = 12
	tagSize   = 16
	sealedMin = nonceSize + tagSize
)

// appendBase64 decodes a SEALED value's text, in the standard or URL-safe
// alphabet, padded or not, and appends the bytes to dst. encoding/base64
// refuses every character outside the chosen alphabet (so a mix of the two
// alphabets fails) except line breaks, which it skips: those are refused
// here, the spec allows none.
func appendBase64(dst, text []byte) ([]byte, error) {
	if len(text) == 0 {
		return dst, errors.New("bad base64: empty")
	}
	if bytes.IndexByte(text, '\n') >= 0 || bytes.IndexByte(text, '\r') >= 0 {
		return dst, errors.New("bad base64: line break")
	}
	url := bytes.IndexByte(text, '-') >= 0 || bytes.IndexByte(text, '_') >= 0
	padded := text[len(text)-1] == '='
	var enc *base64.Encoding
	switch {
	case url && padded:
		enc = base64.URLEncoding
	case url:
		enc = base64.RawURLEncoding
	case padded:
		enc = base64.StdEncoding
	default:
		enc = base64.RawStdEncoding
	}
	n := len(dst)
	need := enc.DecodedLen(len(text))
	dst = grow(dst, need)
	m, err := enc.Decode(dst[n:n+need], text)
	if err != nil {
		return dst[:n], errors.New("bad base64")
	}
	return dst[:n+m], nil
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
