package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Formatter appends one record, as one line ending in '\n', to buf.
type Formatter func(buf []byte, r Record) ([]byte, error)

// JSONLines formats a record as its JSON and a '\n' (the default).
func JSONLines(buf []byte, r Record) ([]byte, error) {
	buf = append(buf, r.JSON...)
	return append(buf, '\n'), nil
}

// Pretty formats a record for a person watching the demo: device, key
// version and the data object on one line, e.g.
//
//	sensor-001 key v2: {"temperature":98.6,"heart_rate":72}
//
// A record without a data member is shown whole.
func Pretty(buf []byte, r Record) ([]byte, error) {
	var v struct {
		DeviceID   string          `json:"device_id"`
		KeyVersion string          `json:"key_version"`
		Data       json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(r.JSON, &v); err != nil {
		// Never quote the record: it is plaintext.
		return buf, fmt.Errorf("record %q: not a JSON object: %w", r.ID, ErrBadRecord)
	}
	dev := r.DeviceID
	if dev == "" {
		dev = v.DeviceID
	}
	if dev == "" {
		dev = "-"
	}
	ver := v.KeyVersion
	if ver == "" {
		ver = "-"
	}
	data := []byte(v.Data)
	if len(data) == 0 {
		data = r.JSON
	}
	buf = append(buf, dev...)
	buf = append(buf, " key "...)
	buf = append(buf, ver...)
	buf = append(buf, ": "...)
	buf = append(buf, data...)
	return append(buf, '\n'), nil
}

// StdoutOptions configures a Stdout sink.
type StdoutOptions struct {
	Name   string    // sink name, required
	Writer io.Writer // required; main passes os.Stdout
	Format Formatter // default JSONLines; Pretty for the demo
}

// Stdout is a Sink writing records to an io.Writer, one line each, the whole
// batch in one Write call. A batch counts as held once the writer took it
// (os.Stdout is unbuffered: the bytes are in the kernel's pipe or terminal);
// that is no durability at all, so it is for demos, debugging and piping
// into another tool. Flush flushes a writer that has Flush() error (a
// bufio.Writer); Close does too and never closes the writer, which is not
// the sink's. Write checks its context only before writing.
type Stdout struct {
	opts   StdoutOptions
	buf    []byte
	closed bool
}

// NewStdout returns a Stdout sink.
func NewStdout(opts StdoutOptions) (*Stdout, error) {
	switch {
	case opts.Name == "":
		return nil, errors.New("stdout sink: name: required")
	case opts.Writer == nil:
		return nil, fmt.Errorf("stdout sink %q: writer: required", opts.Name)
	}
	if opts.Format == nil {
		opts.Format = JSONLines
	}
	return &Stdout{opts: opts}, nil
}

// Name returns the sink's name.
func (s *Stdout) Name() string { return s.opts.Name }

// Write formats the batch and writes it in one call.
func (s *Stdout) Write(ctx context.Context, batch []Record) error {
	if s.closed {
		return ErrClosed
	}
	if err := ContextError(ctx, "stdout", s.opts.Name); err != nil {
		return err
	}
	if err := CheckBatch(batch); err != nil {
		return fmt.Errorf("stdout sink %q: %w", s.opts.Name, err)
	}
	if len(batch) == 0 {
		return nil
	}
	buf := s.buf[:0]
	for _, r := range batch {
		var err error
		if buf, err = s.opts.Format(buf, r); err != nil {
			return fmt.Errorf("stdout sink %q: format: %w", s.opts.Name, err)
		}
	}
	if cap(buf) <= 1<<20 {
		s.buf = buf // keep a modest buffer for the next batch
	}
	if _, err := s.opts.Writer.Write(buf); err != nil {
		return fmt.Errorf("stdout sink %q: write: %w", s.opts.Name, err)
	}
	return nil
}

type flusher interface{ Flush() error }

// Flush flushes the writer if it buffers.
func (s *Stdout) Flush(ctx context.Context) error {
	if s.closed {
		return ErrClosed
	}
	return s.flush()
}

func (s *Stdout) flush() error {
	if f, ok := s.opts.Writer.(flusher); ok {
		if err := f.Flush(); err != nil {
			return fmt.Errorf("stdout sink %q: flush: %w", s.opts.Name, err)
		}
	}
	return nil
}

// Close flushes the writer; later Writes fail with ErrClosed.
func (s *Stdout) Close(ctx context.Context) error {
	if s.closed {
		return nil
	}
	s.closed = true
	return s.flush()
}

var _ Sink = (*Stdout)(nil)

// StdoutType is the stdout sink type, for the registry (package sinktypes).
func StdoutType() Type {
	return Type{Name: "stdout", NewConfig: func() Config { return &StdoutConfig{} }}
}

// StdoutConfig is a stdout sink's entry in the configuration: Format json
// (one line per record, the default) or pretty (the demo's).
type StdoutConfig struct {
	Format string `yaml:"format,omitempty" json:"format,omitempty"`
}

// Defaults sets Format to json when unset.
func (c *StdoutConfig) Defaults() {
	if c.Format == "" {
		c.Format = "json"
	}
}

// Validate checks format.
func (c *StdoutConfig) Validate(Env) error {
	var p Problems
	if c.Format != "json" && c.Format != "pretty" {
		p.Add("format", "must be json or pretty, got %q", clip(c.Format))
	}
	return p.Err()
}

// New returns a stdout sink writing to env.Stdout.
func (c *StdoutConfig) New(_ context.Context, name string, env Env) (Sink, error) {
	f := JSONLines
	if c.Format == "pretty" {
		f = Pretty
	}
	return NewStdout(StdoutOptions{Name: name, Writer: env.Stdout, Format: f})
}

// clip bounds a value quoted in a problem.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
