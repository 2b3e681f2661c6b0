package config

import (
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/decryptd/decryptd/internal/fileperm"
)

// Redacted is what a Secret prints as, in every format.
const Redacted = "<secret>"

// Secret holds a value that must never be printed or logged: an API key, a
// header carrying a token, a DSN that may carry a password. fmt (every verb),
// encoding/json, YAML and zap's reflection encoder all see "<secret>"; only
// Reveal gives the value, so each use of it is a visible decision.
type Secret struct {
	v string
}

// NewSecret wraps s.
func NewSecret(s string) Secret { return Secret{v: s} }

// Reveal returns the value. Call it only where the value is handed to the
// library that needs it, never to build a message.
func (s Secret) Reveal() string { return s.v }

// IsZero reports whether no value is held.
func (s Secret) IsZero() bool { return s.v == "" }

// String returns "<secret>" (or "" when empty, so a missing value shows).
func (s Secret) String() string {
	if s.v == "" {
		return ""
	}
	return Redacted
}

// GoString keeps %#v from showing the value.
func (s Secret) GoString() string { return "config.Secret(" + s.String() + ")" }

// Format makes every fmt verb print the redacted form.
func (s Secret) Format(f fmt.State, verb rune) { _, _ = f.Write([]byte(s.String())) }

// MarshalJSON writes the redacted form.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + s.String() + `"`), nil }

// MarshalText writes the redacted form.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// MarshalYAML writes the redacted form.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// UnmarshalYAML accepts a scalar only.
func (s *Secret) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a string", n.Line)
	}
	s.v = n.Value
	return nil
}

// maxSecretFile bounds what a secret file may hold; an API key or an
// Authorization header is far smaller.
const maxSecretFile = 64 << 10

// ReadSecretFile reads a secret from path, trimming surrounding whitespace
// (a trailing newline from an editor or `echo`). Errors name the file, never
// its content.
func ReadSecretFile(path string) (Secret, error) {
	f, err := os.Open(path)
	if err != nil {
		return Secret{}, fmt.Errorf("secret file: %w", err)
	}
	defer f.Close()
	// The same rule as check-config's: readable by its group at most.
	if fi, err := f.Stat(); err != nil {
		return Secret{}, fmt.Errorf("secret file %s: %w", path, err)
	} else if err := fileperm.Secret(path, fi.Mode()); err != nil {
		return Secret{}, fmt.Errorf("secret file %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	defer clear(data)
	if err != nil {
		return Secret{}, fmt.Errorf("secret file %s: %w", path, err)
	}
	if len(data) > maxSecretFile {
		return Secret{}, fmt.Errorf("secret file %s: larger than %d bytes", path, maxSecretFile)
	}
	v := strings.TrimSpace(string(data))
	if v == "" {
		return Secret{}, fmt.Errorf("secret file %s: empty", path)
	}
	return Secret{v: v}, nil
}
