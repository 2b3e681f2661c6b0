package pointer

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrSyntax is wrapped by every Parse error.
var ErrSyntax = errors.New("bad JSON pointer")

// Limits of a pointer.
const (
	MaxLen    = 1024
	MaxTokens = 64
)

// Wildcard is the token that matches any array element.
const Wildcard = "*"

// Pointer is a parsed pointer: its unescaped reference tokens.
type Pointer struct {
	text   string
	Tokens []string
}

// Parse parses s.
func Parse(s string) (Pointer, error) {
	if len(s) > MaxLen {
		return Pointer{}, fmt.Errorf("%w: longer than %d bytes", ErrSyntax, MaxLen)
	}
	if s == "" {
		return Pointer{}, nil
	}
	if s[0] != '/' {
		return Pointer{}, fmt.Errorf("%w: %q does not start with /", ErrSyntax, clip(s))
	}
	parts := strings.Split(s[1:], "/")
	if len(parts) > MaxTokens {
		return Pointer{}, fmt.Errorf("%w: more than %d tokens", ErrSyntax, MaxTokens)
	}
	for i, p := range parts {
		for j := 0; j < len(p); j++ {
			if p[j] == '~' && (j+1 == len(p) || (p[j+1] != '0' && p[j+1] != '1')) {
				return Pointer{}, fmt.Errorf("%w: %q: ~ must be followed by 0 or 1", ErrSyntax, clip(s))
			}
		}
		parts[i] = strings.ReplaceAll(strings.ReplaceAll(p, "~1", "/"), "~0", "~")
	}
	return Pointer{text: s, Tokens: parts}, nil
}

// MustParse is Parse for pointers known to be valid; it panics otherwise.
func MustParse(s string) Pointer {
	p, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return p
}

// String returns the pointer as written.
func (p Pointer) String() string { return p.text }

// HasWildcard reports whether a token is "*".
func (p Pointer) HasWildcard() bool {
	for _, t := range p.Tokens {
		if t == Wildcard {
			return true
		}
	}
	return false
}

// Escape escapes one token ("~" → "~0", "/" → "~1").
func Escape(tok string) string {
	return strings.ReplaceAll(strings.ReplaceAll(tok, "~", "~0"), "/", "~1")
}

// Get returns the value at p in doc, a value decoded by encoding/json
// (maps, slices, scalars); "*" is not expanded. ok is false when nothing
// is there.
func (p Pointer) Get(doc any) (v any, ok bool) {
	v = doc
	for _, t := range p.Tokens {
		switch x := v.(type) {
		case map[string]any:
			if v, ok = x[t]; !ok {
				return nil, false
			}
		case []any:
			i, err := strconv.Atoi(t)
			if err != nil || i < 0 || i >= len(x) || (len(t) > 1 && t[0] == '0') {
				return nil, false
			}
			v = x[i]
		default:
			return nil, false
		}
	}
	return v, true
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
