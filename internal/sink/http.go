package sink

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/decryptd/decryptd/internal/redact"
)

// ErrRejected means the receiver refused the batch for good (an HTTP 4xx
// other than 408 and 429, or a redirect, which the sink does not follow):
// retrying the same batch cannot succeed until the receiver or the
// configuration changes.
var ErrRejected = errors.New("rejected by the receiver")

// HTTPStatusError is the status of a failed POST; errors.As finds it in the
// errors of an HTTP sink's Write. RetryAfter is the receiver's Retry-After
// (429 and 503 only), zero if absent.
type HTTPStatusError struct {
	StatusCode int
	RetryAfter time.Duration
}

func (e *HTTPStatusError) Error() string {
	s := "HTTP " + strconv.Itoa(e.StatusCode)
	if t := http.StatusText(e.StatusCode); t != "" {
		s += " " + t
	}
	if e.RetryAfter > 0 {
		s += " (retry after " + e.RetryAfter.String() + ")"
	}
	return s
}

// HTTPOptions configures an HTTP sink.
type HTTPOptions struct {
	Name string // sink name, required
	// URL receives each batch as one POST; https unless AllowPlainHTTP.
	// It must not carry credentials (use AuthFile).
	URL string
	// AllowPlainHTTP permits an http:// URL (tests, a collector on
	// loopback). Records hold PHI: do not use it across a network.
	AllowPlainHTTP bool

	// TLS is the client TLS configuration (RootCAs, a client certificate
	// for mutual TLS); it is cloned. Nil means system roots.
	TLS *tls.Config
	// CAFile, if set, is a PEM bundle that replaces TLS.RootCAs.
	CAFile string

	// AuthFile, if set, holds a secret (surrounding whitespace trimmed)
	// sent in the AuthHeader of every request. The file is read again
	// when it changes, so a rotated token needs no restart. The value is
	// never logged nor put in an error.
	AuthFile string
	// AuthHeader is the header carrying the secret; default
	// "Authorization".
	AuthHeader string
	// AuthScheme prefixes the secret ("<scheme> <secret>"). It defaults to
	// "Bearer" when AuthHeader is Authorization, and to nothing for any
	// other header (X-Api-Key: <secret>).
	AuthScheme string

	// RequestTimeout bounds one attempt; default 10 s.
	RequestTimeout time.Duration
	// MaxAttempts bounds the attempts inside one Write (5xx, 408, 429 and
	// network errors are retried); then Write fails and the caller retries
	// later. Default 4.
	MaxAttempts int
	// MinBackoff and MaxBackoff bound the wait between attempts (doubling
	// from MinBackoff, with jitter); defaults 200 ms and 5 s.
	MinBackoff, MaxBackoff time.Duration
	// MaxRetryAfter is the longest Retry-After waited for inside Write; a
	// longer one fails the Write at once (the error holds it, see
	// HTTPStatusError). Default 30 s.
	MaxRetryAfter time.Duration
}

