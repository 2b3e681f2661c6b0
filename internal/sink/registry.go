package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Config is one sink type's typed configuration: the keys of its entry in
// the configuration file's sinks list other than name and type, decoded
// from YAML through its struct tags (a key of another sink type is
// refused). A sink type is its Config, its Validate naming fields, its New,
// and one Type value listed with the others (package sinktypes).
type Config interface {
	// Defaults sets what is unset to the type's defaults; the
	// configuration calls it after environment overrides, before Validate.
	Defaults()
	// Validate checks the fields without opening the files named or
	// reaching the network. A problem is a *Problems error naming each key
	// relative to the sink's entry ("path", "tls.cert_file").
	Validate(env Env) error
	// New builds the sink called name. ctx bounds the building only (a
	// broker connection).
	New(ctx context.Context, name string, env Env) (Sink, error)
}

// PathResolver is implemented by a Config naming files: ResolvePaths
// applies abs (which makes a relative path absolute against the
// configuration file's directory) to each of them.
type PathResolver interface {
	ResolvePaths(abs func(*string))
}

// Env is what a sink type may use besides its own configuration.
type Env struct {
	// AllowPlaintext is mqtt.allow_plaintext: brokers reached over plain
	// TCP are allowed.
	AllowPlaintext bool
	// ClientID is the MQTT client id a sink that connects to a broker uses
	// (the daemon derives one per sink from its own: <id>-sink-<name>).
	ClientID string
	// Stdout is where a stdout sink writes.
	Stdout io.Writer
}

// Type registers one sink type: Name is the value of type: in the
// configuration, NewConfig returns an empty Config of the type (YAML is
// decoded into it).
type Type struct {
	Name      string
	NewConfig func() Config
}

// Registry is the set of sink types a configuration may use, in
// registration order.
type Registry struct {
	types []Type
}

// NewRegistry returns a Registry of types; a name must be non-empty and
// used once.
func NewRegistry(types ...Type) (*Registry, error) {
	r := &Registry{}
	for i, t := range types {
		switch {
		case t.Name == "" || t.NewConfig == nil:
			return nil, fmt.Errorf("sink: registry: type %d: name and NewConfig required", i)
		case r.has(t.Name):
			return nil, fmt.Errorf("sink: registry: type %q registered twice", t.Name)
		}
		r.types = append(r.types, t)
	}
	return r, nil
}

func (r *Registry) has(name string) bool {
	_, ok := r.Lookup(name)
	return ok
}

// Lookup returns the type called name.
func (r *Registry) Lookup(name string) (Type, bool) {
	for _, t := range r.types {
		if t.Name == name {
			return t, true
		}
	}
	return Type{}, false
}

// Names lists the type names in registration order.
func (r *Registry) Names() []string {
	out := make([]string, len(r.types))
	for i, t := range r.types {
		out[i] = t.Name
	}
	return out
}

// Describe lists the names for a message: "file, stdout, mqtt or http".
func (r *Registry) Describe() string {
	n := r.Names()
	if len(n) < 2 {
		return strings.Join(n, "")
	}
	return strings.Join(n[:len(n)-1], ", ") + " or " + n[len(n)-1]
}

// FieldProblem is one problem with one key of a sink's configuration.
type FieldProblem struct {
	Key  string // relative to the sink's entry: "path", "tls.cert_file"
	Text string
}

// Problems is what Config.Validate returns when something is wrong.
type Problems []FieldProblem

// Add records a problem with key.
func (p *Problems) Add(key, format string, args ...any) {
	*p = append(*p, FieldProblem{Key: key, Text: fmt.Sprintf(format, args...)})
}

// Err returns p as an error, or nil when p is empty.
func (p Problems) Err() error {
	if len(p) == 0 {
		return nil
	}
	return &p
}

func (p *Problems) Error() string {
	msgs := make([]string, len(*p))
	for i, f := range *p {
		msgs[i] = f.Key + ": " + f.Text
	}
	return strings.Join(msgs, "; ")
}

// AsProblems returns the problems err holds: those of a *Problems, or one
// without a key for any other error.
func AsProblems(err error) Problems {
	if err == nil {
		return nil
	}
	var p *Problems
	if errors.As(err, &p) {
		return *p
	}
	return Problems{{Text: err.Error()}}
}

// Chunked splits a Write into Writes of at most max records (a receiver's
// batch limit); max <= 0 leaves batches whole. A failed chunk fails the
// whole Write, which the pipeline retries (in smaller parts): the receiver
// may see earlier chunks again, as it may after any retry (records carry
// stable ids).
func Chunked(s Sink, max int) Sink { return ChunkedBytes(s, max, 0) }

// ChunkedBytes is Chunked with a byte bound as well: each Write holds at
// most maxRecords records and at most maxBytes of records' JSON (a
// request body's size, one '\n' per record counted), except that a record
// larger than maxBytes goes alone. maxRecords or maxBytes <= 0: no bound
// of that kind.
func ChunkedBytes(s Sink, maxRecords, maxBytes int) Sink {
	if maxRecords <= 0 && maxBytes <= 0 {
		return s
	}
	return chunked{Sink: s, max: maxRecords, maxBytes: maxBytes}
}

type chunked struct {
	Sink
	max      int
	maxBytes int
}

func (c chunked) Write(ctx context.Context, batch []Record) error {
	for len(batch) > 0 {
		n := c.next(batch)
		if err := c.Sink.Write(ctx, batch[:n]); err != nil {
			return err
		}
		batch = batch[n:]
	}
	return nil
}

// next returns how many of batch's first records make the next chunk (at
// least one).
func (c chunked) next(batch []Record) int {
	n, size := 0, 0
	for n < len(batch) && (c.max <= 0 || n < c.max) {
		l := len(batch[n].JSON) + 1
		if n > 0 && c.maxBytes > 0 && size+l > c.maxBytes {
			break
		}
		size += l
		n++
	}
	return n
}
