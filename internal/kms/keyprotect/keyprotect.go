package keyprotect

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	kp "github.com/IBM/keyprotect-go-client"

	"github.com/decryptd/decryptd/internal/kms"
)

const (
	// DefaultAPIKeyEnv is the environment variable read for the API key
	// when Config.APIKeyFile is empty and Config.APIKeyEnv is unset.
	DefaultAPIKeyEnv = "DECRYPTD_KP_API_KEY"
	// DefaultTimeout bounds one provider call (all client retries included).
	DefaultTimeout = 10 * time.Second
	// DefaultMaxInFlight bounds the goroutines running client calls.
	DefaultMaxInFlight = 64
)

// Config selects the Key Protect instance and root key. The API key is not
// in it: only where to read it from.
type Config struct {
	// BaseURL of the Key Protect API, e.g. https://us-south.kms.cloud.ibm.com
	// (a trailing slash is trimmed; the client appends /api/v2/).
	BaseURL string
	// TokenURL of IAM; empty means https://iam.cloud.ibm.com/oidc/token.
	TokenURL string
	// InstanceID is the Key Protect instance (Bluemix-Instance header).
	InstanceID string
	// RootKeyID is the root key, by id or alias, that wraps new DEKs. It may
	// be empty for a provider used only as a RootManager.
	RootKeyID string
	// APIKeyFile names a file holding the API key (whitespace trimmed).
	APIKeyFile string
	// APIKeyEnv names the environment variable holding the API key when
	// APIKeyFile is empty; empty means DefaultAPIKeyEnv.
	APIKeyEnv string
	// Timeout bounds each provider call, retries included, when the
	// caller's context allows longer; zero means DefaultTimeout. It is also
	// the client's per-attempt HTTP timeout.
	Timeout time.Duration
	// KeyRing, if set, is sent as X-Kms-Key-Ring.
	KeyRing string
	// CAFile, if set, names PEM certificates trusted for the Key Protect API
	// besides the system roots (a private endpoint, or kpemu -tls). The
	// client's IAM token fetch ignores it: it trusts the system roots only
	// (SSL_CERT_FILE). Ignored under WithTransport.
	CAFile string
}

// Option adjusts a Provider beyond its Config.
type Option func(*options)

type options struct {
	transport   http.RoundTripper
	maxInFlight int
	getenv      func(string) string
}

// WithTransport replaces the pooled keep-alive transport (for a custom CA,
// say). It should keep connections alive.
func WithTransport(rt http.RoundTripper) Option { return func(o *options) { o.transport = rt } }

// WithMaxInFlight bounds the goroutines that run client calls (default
// DefaultMaxInFlight). A call that finds them all busy waits for one until
// its deadline.
func WithMaxInFlight(n int) Option { return func(o *options) { o.maxInFlight = n } }

// WithGetenv replaces os.Getenv for reading the API key variable.
func WithGetenv(f func(string) string) Option { return func(o *options) { o.getenv = f } }

// Provider is a kms.Provider and kms.RootManager over Key Protect.
type Provider struct {
	client  *kp.Client
	rootID  string
	timeout time.Duration
	sem     chan struct{}
	apiKey  Secret
	idle    interface{ CloseIdleConnections() }
}

// What a Key Protect Provider declares (kms.CapabilitiesOf); retire.go adds
// kms.RootRetirer and kms.RootReplacer.
var (
	_ kms.Provider      = (*Provider)(nil)
	_ kms.RootManager   = (*Provider)(nil)
	_ kms.RootDescriber = (*Provider)(nil)
	_ kms.RootClock     = (*Provider)(nil)
	_ kms.RootNamer     = (*Provider)(nil)
)

