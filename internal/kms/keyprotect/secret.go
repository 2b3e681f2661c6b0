package keyprotect

import "fmt"

// Secret holds an API key. It prints as <secret> with every fmt verb and
// marshals as "<secret>" to JSON and YAML, so a config dump or a log line
// cannot leak it; Reveal is the one way to read it.
//
// Caution: fmt cannot call methods on an unexported struct field, so a
// Secret in an unexported field prints raw when the struct is printed.
// Export the field, or give the struct its own String/Format.
type Secret string

const redacted = "<secret>"

// Reveal returns the key itself, for the one place that must send it.
func (s Secret) Reveal() string { return string(s) }

func (s Secret) String() string   { return redacted }
func (s Secret) GoString() string { return redacted }

// Format covers verbs that would bypass String (%d, %x on some types, ...).
func (s Secret) Format(f fmt.State, verb rune) { f.Write([]byte(redacted)) }

// MarshalJSON writes "<secret>".
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText writes <secret> (used by YAML encoders and encoding/xml).
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// MarshalYAML writes <secret> for go.yaml.in/yaml/v3.
func (s Secret) MarshalYAML() (any, error) { return redacted, nil }
