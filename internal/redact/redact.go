package redact

import (
	"errors"
	"net/url"
	"regexp"
	"strings"
)

// Mark replaces what is removed.
const Mark = "REDACTED"

// URL returns s with its userinfo password, every query value and any
// fragment replaced by Mark (see the package doc). host:port strings and
// other text without credentials come back unchanged.
func URL(s string) string {
	if s == "" {
		return s
	}
	u, err := url.Parse(s)
	if err != nil || u.Opaque != "" || (u.Scheme == "" && u.Host == "" && strings.Contains(s, ":")) {
		// host:port (a Kafka broker) does not parse as a URL, or parses
		// as scheme:opaque; it holds nothing to hide unless it has one of
		// these.
		if strings.ContainsAny(s, "@?#=") {
			return "<" + Mark + ": unparsable URL>"
		}
		return s
	}
	if r := redactParsed(u); r != "" {
		return r
	}
	return s
}

// redactParsed returns u with what it hides replaced, or "" when it holds
// nothing to hide (the caller then keeps the text as it was: url.URL's
// String normalizes, "A://)#" to "a://)", and a redaction that rewrites
// clean text would not give the same text when applied again).
func redactParsed(u *url.URL) string {
	_, hasPassword := u.User.Password()
	if !hasPassword && (u.User == nil || (u.Scheme != "http" && u.Scheme != "https")) &&
		u.RawQuery == "" && !u.ForceQuery && u.Fragment == "" && u.RawFragment == "" {
		return ""
	}
	c := *u
	if c.User != nil {
		name := c.User.Username()
		if _, has := c.User.Password(); has {
			c.User = url.UserPassword(name, Mark)
		} else if c.Scheme == "http" || c.Scheme == "https" {
			c.User = url.User(Mark)
		}
	}
	if c.RawQuery != "" || c.ForceQuery {
		c.RawQuery = query(c.RawQuery)
	}
	if c.Fragment != "" || c.RawFragment != "" {
		c.Fragment, c.RawFragment = Mark, ""
	}
	return c.String()
}

// query keeps every key of a raw query and replaces every value. A part
// without '=' is kept only when it looks like a flag name.
func query(raw string) string {
	parts := strings.Split(raw, "&")
	for i, p := range parts {
		if k, _, ok := strings.Cut(p, "="); ok {
			parts[i] = k + "=" + Mark
			continue
		}
		if !flagLike(p) {
			parts[i] = Mark
		}
	}
	return strings.Join(parts, "&")
}

// flagLike: a bare query part short and plain enough to be a name
// ("?debug"), not a token ("?3f9a...").
func flagLike(s string) bool {
	if len(s) == 0 || len(s) > 16 {
		return len(s) == 0
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

var (
	// A URL with a scheme inside free text; it ends at a space or a
	// character that quotes it (%q, JSON, backticks, <...>).
	urlInText = regexp.MustCompile("[a-zA-Z][a-zA-Z0-9+.-]*://[^\\s\"'<>`\\\\]+")
	// A query pair outside a URL with a scheme ("POST /v1?token=...").
	pairInText = regexp.MustCompile(`([?&][^=&?\s"'<>` + "`" + `]+=)[^&\s"'<>#` + "`" + `]+`)
	// key=value password of a libpq connection string, quoted or not.
	// An unterminated quote runs to the end.
	dsnPassword = regexp.MustCompile(`(?i)\b((?:ssl)?password\s*=\s*)((?:'(?:[^'\\]|\\.)*(?:'|$)|[^\s'` + "`" + `])+)`)
)

// DSN redacts a PostgreSQL connection string, in either form.
func DSN(s string) string {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		return URL(s)
	}
	return dsnPassword.ReplaceAllString(s, "${1}"+Mark)
}

// Text redacts every URL, query pair and key=value password in s.
//
// Text is idempotent: its result is a fixed point of the three rewrites
// below. One pass is not always one (a pass can expose a pair or a URL
// that an earlier rewrite in the same pass had matched differently, as
// "&A://:=:0" shows), so the passes repeat until nothing changes. Every
// pass only hides, never restores, so repeating never weakens the
// redaction; text that has not settled after maxPasses (none is known) is
// replaced whole, which is a fixed point too.
func Text(s string) string {
	if !strings.ContainsAny(s, ":?&=") {
		return s // fast path: nothing that could hold one
	}
	for range maxPasses {
		next := textPass(s)
		if next == s {
			return s
		}
		s = next
	}
	return "<" + Mark + ": text that would not settle>"
}

// maxPasses bounds Text's repetitions; real log text settles in one or
// two.
const maxPasses = 8

// textPass is one pass of Text's three rewrites.
func textPass(s string) string {
	s = urlInText.ReplaceAllStringFunc(s, func(m string) string {
		// A trailing sentence mark is not part of the URL.
		trail := ""
		for len(m) > 0 && strings.ContainsRune(".,;:)]}", rune(m[len(m)-1])) {
			trail = m[len(m)-1:] + trail
			m = m[:len(m)-1]
		}
		return URL(m) + trail
	})
	s = pairInText.ReplaceAllString(s, "${1}"+Mark)
	return dsnPassword.ReplaceAllString(s, "${1}"+Mark)
}

// Error returns err with its text redacted (Text); errors.Is and errors.As
// still reach the original chain. nil stays nil; an error whose text needs
// nothing removed is returned as is.
func Error(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	red := Text(msg)
	if red == msg {
		return err
	}
	return &redacted{msg: red, err: err}
}

type redacted struct {
	msg string
	err error
}

func (e *redacted) Error() string { return e.msg }
func (e *redacted) Unwrap() error { return e.err }

// IsRedacted reports whether err came from Error with something removed.
func IsRedacted(err error) bool {
	var r *redacted
	return errors.As(err, &r)
}