func (o *HTTPOptions) validate() (*url.URL, error) {
	if o.Name == "" {
		return nil, errors.New("http sink: name: required")
	}
	errf := func(field, format string, a ...any) error {
		return fmt.Errorf("http sink %q: %s: %s", o.Name, field, fmt.Sprintf(format, a...))
	}
	if o.URL == "" {
		return nil, errf("url", "required")
	}
	u, err := url.Parse(o.URL)
	switch {
	case err != nil:
		return nil, errf("url", "not a URL")
	case u.User != nil:
		return nil, errf("url", "must not carry credentials (use auth_file)")
	case u.Host == "":
		return nil, errf("url", "no host")
	case u.Scheme == "http" && !o.AllowPlainHTTP:
		return nil, errf("url", "must be https (records hold PHI)")
	case u.Scheme != "https" && u.Scheme != "http":
		return nil, errf("url", "scheme %q: want https", u.Scheme)
	}
	for _, d := range []struct {
		field string
		v     *time.Duration
		def   time.Duration
	}{
		{"request_timeout", &o.RequestTimeout, 10 * time.Second},
		{"min_backoff", &o.MinBackoff, 200 * time.Millisecond},
		{"max_backoff", &o.MaxBackoff, 5 * time.Second},
		{"max_retry_after", &o.MaxRetryAfter, 30 * time.Second},
	} {
		if *d.v < 0 {
			return nil, errf(d.field, "must not be negative")
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if o.MaxBackoff < o.MinBackoff {
		return nil, errf("max_backoff", "less than min_backoff")
	}
	switch {
	case o.MaxAttempts < 0:
		return nil, errf("max_attempts", "must not be negative")
	case o.MaxAttempts == 0:
		o.MaxAttempts = 4
	}
	if o.AuthFile == "" && (o.AuthHeader != "" || o.AuthScheme != "") {
		return nil, errf("auth_header", "set without auth_file")
	}
	if o.AuthHeader == "" {
		o.AuthHeader = "Authorization"
	}
	if o.AuthScheme == "" && http.CanonicalHeaderKey(o.AuthHeader) == "Authorization" {
		o.AuthScheme = "Bearer"
	}
	if strings.ContainsAny(o.AuthHeader, " :\r\n") {
		return nil, errf("auth_header", "not a header name")
	}
	return u, nil
}

// HTTP is a Sink POSTing each batch as NDJSON (Content-Type
// application/x-ndjson, one record JSON per line) to a URL. A batch is held
// once the receiver answered 2xx. Retries inside Write carry the same
// Idempotency-Key header (the hex SHA-256 of the batch's record ids, each
// followed by '\n'), so a receiver can drop a batch it already took; a
// receiver must still tolerate repeated records, as a retried Write may
// regroup them. Redirects are not followed (a refusal, ErrRejected): the
// batch and the secret go only to the configured URL.
type HTTP struct {
	opts   HTTPOptions
	url    string
	client *http.Client
	auth   *secretFile
	closed bool

	// sleep waits between attempts; tests replace it.
	sleep func(ctx context.Context, d time.Duration) error
}

// NewHTTP returns an HTTP sink. It reads AuthFile and CAFile once to
// report a bad path now, but makes no request.
func NewHTTP(opts HTTPOptions) (*HTTP, error) {
	u, err := opts.validate()
	if err != nil {
		return nil, err
	}
	var tlsc *tls.Config
	if opts.TLS != nil {
		tlsc = opts.TLS.Clone()
	} else {
		tlsc = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("http sink %q: ca_file: %w", opts.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("http sink %q: ca_file: %s holds no PEM certificate", opts.Name, opts.CAFile)
		}
		tlsc.RootCAs = pool
	}
	s := &HTTP{opts: opts, url: u.String(), sleep: sleepCtx}
	if opts.AuthFile != "" {
		s.auth = &secretFile{path: opts.AuthFile}
		if _, err := s.auth.value(); err != nil {
			return nil, fmt.Errorf("http sink %q: auth_file: %w", opts.Name, err)
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsc
	tr.MaxIdleConnsPerHost = 4
	s.client = &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	return s, nil
}

// Name returns the sink's name.
func (s *HTTP) Name() string { return s.opts.Name }

// Write POSTs the batch, retrying 5xx, 408, 429 and network errors up to
// MaxAttempts with back-off (or the receiver's Retry-After on 429 and 503).
// A 4xx other than 408 and 429 fails at once with ErrRejected. A cancelled
// context ends the request or the wait at once.
func (s *HTTP) Write(ctx context.Context, batch []Record) error {
	if s.closed {
		return ErrClosed
	}
	if err := ContextError(ctx, "http", s.opts.Name); err != nil {
		return err
	}
	if err := CheckBatch(batch); err != nil {
		return fmt.Errorf("http sink %q: %w", s.opts.Name, err)
	}
	if len(batch) == 0 {
		return nil
	}
	body := AppendLines(nil, batch)
	key := idempotencyKey(batch)
	var last error
	for attempt := 1; ; attempt++ {
		auth := ""
		if s.auth != nil {
			v, err := s.auth.value()
			if err != nil {
				return fmt.Errorf("http sink %q: auth_file: %w", s.opts.Name, err)
			}
			auth = withScheme(s.opts.AuthScheme, v)
		}
		wait, err := s.post(ctx, body, key, auth)
		if err == nil {
			return nil
		}
		if cerr := ContextError(ctx, "http", s.opts.Name); cerr != nil {
			return cerr
		}
		if errors.Is(err, ErrRejected) {
			return fmt.Errorf("http sink %q: %w", s.opts.Name, err)
		}
		last = err
		if attempt >= s.opts.MaxAttempts {
			return fmt.Errorf("http sink %q: %d attempts failed, last: %w", s.opts.Name, attempt, last)
		}
		if wait > s.opts.MaxRetryAfter {
			return fmt.Errorf("http sink %q: receiver asks to wait longer than max_retry_after %v: %w", s.opts.Name, s.opts.MaxRetryAfter, last)
		}
		if wait == 0 {
			wait = s.backoff(attempt)
		}
		if err := s.sleep(ctx, wait); err != nil {
			return fmt.Errorf("http sink %q: waiting to retry after %v: %w", s.opts.Name, last, ContextError(ctx, "http", s.opts.Name))
		}
	}
}

// post makes one attempt. It returns the Retry-After to honour (429, 503)
// and an error: nil on 2xx, wrapping ErrRejected when retrying is futile.
func (s *HTTP) post(ctx context.Context, body []byte, key, auth string) (time.Duration, error) {
	actx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("%w: build request: %w", ErrRejected, redact.Error(err))
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("Idempotency-Key", key)
	if auth != "" {
		req.Header.Set(s.opts.AuthHeader, auth)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		// *url.Error names the method and the whole URL, query
		// included (a token there would reach the "sink down" log):
		// redacted here, at the source. It never names the headers.
		return 0, redact.Error(err)
	}
	// Drain a little (at most 64 KiB, whatever the receiver sends) so the
	// connection can be reused; never read the body into memory nor into
	// an error: a receiver may echo records back.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300:
		return 0, nil
	case code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable:
		ra := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		return ra, &HTTPStatusError{StatusCode: code, RetryAfter: ra}
	case code >= 500 || code == http.StatusRequestTimeout:
		return 0, &HTTPStatusError{StatusCode: code}
	default: // 1xx, 3xx, 4xx
		return 0, fmt.Errorf("%w: %w", ErrRejected, &HTTPStatusError{StatusCode: code})
	}
}

// backoff returns the wait before attempt+1: MinBackoff doubled per
// attempt, capped at MaxBackoff, with "equal jitter" (half fixed, half
// random) so that sinks of many daemons do not retry in step.
func (s *HTTP) backoff(attempt int) time.Duration {
	d := s.opts.MinBackoff << min(attempt-1, 30)
	if d <= 0 || d > s.opts.MaxBackoff {
		d = s.opts.MaxBackoff
	}
	half := d / 2
	return half + rand.N(half+1)
}

// Flush does nothing: Write returns only once the receiver answered.
func (s *HTTP) Flush(ctx context.Context) error {
	if s.closed {
		return ErrClosed
	}
	return nil
}

// Close drops idle connections; later Writes fail with ErrClosed.
func (s *HTTP) Close(ctx context.Context) error {
	if !s.closed {
		s.closed = true
		s.client.CloseIdleConnections()
	}
	return nil
}

// idempotencyKey is the hex SHA-256 of the batch's record ids, each
// followed by '\n': the same batch retried gets the same key.
func idempotencyKey(batch []Record) string {
	h := sha256.New()
	for _, r := range batch {
		_, _ = io.WriteString(h, r.ID)
		_, _ = h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// parseRetryAfter reads delay-seconds or an HTTP-date; zero if absent or
// unreadable (the sink's own back-off applies then).
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	// An all-digit value too large for uint64 parses as ErrRange with the
	// maximum, which the cap below handles.
	if secs, err := strconv.ParseUint(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		if secs > 1<<20 { // weeks: far past any MaxRetryAfter, no overflow
			secs = 1 << 20
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// secretFile reads a secret from a file and again whenever the file's size
// or modification time changes. Errors name the file, never its content.
type secretFile struct {
	path    string
	modTime time.Time
	size    int64
	v       string
}

const maxSecretFile = 64 << 10

func (f *secretFile) value() (string, error) {
	st, err := os.Stat(f.path)
	if err != nil {
		return "", err
	}
	if f.v != "" && st.ModTime().Equal(f.modTime) && st.Size() == f.size {
		return f.v, nil
	}
	if st.Size() > maxSecretFile {
		return "", fmt.Errorf("%s: larger than %d bytes", f.path, maxSecretFile)
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return "", err
	}
	v := strings.TrimSpace(string(b))
	clear(b)
	if v == "" {
		return "", fmt.Errorf("%s: empty", f.path)
	}
	if strings.ContainsAny(v, "\r\n\x00") {
		// Would split or break the header line.
		return "", fmt.Errorf("%s: holds a line break or NUL inside the value", f.path)
	}
	f.v, f.modTime, f.size = v, st.ModTime(), st.Size()
	return v, nil
}

var _ Sink = (*HTTP)(nil)

// withScheme prefixes the secret with its scheme unless the file already
// holds the whole header value ("Bearer abc" as well as "abc" work).
func withScheme(scheme, secret string) string {
	if scheme == "" || (len(secret) > len(scheme) && strings.EqualFold(secret[:len(scheme)], scheme) && secret[len(scheme)] == ' ') {
		return secret
	}
	return scheme + " " + secret
}

// Default settings of an HTTP sink's configuration.
const (
	DefaultHTTPBatchMax = 100
	// DefaultHTTPBatchMaxBytes bounds one request body (1 MiB).
	DefaultHTTPBatchMaxBytes = 1 << 20
	DefaultHTTPTimeout       = 10 * time.Second
)

// HTTPType is the http sink type, for the registry (package sinktypes).
func HTTPType() Type {
	return Type{Name: "http", NewConfig: func() Config { return &HTTPConfig{} }}
}

// HTTPConfig is an http sink's entry in the configuration: records POSTed
// as NDJSON batches to URL (https, or http to a loopback host), at most
// BatchMax records (default 100) and BatchMaxBytes of body (default 1 MiB;
// a record larger than that goes alone) per request, each request bounded
// by Timeout (default 10s). AuthHeaderFile holds the Authorization header value;
// CAFile the CA bundle to trust.
type HTTPConfig struct {
	URL            string        `yaml:"url,omitempty" json:"url,omitempty"`
	AuthHeaderFile string        `yaml:"auth_header_file,omitempty" json:"auth_header_file,omitempty"`
	CAFile         string        `yaml:"ca_file,omitempty" json:"ca_file,omitempty"`
	BatchMax       int           `yaml:"batch_max,omitempty" json:"batch_max,omitempty"`
	BatchMaxBytes  int           `yaml:"batch_max_bytes,omitempty" json:"batch_max_bytes,omitempty"`
	Timeout        time.Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
}

// Defaults sets BatchMax and Timeout when unset.
func (c *HTTPConfig) Defaults() {
	if c.BatchMax == 0 {
		c.BatchMax = DefaultHTTPBatchMax
	}
	if c.BatchMaxBytes == 0 {
		c.BatchMaxBytes = DefaultHTTPBatchMaxBytes
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultHTTPTimeout
	}
}

// Validate checks url, batch_max, batch_max_bytes and timeout.
func (c *HTTPConfig) Validate(Env) error {
	var p Problems
	if c.URL == "" {
		p.Add("url", "required for type http")
	} else if s := CheckHTTPURL(c.URL, true, HTTPSecretsGo); s != "" {
		p.Add("url", "%s", s)
	}
	if c.BatchMax < 1 || c.BatchMax > 10000 {
		p.Add("batch_max", "want 1-10000, got %d", c.BatchMax)
	}
	if c.BatchMaxBytes < 4<<10 || c.BatchMaxBytes > 1<<30 {
		p.Add("batch_max_bytes", "want 4096-1073741824, got %d", c.BatchMaxBytes)
	}
	if c.Timeout <= 0 {
		p.Add("timeout", "must be positive, got %s", c.Timeout)
	}
	return p.Err()
}

// ResolvePaths resolves AuthHeaderFile and CAFile.
func (c *HTTPConfig) ResolvePaths(abs func(*string)) {
	abs(&c.AuthHeaderFile)
	abs(&c.CAFile)
}

// New returns the HTTP sink, its Writes split into requests of at most
// BatchMax records and BatchMaxBytes of body (ChunkedBytes).
func (c *HTTPConfig) New(_ context.Context, name string, _ Env) (Sink, error) {
	u, err := url.Parse(c.URL)
	if err != nil {
		return nil, fmt.Errorf("http sink %q: url: not a URL", name)
	}
	h, err := NewHTTP(HTTPOptions{
		Name: name, URL: c.URL, AllowPlainHTTP: u.Scheme == "http",
		CAFile: c.CAFile, AuthFile: c.AuthHeaderFile, RequestTimeout: c.Timeout,
	})
	if err != nil {
		return nil, err
	}
	return ChunkedBytes(h, c.BatchMax, c.BatchMaxBytes), nil
}

// HTTPSecretsGo says where an http sink's credential goes instead of its
// URL.
const HTTPSecretsGo = "put the header value (e.g. \"Bearer TOKEN\") in a file named by auth_header_file, sent as the Authorization header"

// CheckHTTPURL checks an absolute http(s) URL named in the configuration:
// https, or http only to a loopback host when loopbackPlain; no
// credentials: no userinfo, no query parameter that names one (token,
// key, secret, sig, password, apikey, access_token and the like:
// redact.CredentialKey). secretsGo says where the secret goes instead
// ("put the Authorization header value in auth_header_file"); it ends a
// credentials problem. It returns the problem, or "".
func CheckHTTPURL(s string, loopbackPlain bool, secretsGo string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "want an absolute http(s) URL"
	}
	what := redact.CredentialInURL(u)
	if what == "" && u.User != nil {
		what = "userinfo"
	}
	if what != "" {
		p := "must not carry credentials (" + what + "; the file holds no secrets and logs would show them)"
		if secretsGo != "" {
			p += ": " + secretsGo
		}
		return p
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !loopbackPlain || !isLoopback(u.Hostname()) {
			return "must be https (http only to a loopback host)"
		}
	default:
		return "must be https"
	}
	return ""
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
