package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/keyprotect"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
	"github.com/decryptd/decryptd/internal/rotation"
	"github.com/decryptd/decryptd/internal/sink"
)

// DeadLetterSinkName labels the dead-letter sink in metrics and logs.
const DeadLetterSinkName = config.DeadLetterSinkName

// parts is everything below the consumer, built in order; closers release
// them in reverse.
type parts struct {
	cfg     *config.Config
	log     *zap.Logger
	audit   *audit.Writer
	kms     kms.Provider
	store   registry.Store
	cache   *keycache.Cache
	pipe    *pipeline.Pipeline
	rot     *rotationParts // nil unless rotation.enabled
	unwraps atomic.Uint64
	closers []namedCloser
}

type namedCloser struct {
	name string
	fn   func() error
}

func (p *parts) onClose(name string, fn func() error) {
	p.closers = append(p.closers, namedCloser{name, fn})
}

// closeAll releases the parts in reverse order of building, joining errors.
func (p *parts) closeAll() error {
	var errs []error
	for i := len(p.closers) - 1; i >= 0; i-- {
		if err := p.closers[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", p.closers[i].name, err))
		}
	}
	p.closers = nil
	return errors.Join(errs...)
}

// build makes every part below the consumer. On error, what was built is
// released.
func build(ctx context.Context, o *Options) (_ *parts, err error) {
	cfg := o.Config
	p := &parts{cfg: cfg, log: o.Logger}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.closeAll())
		}
	}()

	if err := mkdirFor(cfg.Audit.Path); err != nil {
		return nil, err
	}
	aw, err := audit.Open(ctx, cfg.Audit.Path, audit.WithActor("decryptd"))
	if err != nil {
		return nil, err
	}
	p.audit = aw
	p.onClose("audit log", aw.Close)

	switch cfg.KMS.Provider {
	case config.ProviderLocal:
		lp, err := local.Open(cfg.KMS.Local.RootKeyFile)
		if err != nil {
			return nil, fmt.Errorf("kms local: %w", err)
		}
		p.kms = lp
	case config.ProviderKeyProtect:
		k := cfg.KMS.KeyProtect
		getenv := func(name string) string { v, _ := o.env(name); return v }
		kp, err := keyprotect.New(ctx, keyprotect.Config{
			BaseURL: k.BaseURL, TokenURL: k.TokenURL, InstanceID: k.InstanceID, RootKeyID: k.RootKeyID,
			APIKeyFile: k.APIKeyFile, APIKeyEnv: k.APIKeyEnv, Timeout: k.Timeout, KeyRing: k.KeyRing,
		}, keyprotect.WithGetenv(getenv))
		if err != nil {
			return nil, fmt.Errorf("kms keyprotect: %w", err)
		}
		p.kms = kp
		p.onClose("kms keyprotect", kp.Close)
	default:
		return nil, fmt.Errorf("kms.provider %q: not supported", cfg.KMS.Provider)
	}

	switch cfg.Registry.Driver {
	case config.DriverFile:
		if err := mkdirFor(cfg.Registry.Path); err != nil {
			return nil, err
		}
		p.store, err = filestore.Open(ctx, cfg.Registry.Path, filestore.WithLogger(o.Logger.With(zap.String("component", "registry"))))
	case config.DriverPostgres:
		p.store, err = pgstore.Open(ctx, cfg.Registry.DSN.Reveal(), pgstore.WithLogger(o.Logger.With(zap.String("component", "registry"))))
	default:
		err = fmt.Errorf("registry.driver %q: not supported", cfg.Registry.Driver)
	}
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	p.onClose("registry", p.store.Close)

	c := cfg.Cache
	p.cache, err = keycache.New(keycache.Options{
		Registry: p.store, KMS: p.kms, Changes: p.store,
		Audit:      keycache.AuditFunc(p.recordUnwrap),
		Registerer: o.Registry, Logger: o.Logger,
		TTL: c.TTL, RefreshAhead: c.RefreshAhead, StaleLimit: c.StaleLimit, NegativeTTL: c.NegativeTTL,
		MaxEntries: c.MaxEntries, MaxConcurrentUnwraps: c.MaxConcurrentUnwraps,
	})
	if err != nil {
		return nil, err
	}
	p.onClose("key cache", p.cache.Close)

	d := cfg.Decrypt
	dec, err := decrypt.New(p.cache, decrypt.Options{
		MaxMessageBytes: d.MaxMessageBytes, TopicPattern: d.TopicPattern,
		ReplayEntries: d.ReplayWindowEntries, ReplayMaxAge: d.ReplayWindowAge, ClockSkew: d.ClockSkew,
	})
	if err != nil {
		return nil, err
	}

	var opener pipeline.Opener = dec
	if cfg.Rotation.Enabled {
		if p.rot, err = p.buildRotation(o); err != nil {
			return nil, fmt.Errorf("rotation: %w", err)
		}
		// Every record that opened is observed (adoption, message counts).
		opener = rotation.ObservingOpener{Opener: dec, Tracker: p.rot.tracker}
		p.onClose("rotation publisher", func() error { p.rot.publisher.Close(); return nil })
	}

	sinks, err := buildSinks(ctx, cfg, o.Stdout)
	if err != nil {
		return nil, err
	}
	p.pipe, err = pipeline.New(pipeline.Options{
		Opener: opener, Sinks: sinks[1:], DeadLetter: sinks[0],
		MaxBatch: cfg.Batch.MaxRecords, Linger: cfg.Batch.Linger,
		KMSUnwraps: p.unwraps.Load,
		Registerer: o.Registry, Logger: o.Logger,
	})
	if err != nil {
		closeSinks(sinks)
		return nil, err
	}
	// From here on the pipeline's Close flushes and closes the sinks.
	return p, nil
}

