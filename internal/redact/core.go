package redact

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Core wraps c so that every entry's message, and every string, error and
// Stringer field (those given to With too), pass through Text before c
// encodes them. Other field types (numbers, durations, arrays, objects)
// pass unchanged: they do not carry URLs in decryptd's logs.
func Core(c zapcore.Core) zapcore.Core { return &core{Core: c} }

type core struct{ zapcore.Core }

func (c *core) With(fields []zapcore.Field) zapcore.Core {
	return &core{Core: c.Core.With(fields2(fields))}
}

func (c *core) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *core) Write(e zapcore.Entry, fields []zapcore.Field) error {
	e.Message = Text(e.Message)
	return c.Core.Write(e, fields2(fields))
}

// fields2 returns fields with the redactable ones replaced (a copy when
// any is).
func fields2(fields []zapcore.Field) []zapcore.Field {
	var out []zapcore.Field
	for i, f := range fields {
		g, changed := field(f)
		if !changed {
			continue
		}
		if out == nil {
			out = append([]zapcore.Field(nil), fields...)
		}
		out[i] = g
	}
	if out == nil {
		return fields
	}
	return out
}

func field(f zapcore.Field) (zapcore.Field, bool) {
	switch f.Type {
	case zapcore.StringType:
		if s := Text(f.String); s != f.String {
			return zap.String(f.Key, s), true
		}
	case zapcore.ErrorType:
		if err, ok := f.Interface.(error); ok && err != nil {
			if r := Error(err); r != err {
				return zap.NamedError(f.Key, r), true
			}
		}
	case zapcore.StringerType:
		if s, ok := f.Interface.(fmt.Stringer); ok && s != nil {
			str := stringOf(s)
			if r := Text(str); r != str {
				return zap.String(f.Key, r), true
			}
		}
	}
	return f, false
}

// stringOf calls String, as zap does, without letting a nil receiver's
// panic out.
func stringOf(s fmt.Stringer) (out string) {
	defer func() {
		if recover() != nil {
			out = "<nil>"
		}
	}()
	return s.String()
}