// New builds a provider. It reads the API key but makes no network call:
// the daemon starts while Key Protect is unreachable and the key cache
// retries. ctx is not retained.
func New(ctx context.Context, cfg Config, opts ...Option) (*Provider, error) {
	o := options{maxInFlight: DefaultMaxInFlight, getenv: os.Getenv}
	for _, opt := range opts {
		opt(&o)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	switch {
	case cfg.BaseURL == "":
		return nil, errors.New("keyprotect: base_url is required")
	case cfg.InstanceID == "":
		return nil, errors.New("keyprotect: instance_id is required")
	case cfg.Timeout < 0:
		return nil, errors.New("keyprotect: timeout must not be negative")
	case o.maxInFlight < 1:
		return nil, errors.New("keyprotect: max in-flight calls must be at least 1")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	key, err := readAPIKey(cfg, o.getenv)
	if err != nil {
		return nil, err
	}
	rt := o.transport
	if rt == nil {
		t := pooledTransport()
		if cfg.CAFile != "" {
			pool, err := trustFile(cfg.CAFile)
			if err != nil {
				return nil, err
			}
			t.TLSClientConfig.RootCAs = pool
		}
		rt = t
	}
	client, err := kp.NewWithLogger(kp.ClientConfig{
		BaseURL:    cfg.BaseURL,
		TokenURL:   cfg.TokenURL,
		APIKey:     key.Reveal(),
		InstanceID: cfg.InstanceID,
		KeyRing:    cfg.KeyRing,
		Timeout:    cfg.Timeout.Seconds(),
	}, rt, kp.NewLogger(func(...any) {})) // the client's logger would print to stdout
	if err != nil {
		return nil, fmt.Errorf("keyprotect: %s", redact(err.Error(), key))
	}
	p := &Provider{
		client:  client,
		rootID:  cfg.RootKeyID,
		timeout: cfg.Timeout,
		sem:     make(chan struct{}, o.maxInFlight),
		apiKey:  key,
	}
	if c, ok := rt.(interface{ CloseIdleConnections() }); ok {
		p.idle = c
	}
	return p, nil
}

func readAPIKey(cfg Config, getenv func(string) string) (Secret, error) {
	if cfg.APIKeyFile != "" {
		b, err := os.ReadFile(cfg.APIKeyFile)
		if err != nil {
			return "", fmt.Errorf("keyprotect: api key file: %w", err)
		}
		key := strings.TrimSpace(string(b))
		clear(b)
		if key == "" {
			return "", fmt.Errorf("keyprotect: api key file %s is empty", cfg.APIKeyFile)
		}
		return Secret(key), nil
	}
	env := cfg.APIKeyEnv
	if env == "" {
		env = DefaultAPIKeyEnv
	}
	key := strings.TrimSpace(getenv(env))
	if key == "" {
		return "", fmt.Errorf("keyprotect: no API key: set api_key_file or the environment variable %s", env)
	}
	return Secret(key), nil
}

// trustFile is the system roots plus the certificates in the PEM file.
func trustFile(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keyprotect: ca file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("keyprotect: ca file %s holds no PEM certificate", path)
	}
	return pool, nil
}

// pooledTransport keeps connections alive, unlike kp.DefaultTransport.
func pooledTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          32,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
	}
}

// Format prints the provider without its fields: fmt cannot call
// Secret's methods on an unexported field and would print the key raw.
func (p *Provider) Format(f fmt.State, verb rune) {
	fmt.Fprintf(f, "keyprotect.Provider{root: %q}", p.rootID)
}

// RootKeyID is the configured root key (id or alias).
func (p *Provider) RootKeyID() string { return p.rootID }

// Close releases idle connections. Calls still running finish on their own.
func (p *Provider) Close() error {
	if p.idle != nil {
		p.idle.CloseIdleConnections()
	}
	return nil
}

