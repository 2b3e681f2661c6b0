package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/decryptd/decryptd/internal/sink"
)

// DeadLetterSinkName names the dead-letter sink in metrics and logs.
const DeadLetterSinkName = "dead_letter"

// isCommonSinkKey reports whether key is one every sinks entry has,
// whatever its type (read into Sink's own fields, not the type's Config).
// A setting common to every sink type goes here and on Sink.
func isCommonSinkKey(key string) bool { return key == "name" || key == "type" || key == "policy" }

// UnmarshalYAML reads name and type and keeps the entry for the sink type
// registry to decode (decodeSinks).
func (s *Sink) UnmarshalYAML(n *yaml.Node) error {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a sink is a mapping of keys (name, type, and the type's own)", n.Line)
	}
	*s = Sink{node: n}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "policy" {
			p, err := decodePolicy(n.Content[i+1])
			if err != nil {
				return err
			}
			s.Policy = p
			continue
		}
		var dst *string
		switch n.Content[i].Value {
		case "name":
			dst = &s.Name
		case "type":
			dst = &s.Type
		default:
			continue
		}
		if err := n.Content[i+1].Decode(dst); err != nil {
			return err
		}
	}
	return nil
}

// decodePolicy decodes a sink's policy strictly: a misspelt key is an
// error, as everywhere in the file.
func decodePolicy(n *yaml.Node) (*Policy, error) {
	text, err := yaml.Marshal(n)
	if err != nil {
		return nil, fmt.Errorf("yaml: line %d: %w", n.Line, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(text))
	dec.KnownFields(true)
	p := &Policy{}
	if err := dec.Decode(p); err != nil && !errors.Is(err, io.EOF) {
		msg := cleanYAMLError(err).Error()
		return nil, errors.New(lineRE.ReplaceAllString(msg, fmt.Sprintf("line %d (policy):", n.Line)))
	}
	return p, nil
}

// decodeSinks decodes each sinks entry read from YAML into its type's
// Config. An entry of an unregistered type is left for Validate to report.
func (c *Config) decodeSinks() error {
	reg := c.SinkTypes()
	for i := range c.Sinks {
		s := &c.Sinks[i]
		n := s.node
		s.node = nil
		if n == nil {
			continue
		}
		cfg, other, err := decodeEntry(reg, s.Type, n)
		if err != nil {
			return fmt.Errorf("sinks[%d]: %w", i, err)
		}
		s.Config, s.other = cfg, other
	}
	return nil
}

// decodeEntry decodes the keys of a sink entry other than name and type
// into a new Config of the type called typ (nil when typ is not
// registered). It returns the keys that belong to another registered type
// (other), and an error for a key no type has or a value that does not
// decode.
func decodeEntry(reg *sink.Registry, typ string, n *yaml.Node) (cfg sink.Config, other []string, err error) {
	t, ok := reg.Lookup(typ)
	if !ok {
		return nil, nil, nil
	}
	cfg = t.NewConfig()
	own := yamlKeys(cfg)
	known := map[string]bool{}
	for _, name := range reg.Names() {
		tt, _ := reg.Lookup(name)
		for k := range yamlKeys(tt.NewConfig()) {
			known[k] = true
		}
	}
	body := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		switch {
		case isCommonSinkKey(k.Value):
		case own[k.Value]:
			body.Content = append(body.Content, k, n.Content[i+1])
		case known[k.Value]:
			other = append(other, k.Value)
		default:
			return nil, nil, fmt.Errorf("yaml: line %d: unknown key %q", k.Line, k.Value)
		}
	}
	// Decoded strictly (a nested unknown key is an error too) through a
	// Decoder, which only then checks known fields; its line numbers are
	// the entry's own, so they are replaced by the entry's.
	text, err := yaml.Marshal(body)
	if err != nil {
		return nil, nil, fmt.Errorf("yaml: line %d: %w", n.Line, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(text))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		msg := cleanYAMLError(err).Error()
		msg = lineRE.ReplaceAllString(msg, fmt.Sprintf("line %d (this sink):", n.Line))
		return nil, nil, errors.New(msg)
	}
	return cfg, other, nil
}

var lineRE = regexp.MustCompile(`line \d+:`)

// yamlKeys lists the top-level YAML keys of the struct v points to.
func yamlKeys(v any) map[string]bool {
	out := map[string]bool{}
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return out
	}
	for i := 0; i < t.NumField(); i++ {
		tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
		if tag != "" && tag != "-" {
			out[tag] = true
		}
	}
	return out
}

// MarshalJSON writes the entry as in the file: name, type and the type's
// keys side by side.
func (s Sink) MarshalJSON() ([]byte, error) {
	m := map[string]any{}
	if s.Config != nil {
		b, err := json.Marshal(s.Config)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, err
		}
	}
	m["name"], m["type"] = s.Name, s.Type
	if s.Policy != nil {
		m["policy"] = s.Policy
	}
	return json.Marshal(m)
}

