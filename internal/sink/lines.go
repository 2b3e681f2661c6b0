package sink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
)

// CheckBatch rejects a batch holding a record no sink can frame: empty JSON
// or JSON with a line break (file, stdout and HTTP write one record per
// line). The decrypt stage emits compact JSON, so this is a cheap guard
// against a bug upstream, not a JSON validator.
func CheckBatch(batch []Record) error {
	for i, r := range batch {
		switch {
		case len(r.JSON) == 0:
			return fmt.Errorf("record %d (id %q): empty JSON: %w", i, r.ID, ErrBadRecord)
		case bytes.IndexByte(r.JSON, '\n') >= 0 || bytes.IndexByte(r.JSON, '\r') >= 0:
			return fmt.Errorf("record %d (id %q): JSON spans lines: %w", i, r.ID, ErrBadRecord)
		}
	}
	return nil
}

// AppendLines appends each record's JSON and a '\n' to buf.
func AppendLines(buf []byte, batch []Record) []byte {
	n := 0
	for _, r := range batch {
		n += len(r.JSON) + 1
	}
	buf = slices.Grow(buf, n)
	for _, r := range batch {
		buf = append(buf, r.JSON...)
		buf = append(buf, '\n')
	}
	return buf
}

// linesOK reports whether buf, AppendLines of batch, passes CheckBatch:
// no record empty, exactly one '\n' per record (its terminator), no '\r'.
func linesOK(buf []byte, batch []Record) bool {
	for _, r := range batch {
		if len(r.JSON) == 0 {
			return false
		}
	}
	return bytes.Count(buf, []byte{'\n'}) == len(batch) && bytes.IndexByte(buf, '\r') < 0
}

// ContextError returns nil while ctx is live, else ctx's error prefixed with
// "<kind> sink <name>", so errors.Is(err, context.Canceled) and
// DeadlineExceeded hold; a custom cause is kept beside it.
func ContextError(ctx context.Context, kind, name string) error {
	ce := ctx.Err()
	if ce == nil {
		return nil
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, ce) {
		return fmt.Errorf("%s sink %q: %w (%w)", kind, name, ce, cause)
	}
	return fmt.Errorf("%s sink %q: %w", kind, name, ce)
}
