package redact_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/decryptd/decryptd/internal/redact"
)

func TestURL(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"https://sink.example/v1", "https://sink.example/v1"},
		{"https://sink.example/v1?token=s3cr3t", "https://sink.example/v1?token=REDACTED"},
		{"https://h/v1?a=1&Token=s3cr3t&b=", "https://h/v1?a=REDACTED&Token=REDACTED&b=REDACTED"},
		{"https://h/p?debug", "https://h/p?debug"},
		{"https://h/p?3f9a0c1e2d4b5a6f7e8d", "https://h/p?REDACTED"},
		{"https://user:pw@h:8443/x", "https://user:REDACTED@h:8443/x"},
		{"https://ghp_tokenasuser@github.com/x", "https://REDACTED@github.com/x"},
		{"https://h/cb#access_token=abc", "https://h/cb#REDACTED"},
		{"postgres://app:pw@db:5432/reg?sslmode=verify-full&password=pw2", "postgres://app:REDACTED@db:5432/reg?sslmode=REDACTED&password=REDACTED"},
		{"ssl://broker:8883", "ssl://broker:8883"},
		{"ssl://u:p@broker:8883", "ssl://u:REDACTED@broker:8883"},
		{"127.0.0.1:9092", "127.0.0.1:9092"},
		{"kafka-0.kafka:9092", "kafka-0.kafka:9092"},
		{"user:pw@host:5432?x=y", "<REDACTED: unparsable URL>"},
		{"%zz://bad?token=x", "<REDACTED: unparsable URL>"},
	} {
		if got := redact.URL(c.in); got != c.want {
			t.Errorf("URL(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestDSN(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"host=db user=app dbname=reg sslmode=verify-full", "host=db user=app dbname=reg sslmode=verify-full"},
		{"host=db user=app password=s3cr3t dbname=reg", "host=db user=app password=REDACTED dbname=reg"},
		{"host=db password = 's3 cr\\'et' user=app", "host=db password = REDACTED user=app"},
		{"host=db PASSWORD=x sslpassword=y", "host=db PASSWORD=REDACTED sslpassword=REDACTED"},
		{"postgres://app:s3cr3t@db/reg", "postgres://app:REDACTED@db/reg"},
		{"postgresql://db/reg?password=s3cr3t", "postgresql://db/reg?password=REDACTED"},
	} {
		if got := redact.DSN(c.in); got != c.want {
			t.Errorf("DSN(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestText(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"no url here", "no url here"},
		{`Post "https://h/v1?token=s3cr3t": dial tcp 10.0.0.1:443: connect: connection refused`,
			`Post "https://h/v1?token=REDACTED": dial tcp 10.0.0.1:443: connect: connection refused`},
		{"see https://u:pw@h/x.", "see https://u:REDACTED@h/x."},
		{"POST /v1?token=s3cr3t&x=1 failed", "POST /v1?token=REDACTED&x=REDACTED failed"},
		{"connect host=db password=s3cr3t failed", "connect host=db password=REDACTED failed"},
		{"a (postgres://a:b@h/d) b", "a (postgres://a:REDACTED@h/d) b"},
	} {
		if got := redact.Text(c.in); got != c.want {
			t.Errorf("Text(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestErrorURLError: the error http.Client returns names the whole URL;
// Error removes the token and keeps the chain.
func TestErrorURLError(t *testing.T) {
	req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:1/v1?token=s3cr3t", nil)
	_, err := http.DefaultClient.Do(req)
	if err == nil || !strings.Contains(err.Error(), "s3cr3t") {
		t.Fatalf("want an error naming the token, got %v", err)
	}
	r := redact.Error(fmt.Errorf("sink: %w", err))
	if strings.Contains(r.Error(), "s3cr3t") {
		t.Fatalf("token left in %q", r)
	}
	var ue *url.Error
	if !errors.As(r, &ue) {
		t.Fatal("chain lost")
	}
	if !redact.IsRedacted(r) {
		t.Fatal("IsRedacted false")
	}
	plain := errors.New("plain")
	if redact.Error(plain) != plain || redact.Error(nil) != nil {
		t.Fatal("an error with nothing to remove must come back as is")
	}
}

func TestCredentialInURL(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"https://h/v1", ""},
		{"https://h/v1?format=ndjson&api-version=2", ""},
		{"https://h/v1?token=x", `query parameter "token"`},
		{"https://h/v1?a=1&ACCESS_TOKEN=x", `query parameter "ACCESS_TOKEN"`},
		{"https://h/v1?X-Api-Key=x", `query parameter "X-Api-Key"`},
		{"https://h/v1?api_key=x", `query parameter "api_key"`},
		{"https://h/v1?apikey=x", `query parameter "apikey"`},
		{"https://h/v1?key=x", `query parameter "key"`},
		{"https://h/v1?sig=x", `query parameter "sig"`},
		{"https://h/v1?Signature=x", `query parameter "Signature"`},
		{"https://h/v1?X-Amz-Signature=x", `query parameter "X-Amz-Signature"`},
		{"https://h/v1?secret=x", `query parameter "secret"`},
		{"https://h/v1?client_secret=x", `query parameter "client_secret"`},
		{"https://h/v1?password=x", `query parameter "password"`},
		{"https://h/v1?passwd=x", `query parameter "passwd"`},
		{"https://h/v1?auth=x", `query parameter "auth"`},
		{"https://h/v1?Authorization=x", `query parameter "Authorization"`},
		{"https://h/v1?x%2Dapi%2Dkey=x", `query parameter "x-api-key"`},
		{"https://u:p@h/v1", "a password in its userinfo"},
		{"https://u@h/v1", ""},
	} {
		u, err := url.Parse(c.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := redact.CredentialInURL(u); got != c.want {
			t.Errorf("CredentialInURL(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestCore: a logger built over Core writes no token, whatever the field.
func TestCore(t *testing.T) {
	obs, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(redact.Core(obs)).With(zap.String("sink_url", "https://h/v1?token=s3cr3t"))
	req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:1/v1?token=s3cr3t", nil)
	_, err := http.DefaultClient.Do(req)
	u, _ := url.Parse("https://u:s3cr3t@h/")
	log.Warn("sink down at https://h/v1?token=s3cr3t",
		zap.Error(err), zap.NamedError("cause", err), zap.Stringer("url", u),
		zap.String("dsn", "host=db password=s3cr3t"), zap.Int("n", 3))
	for _, e := range logs.All() {
		text := e.Message
		for k, v := range e.ContextMap() {
			text += fmt.Sprintf(" %s=%v", k, v)
		}
		if strings.Contains(text, "s3cr3t") {
			t.Fatalf("secret in log: %s", text)
		}
		if e.ContextMap()["n"] != int64(3) {
			t.Fatalf("other fields must pass: %v", e.ContextMap())
		}
	}
	if logs.Len() != 1 {
		t.Fatalf("%d entries", logs.Len())
	}
}

func FuzzText(f *testing.F) {
	for _, s := range []string{"https://u:p@h/x?token=t#f", "host=db password='x y'", "a?b=c&d", "127.0.0.1:9092"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := redact.Text(s)
		if redact.Text(out) != out {
			t.Fatalf("not idempotent: %q -> %q -> %q", s, out, redact.Text(out))
		}
		_ = redact.URL(s)
		_ = redact.DSN(s)
		if u, err := url.Parse(s); err == nil {
			_ = redact.CredentialInURL(u)
		}
	})
}
