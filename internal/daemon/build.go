package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/health"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/pseudonym"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/rotation"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/spool"
	"github.com/decryptd/decryptd/internal/wire"
)

// DeadLetterSinkName labels the dead-letter sink in metrics and logs.
const DeadLetterSinkName = config.DeadLetterSinkName

// parts is everything below the consumer, built in order; closers release
// them in reverse.
type parts struct {
	cfg   *config.Config
	log   *zap.Logger
	audit *audit.Writer
	kms   kms.Provider
	store registry.Store
	cache *keycache.Cache
	pipe  *pipeline.Pipeline
	rot   *rotationParts     // nil unless rotation.enabled
	h     *health.Tracker    // degraded state by cause
	dec   *decrypt.Decryptor // the replay window an input may rebuild (Kafka)
	// pseudonyms are the pseudonymization keys the field policies use, by
	// name.
	pseudonyms map[string]*pseudonym.Key
	unwraps    atomic.Uint64
	closers    []namedCloser
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

// build makes every part below the inputs, from the leaves up: the
// stores (audit log, KMS, registry), the key cache, the opener (decryptor,
// observed by rotation when enabled), the sinks and the pipeline, each
// reporting its state to h. On error, what was built is released.
func build(ctx context.Context, o *Options, h *health.Tracker) (_ *parts, err error) {
	p := &parts{cfg: o.Config, log: o.Logger, h: h}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.closeAll())
		}
	}()
	if err := p.openStores(ctx, o); err != nil {
		return nil, err
	}
	if err := p.buildCache(o); err != nil {
		return nil, err
	}
	opener, err := p.buildOpener(o)
	if err != nil {
		return nil, err
	}
	if err := p.buildPipeline(ctx, o, opener); err != nil {
		return nil, err
	}
	return p, nil
}

// openStores opens the audit log, the KMS provider and the registry
// (package wire, as every binary does).
func (p *parts) openStores(ctx context.Context, o *Options) error {
	cfg := p.cfg
	aw, err := wire.OpenAudit(ctx, cfg.Audit.Path, "decryptd")
	if err != nil {
		return err
	}
	p.audit = aw
	p.onClose("audit log", aw.Close)

	k, err := wire.OpenKMS(ctx, cfg.KMS, wire.KMSOptions{Getenv: func(name string) string { v, _ := o.env(name); return v }})
	if err != nil {
		return err
	}
	p.kms = k.Provider
	p.onClose("kms", k.Close)
	// A KMS down at start is waited for, with backoff, instead of being
	// found by every device's first message (retryStart).
	if _, err := retryStart(ctx, o.Logger, p.h, health.KMS, "kms "+cfg.KMS.Provider, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, probeKMS(ctx, cfg.KMS, p.kms)
	}, kmsPermanent); err != nil {
		return fmt.Errorf("kms %s: %w", cfg.KMS.Provider, err)
	}

	// PostgreSQL down at start (restarting with the pods) is waited for,
	// with backoff, instead of ending the daemon (retryStart).
	p.store, err = retryStart(ctx, o.Logger, p.h, health.Registry, "registry "+cfg.Registry.Driver, func(ctx context.Context) (registry.Store, error) {
		return wire.OpenRegistry(ctx, cfg.Registry, wire.RegistryOptions{
			Logger: o.Logger.With(zap.String("component", "registry")), Watch: true,
			ListenerState: func(up bool) {
				p.h.Set(health.Registry, "listener", !up, "change feed connection lost")
			},
		})
	}, func(err error) bool { return cfg.Registry.Driver != config.DriverPostgres || pgPermanent(err) })
	if err != nil {
		return err
	}
	p.onClose("registry", p.store.Close)
	return nil
}