// MarshalYAML writes the entry as in the file.
func (s Sink) MarshalYAML() (any, error) {
	n := &yaml.Node{}
	if s.Config != nil {
		if err := n.Encode(s.Config); err != nil {
			return nil, err
		}
	} else {
		n.Kind, n.Tag = yaml.MappingNode, "!!map"
	}
	head := []*yaml.Node{
		{Kind: yaml.ScalarNode, Value: "name"}, {Kind: yaml.ScalarNode, Value: s.Name},
		{Kind: yaml.ScalarNode, Value: "type"}, {Kind: yaml.ScalarNode, Value: s.Type},
	}
	if s.Policy != nil {
		pn := &yaml.Node{}
		if err := pn.Encode(s.Policy); err != nil {
			return nil, err
		}
		head = append(head, &yaml.Node{Kind: yaml.ScalarNode, Value: "policy"}, pn)
	}
	n.Content = append(head, n.Content...)
	return n, nil
}

// SinkEnv is what the sink types get besides their own configuration;
// clientID is the MQTT client id a sink connecting to a broker uses.
func (c *Config) SinkEnv(clientID string) sink.Env {
	return sink.Env{AllowPlaintext: c.MQTT.AllowPlaintext, ClientID: clientID}
}

// SinkClientID is the MQTT client id of the sink called name:
// <mqtt.client_id>-sink-<name>, or <mqtt.client_id>-dead-letter for the
// dead-letter sink.
func (c *Config) SinkClientID(name string) string {
	if name == DeadLetterSinkName {
		return c.MQTT.ClientID + "-dead-letter"
	}
	return c.MQTT.ClientID + "-sink-" + name
}

// DeadLetterSink returns the dead_letter section as a sink entry called
// DeadLetterSinkName, decoded by its registered type (file or mqtt) like a
// sinks entry; an mqtt dead letter without broker or tls uses the mqtt
// section's first broker and its tls. The problems are named by their key
// under dead_letter.
func (c *Config) DeadLetterSink() (Sink, []FieldError) {
	d := c.DeadLetter
	s := Sink{Name: DeadLetterSinkName, Type: d.Type}
	var probs []FieldError
	switch d.Type {
	case SinkFile, SinkMQTT:
	case "":
		return s, []FieldError{{"dead_letter.type", "required (file or mqtt): a message that cannot be decrypted is kept, never dropped"}}
	default:
		return s, []FieldError{{"dead_letter.type", fmt.Sprintf("must be file or mqtt, got %q", clip(d.Type))}}
	}
	if d.Type == SinkMQTT {
		if d.Broker == "" && len(c.MQTT.Brokers) > 0 {
			d.Broker = c.MQTT.Brokers[0]
		}
		if d.TLS.IsZero() {
			d.TLS = c.MQTT.TLS
		}
	}
	d.Type = ""
	var n yaml.Node
	if err := n.Encode(d); err != nil {
		return s, []FieldError{{"dead_letter", err.Error()}}
	}
	cfg, other, err := decodeEntry(c.SinkTypes(), s.Type, &n)
	if err != nil {
		return s, []FieldError{{"dead_letter", err.Error()}}
	}
	if cfg == nil {
		return s, []FieldError{{"dead_letter.type", fmt.Sprintf("type %s is not registered", s.Type)}}
	}
	s.Config = cfg
	for _, k := range other {
		probs = append(probs, FieldError{"dead_letter." + k, "not used by type " + s.Type})
	}
	for _, p := range sink.AsProblems(cfg.Validate(c.SinkEnv(c.SinkClientID(s.Name)))) {
		probs = append(probs, FieldError{keyed("dead_letter", p.Key), p.Text})
	}
	return s, probs
}

func keyed(prefix, key string) string {
	if key == "" {
		return prefix
	}
	return prefix + "." + key
}

func (c *Config) validateSinks(ck *checker) {
	if len(c.Sinks) == 0 {
		ck.add("sinks", "at least one sink required")
	}
	reg := c.SinkTypes()
	seen := map[string]int{}
	for i, s := range c.Sinks {
		f := fmt.Sprintf("sinks[%d]", i)
		if !validName(s.Name) {
			ck.add(f+".name", "want 1-32 of a-z 0-9 _ -, got %q", clip(s.Name))
		} else if j, dup := seen[s.Name]; dup {
			ck.add(f+".name", "%q already names sinks[%d]", s.Name, j)
		} else {
			seen[s.Name] = i
		}
		switch _, ok := reg.Lookup(s.Type); {
		case s.Type == "":
			ck.add(f+".type", "required (%s)", reg.Describe())
			continue
		case !ok:
			ck.add(f+".type", "must be %s, got %q", reg.Describe(), clip(s.Type))
			continue
		case s.Config == nil:
			ck.add(f, "type %s: no configuration", s.Type)
			continue
		}
		for _, p := range sink.AsProblems(s.Config.Validate(c.SinkEnv(c.SinkClientID(s.Name)))) {
			ck.add(keyed(f, p.Key), "%s", p.Text)
		}
		for _, k := range s.other {
			ck.add(f+"."+k, "not used by type %s", s.Type)
		}
		if s.Policy != nil {
			if err := s.Policy.Validate(); err != nil {
				ck.add(f+".policy", "%v", err)
			}
		}
	}
}

func (c *Config) validateDeadLetter(ck *checker) {
	_, probs := c.DeadLetterSink()
	ck.probs = append(ck.probs, probs...)
}
