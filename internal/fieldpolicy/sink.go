package fieldpolicy

import (
	"bytes"
	"context"
	"fmt"

	"github.com/decryptd/decryptd/internal/sink"
)

// Sink is a sink.Sink that applies a policy to every record before its
// inner sink sees it. The inner sink's promises hold for the records as
// changed; a record the policy cannot apply to (not JSON, a pseudonym
// that cannot be made because the key cannot be loaded) fails the whole
// Write: ErrBadRecord when retrying cannot help, else a transient error
// the pipeline retries. Nothing unfiltered ever reaches the inner sink.
type Sink struct {
	inner  sink.Sink
	policy *Policy
	buf    []sink.Record
}

// Wrap puts p in front of inner.
func Wrap(inner sink.Sink, p *Policy) *Sink { return &Sink{inner: inner, policy: p} }

// Name returns the inner sink's name.
func (s *Sink) Name() string { return s.inner.Name() }

// Write applies the policy to the batch and writes it to the inner sink.
func (s *Sink) Write(ctx context.Context, batch []sink.Record) error {
	if len(batch) == 0 {
		return s.inner.Write(ctx, batch)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sink %q: %w", s.inner.Name(), err)
	}
	for i, r := range batch {
		// What every sink refuses, refused before anything is filtered.
		if len(r.JSON) == 0 || bytes.ContainsAny(r.JSON, "\r\n") {
			return fmt.Errorf("sink %q: record %d (id %q): empty or spanning lines: %w", s.inner.Name(), i, r.ID, sink.ErrBadRecord)
		}
	}
	out := s.buf[:0]
	for _, r := range batch {
		pr, err := s.policy.Apply(ctx, r)
		if err != nil {
			return fmt.Errorf("sink %q: field policy: %w", s.inner.Name(), err)
		}
		out = append(out, pr)
	}
	err := s.inner.Write(ctx, out)
	clear(out)
	s.buf = out[:0]
	return err
}

// Flush flushes the inner sink.
func (s *Sink) Flush(ctx context.Context) error { return s.inner.Flush(ctx) }

// Close closes the inner sink.
func (s *Sink) Close(ctx context.Context) error { return s.inner.Close(ctx) }

var _ sink.Sink = (*Sink)(nil)