// call runs fn in a goroutine and returns when it does or when ctx (bounded
// by the provider timeout) ends, because the client's IAM fetch ignores
// ctx. discard disposes of a result that arrives after the caller left.
func call[T any](ctx context.Context, p *Provider, op, root string, fn func(context.Context) (T, error), discard func(T)) (T, error) {
	var zero T
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		cancel()
		return zero, deadlineError(op, root, ctx, "no free call slot (earlier calls are stuck, likely in the IAM token fetch)")
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	var mu sync.Mutex
	abandoned := false
	go func() {
		defer func() { <-p.sem }()
		defer cancel() // the client stops retrying once we are gone
		v, err := fn(ctx)
		mu.Lock()
		defer mu.Unlock()
		if abandoned {
			if err == nil && discard != nil {
				discard(v)
			}
			return
		}
		ch <- result{v, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		mu.Lock()
		abandoned = true
		mu.Unlock()
		select {
		case r = <-ch: // finished just as the deadline passed: use it
		default:
			return zero, deadlineError(op, root, ctx, "gave up waiting for key protect")
		}
	}
	if r.err != nil {
		return zero, classify(op, root, r.err, p.apiKey)
	}
	return r.v, nil
}

func (p *Provider) permanent(op, root, msg string) error {
	return &Error{Op: op, RootKeyID: root, Msg: msg}
}

// Wrap seals dek under the newest version of the configured root key.
func (p *Provider) Wrap(ctx context.Context, dek []byte, aad []string) (kms.Wrapped, error) {
	root := p.rootID
	if root == "" {
		return kms.Wrapped{}, p.permanent("wrap", "", "no root key configured")
	}
	if len(dek) == 0 {
		return kms.Wrapped{}, p.permanent("wrap", root, "empty DEK")
	}
	return p.wrap(ctx, "wrap", root, dek, aad)
}

func (p *Provider) wrap(ctx context.Context, op, root string, dek []byte, aad []string) (kms.Wrapped, error) {
	text := make([]byte, base64.StdEncoding.EncodedLen(len(dek)))
	base64.StdEncoding.Encode(text, dek)
	aad = slices.Clone(aad)
	res, err := call(ctx, p, op, root, func(ctx context.Context) (*kp.KeyActionResponse, error) {
		defer clear(text) // only once the client is done with it
		return p.client.WrapV2(ctx, root, text, &aad)
	}, nil)
	if err != nil {
		return kms.Wrapped{}, err
	}
	return p.wrapped(op, root, res)
}

func (p *Provider) wrapped(op, root string, res *kp.KeyActionResponse) (kms.Wrapped, error) {
	if res == nil || res.CipherText == "" {
		return kms.Wrapped{}, p.permanent(op, root, "wrap response holds no ciphertext")
	}
	if res.KeyVersion == nil || res.KeyVersion.ID == "" {
		// Without it a later rewrap cannot tell what is left to do.
		return kms.Wrapped{}, p.permanent(op, root, "wrap response names no key version")
	}
	return kms.Wrapped{RootKeyID: root, RootKeyVersion: res.KeyVersion.ID, Ciphertext: []byte(res.CipherText)}, nil
}

// Unwrap returns the DEK in w; aad must be what Wrap was given. It unwraps
// under the root key named in w (the configured one when w names none).
func (p *Provider) Unwrap(ctx context.Context, w kms.Wrapped, aad []string) ([]byte, error) {
	root := w.RootKeyID
	if root == "" {
		root = p.rootID
	}
	if root == "" || len(w.Ciphertext) == 0 {
		return nil, p.permanent("unwrap", root, "no root key or no ciphertext")
	}
	text, _, err := p.unwrap(ctx, "unwrap", root, w, aad)
	if err != nil {
		return nil, err
	}
	defer clear(text)
	return p.decodeDEK("unwrap", root, text)
}

func (p *Provider) unwrap(ctx context.Context, op, root string, w kms.Wrapped, aad []string) (plain, rewrapped []byte, err error) {
	ct := bytes.Clone(w.Ciphertext)
	aad = slices.Clone(aad)
	type out struct{ plain, rewrapped []byte }
	o, err := call(ctx, p, op, root, func(ctx context.Context) (out, error) {
		pt, rw, err := p.client.UnwrapV2(ctx, root, ct, &aad)
		return out{pt, rw}, err
	}, func(o out) { clear(o.plain) })
	return o.plain, o.rewrapped, err
}

func (p *Provider) decodeDEK(op, root string, text []byte) ([]byte, error) {
	dek := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
	n, err := base64.StdEncoding.Decode(dek, text)
	if err != nil || n == 0 {
		clear(dek)
		return nil, p.permanent(op, root, "unwrap response holds no valid plaintext")
	}
	return dek[:n], nil
}

// Rewrap re-seals w under the newest version of the configured root key.
// v0.17.3 has no rewrap method, so it unwraps (UnwrapV2 tells whether w is
// already under the newest version: no rewrapped ciphertext) and, when it
// is not, wraps again with WrapV2, which names the version. A DEK under
// another root key than the configured one moves to the configured one.
func (p *Provider) Rewrap(ctx context.Context, w kms.Wrapped, aad []string) (kms.Wrapped, error) {
	from := w.RootKeyID
	if from == "" {
		from = p.rootID
	}
	to := p.rootID
	if to == "" {
		to = from
	}
	if from == "" || len(w.Ciphertext) == 0 {
		return kms.Wrapped{}, p.permanent("rewrap", from, "no root key or no ciphertext")
	}
	// One deadline for both steps.
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	text, rewrapped, err := p.unwrap(ctx, "rewrap", from, w, aad)
	if err != nil {
		return kms.Wrapped{}, err
	}
	defer clear(text)
	if len(rewrapped) == 0 && from == to {
		w.RootKeyID = from
		w.Ciphertext = bytes.Clone(w.Ciphertext)
		return w, nil
	}
	dek, err := p.decodeDEK("rewrap", from, text)
	if err != nil {
		return kms.Wrapped{}, err
	}
	defer clear(dek)
	return p.wrap(ctx, "rewrap", to, dek, aad)
}
