package decrypt

import (
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
// alphabet, padded or not, and appends the bytes to dst. Unlike
// encoding/base64 alone it refuses line breaks and a mix of the two
// alphabets: the spec allows neither.
func appendBase64(dst, text []byte) ([]byte, error) {
	std, url := false, false
	pad := 0
	for i, c := range text {
		switch {
		case alnum(c):
		case c == '+' || c == '/':
			std = true
		case c == '-' || c == '_':
			url = true
		case c == '=':
			pad = len(text) - i
			for _, c2 := range text[i:] {
				if c2 != '=' {
					return dst, errors.New("bad base64: '=' before the end")
				}
			}
		default:
			return dst, errors.New("bad base64: character outside the alphabet")
		}
		if pad > 0 {
			break
		}
	}
	if std && url {
		return dst, errors.New("bad base64: standard and URL-safe alphabets mixed")
	}
	var enc *base64.Encoding
	switch {
	case url && pad > 0:
		enc = base64.URLEncoding
	case url:
		enc = base64.RawURLEncoding
	case pad > 0:
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