// recordUnwrap writes one key cache unwrap to the audit log and counts it.
func (p *parts) recordUnwrap(ctx context.Context, ev keycache.UnwrapEvent) {
	p.unwraps.Add(1)
	detail := ev.Trigger
	if ev.DeviceID != "" {
		detail += " device " + ev.DeviceID
	}
	if _, err := p.audit.Append(context.WithoutCancel(ctx), audit.Event{
		Time: ev.Time, Action: audit.ActionUnwrap,
		KeyID: ev.KeyID, KeyVersion: ev.Version, RootKeyID: ev.RootKeyID, RootKeyVersion: ev.RootKeyVersion,
		Result: string(ev.Result), DurationMS: audit.Millis(ev.Duration), Detail: detail,
	}); err != nil {
		// The unwrap happened; that it is not on record is an incident.
		p.log.Error("audit log append failed for a KMS unwrap", zap.String("component", "audit"), zap.Error(err))
	}
}

// buildSinks builds the dead-letter sink, then every configured sink, each
// through its type's configuration (sink.Config.New); the dead-letter sink
// comes first in the result. On error, what was built is closed.
func buildSinks(ctx context.Context, cfg *config.Config, stdout io.Writer) (_ []sink.Sink, err error) {
	dl, probs := cfg.DeadLetterSink()
	if len(probs) > 0 {
		return nil, fmt.Errorf("dead_letter: %w", &config.ValidationError{Problems: probs})
	}
	entries := append([]config.Sink{dl}, cfg.Sinks...)
	var out []sink.Sink
	defer func() {
		if err != nil {
			closeSinks(out)
		}
	}()
	for i, e := range entries {
		if e.Config == nil {
			return nil, fmt.Errorf("sinks[%d] (%s): type %q: not registered", i-1, e.Name, e.Type)
		}
		env := cfg.SinkEnv(cfg.SinkClientID(e.Name))
		env.Stdout = stdout
		s, err := e.Config.New(ctx, e.Name, env)
		if err != nil {
			if i == 0 {
				return nil, fmt.Errorf("dead_letter: %w", err)
			}
			return nil, fmt.Errorf("sinks[%d] (%s): %w", i-1, e.Name, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func closeSinks(sinks []sink.Sink) {
	for _, s := range sinks {
		_ = s.Close(context.Background())
	}
}

// tlsConfig builds a client TLS configuration from the configuration's
// file names (tlsfiles.Client.Config).
func tlsConfig(t config.TLS) (*tls.Config, error) { return t.Config() }

// mkdirFor makes the parent directory of path (0700), so a fresh
// installation's var/ works without a manual step.
func mkdirFor(path string) error {
	if path == "" {
		return nil
	}
	return os.MkdirAll(filepath.Dir(path), 0o700)
}