func (p *parts) buildCache(o *Options) (err error) {
	c := p.cfg.Cache
	// The cache's reads of the registry and unwraps by the KMS tell the
	// health tracker whether either is reachable.
	reg := registryHealth{Store: p.store, h: p.h}
	p.cache, err = keycache.New(keycache.Options{
		Registry: reg, KMS: kmsHealth{Unwrapper: p.kms, h: p.h}, Changes: reg,
		Audit:      keycache.AuditFunc(p.recordUnwrap),
		Registerer: o.Registry, Logger: o.Logger,
		TTL: c.TTL, RefreshAhead: c.RefreshAhead, StaleLimit: c.StaleLimit, NegativeTTL: c.NegativeTTL,
		MaxEntries: c.MaxEntries, MaxConcurrentUnwraps: c.MaxConcurrentUnwraps,
	})
	if err != nil {
		return err
	}
	p.onClose("key cache", p.cache.Close)
	return nil
}

// buildOpener makes the decryptor; with rotation enabled, every record
// that opens is observed by the rotation tracker (adoption, message
// counts).
func (p *parts) buildOpener(o *Options) (pipeline.Opener, error) {
	d := p.cfg.Decrypt
	dec, err := decrypt.New(p.cache, decrypt.Options{
		MaxMessageBytes: d.MaxMessageBytes, TopicPattern: d.TopicPattern,
		ReplayEntries: d.ReplayWindowEntries, ReplayMaxAge: d.ReplayWindowAge, ClockSkew: d.ClockSkew,
	})
	if err != nil {
		return nil, err
	}
	p.dec = dec
	if !p.cfg.Rotation.Enabled {
		return dec, nil
	}
	if p.rot, err = p.buildRotation(o); err != nil {
		return nil, fmt.Errorf("rotation: %w", err)
	}
	p.onClose("rotation publisher", func() error { p.rot.publisher.Close(); return nil })
	return rotation.ObservingOpener{Opener: dec, Tracker: p.rot.tracker}, nil
}

// buildPipeline builds the sinks and the pipeline, which from then on
// owns them (its Close flushes and closes them).
func (p *parts) buildPipeline(ctx context.Context, o *Options, opener pipeline.Opener) error {
	sinks, err := buildSinks(ctx, p.cfg, o.Stdout)
	if err != nil {
		return err
	}
	for i, e := range p.cfg.Sinks {
		if sinks[i+1], err = p.withPolicy(ctx, e, sinks[i+1]); err != nil {
			closeSinks(sinks)
			return fmt.Errorf("sinks[%d] (%s): %w", i, e.Name, err)
		}
	}
	sp, err := openSpool(p.cfg.Spool, o)
	if err != nil {
		closeSinks(sinks)
		return err
	}
	p.pipe, err = pipeline.New(pipeline.Options{
		Opener: opener, Sinks: sinks[1:], DeadLetter: sinks[0],
		MaxBatch: p.cfg.Batch.MaxRecords, MaxBatchBytes: p.cfg.Batch.MaxBytes, Linger: p.cfg.Batch.Linger,
		Spool: sp, KeyWait: p.cfg.Spool.KeyWait,
		KMSUnwraps: p.unwraps.Load,
		SinkState: func(name string, up bool, _ error) {
			p.h.Set(health.Sink, name, !up, "down")
		},
		Registerer: o.Registry, Logger: o.Logger,
	})
	if err != nil {
		closeSinks(sinks)
		if sp != nil {
			sp.Close()
		}
		return err
	}
	return nil
}

// openSpool opens the key-pending spool when the configuration turns it on
// (nil otherwise); the pipeline owns it from then on (its Close closes
// it). Whatever a previous process left spooled is replayed once the
// pipeline runs.
func openSpool(c config.Spool, o *Options) (*spool.Spool, error) {
	if !c.On() {
		return nil, nil
	}
	sp, err := spool.Open(spool.Options{
		Dir: c.Dir, MaxBytes: c.MaxBytes,
		MinBackoff: min(spool.DefaultMinBackoff, c.MaxBackoff), MaxBackoff: c.MaxBackoff,
		Registerer: o.Registry, Logger: o.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("spool.dir: %w", err)
	}
	return sp, nil
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
