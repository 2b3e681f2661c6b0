package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/consumer"
	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/keyprotect"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/pki"
	"github.com/decryptd/decryptd/internal/pseudonym"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
	"github.com/decryptd/decryptd/internal/rotation"
	"github.com/decryptd/decryptd/internal/sink"
)

// DeadLetterSinkName labels the dead-letter sink in metrics and logs.
const DeadLetterSinkName = "dead_letter"

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
	rot   *rotationParts // nil unless rotation.enabled
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

	sinks, err := p.buildSinks(ctx, o)
	if err != nil {
		return nil, err
	}
	dl, err := p.buildDeadLetter(ctx, o)
	if err != nil {
		return nil, err
	}
	p.pipe, err = pipeline.New(pipeline.Options{
		Opener: opener, Sinks: sinks, DeadLetter: dl,
		MaxBatch: cfg.Batch.MaxRecords, Linger: cfg.Batch.Linger,
		KMSUnwraps: p.unwraps.Load,
		Registerer: o.Registry, Logger: o.Logger,
	})
	if err != nil {
		return nil, err
	}
	// From here on the pipeline's Close flushes and closes the sinks; the
	// closers registered for them on the error path go.
	p.closers = keepOnly(p.closers, "audit log", "kms keyprotect", "registry", "key cache", "rotation publisher", "pseudonymization key")
	return p, nil
}

func keepOnly(cs []namedCloser, names ...string) []namedCloser {
	var out []namedCloser
	for _, c := range cs {
		for _, n := range names {
			if c.name == n {
				out = append(out, c)
			}
		}
	}
	return out
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

func (p *parts) buildSinks(ctx context.Context, o *Options) ([]sink.Sink, error) {
	var out []sink.Sink
	for i, s := range p.cfg.Sinks {
		var sk sink.Sink
		var err error
		switch s.Type {
		case config.SinkFile:
			sk, err = sink.NewFile(sink.FileOptions{Name: s.Name, Path: s.Path, Fsync: fsyncPolicy(s.FsyncEnabled()), MaxBytes: s.MaxBytes, Keep: s.Keep})
		case config.SinkStdout:
			f := sink.JSONLines
			if s.Format == "pretty" {
				f = sink.Pretty
			}
			sk, err = sink.NewStdout(sink.StdoutOptions{Name: s.Name, Writer: o.Stdout, Format: f})
		case config.SinkMQTT:
			var tc *tls.Config
			if tc, err = tlsConfig(s.TLS); err == nil {
				sk, err = sink.NewMQTT(ctx, sink.MQTTOptions{
					Name: s.Name, Broker: s.Broker, AllowPlain: isPlain(s.Broker), TLS: tc,
					ClientID: p.cfg.MQTT.ClientID + "-sink-" + s.Name, Topic: s.Topic,
				})
			}
		case config.SinkHTTP:
			var h *sink.HTTP
			h, err = sink.NewHTTP(sink.HTTPOptions{
				Name: s.Name, URL: s.URL, AllowPlainHTTP: scheme(s.URL) == "http",
				CAFile: s.CAFile, AuthFile: s.AuthHeaderFile, RequestTimeout: s.Timeout,
			})
			if err == nil {
				sk = chunked{Sink: h, max: s.BatchMax}
			}
		case config.SinkKafka, config.SinkPostgres:
			sk, err = p.buildAnalyticsSink(ctx, o, s)
		default:
			err = fmt.Errorf("type %q: not supported", s.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("sinks[%d] (%s): %w", i, s.Name, err)
		}
		p.onClose("sink "+s.Name, func() error { return sk.Close(context.Background()) })
		if sk, err = p.withPolicy(ctx, s, sk); err != nil {
			return nil, fmt.Errorf("sinks[%d] (%s): %w", i, s.Name, err)
		}
		out = append(out, sk)
	}
	return out, nil
}

func (p *parts) buildDeadLetter(ctx context.Context, o *Options) (sink.Sink, error) {
	d := p.cfg.DeadLetter
	var sk sink.Sink
	var err error
	switch d.Type {
	case config.SinkFile:
		if err := mkdirFor(d.Path); err != nil {
			return nil, err
		}
		sk, err = sink.NewFile(sink.FileOptions{Name: DeadLetterSinkName, Path: d.Path, Fsync: fsyncPolicy(d.FsyncEnabled())})
	case config.SinkMQTT:
		broker, t := d.Broker, d.TLS
		if broker == "" {
			broker = p.cfg.MQTT.Brokers[0]
		}
		if t.IsZero() {
			t = p.cfg.MQTT.TLS
		}
		var tc *tls.Config
		if tc, err = tlsConfig(t); err == nil {
			sk, err = sink.NewMQTT(ctx, sink.MQTTOptions{
				Name: DeadLetterSinkName, Broker: broker, AllowPlain: isPlain(broker), TLS: tc,
				ClientID: p.cfg.MQTT.ClientID + "-dead-letter", Topic: d.Topic,
			})
		}
	default:
		err = fmt.Errorf("type %q: not supported", d.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("dead_letter: %w", err)
	}
	p.onClose("dead-letter sink", func() error { return sk.Close(context.Background()) })
	return sk, nil
}

// fsyncPolicy maps the configuration's fsync switch: on, every batch is
// fsynced before its messages are acknowledged; off, the file is fsynced
// in the background at least every second (a crash of the machine, not of
// the process, may lose that second).
func fsyncPolicy(on bool) sink.FsyncPolicy {
	if on {
		return sink.FsyncBatch
	}
	return sink.FsyncInterval
}

// chunked splits a Write into Writes of at most max records (an HTTP
// receiver's batch limit). A failed chunk fails the whole Write, which the
// pipeline retries whole: the receiver may see earlier chunks again, as it
// may after any retry (records carry stable ids).
type chunked struct {
	sink.Sink
	max int
}

func (c chunked) Write(ctx context.Context, batch []sink.Record) error {
	if c.max <= 0 {
		return c.Sink.Write(ctx, batch)
	}
	for len(batch) > 0 {
		n := min(c.max, len(batch))
		if err := c.Sink.Write(ctx, batch[:n]); err != nil {
			return err
		}
		batch = batch[n:]
	}
	return nil
}

// tlsConfig builds a client TLS configuration from the configuration's
// file names: the CA bundle (empty: system roots), an optional client
// certificate (re-read at each handshake, through consumer.TLSFiles, when
// all three files are given).
func tlsConfig(t config.TLS) (*tls.Config, error) {
	if t.CAFile != "" && t.CertFile != "" && t.KeyFile != "" {
		return consumer.TLSFiles{CAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile, ServerName: t.ServerName}.Config()
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if t.CAFile != "" {
		pool, err := pki.LoadPool(t.CAFile)
		if err != nil {
			return nil, err
		}
		c.RootCAs = pool
	}
	if t.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls: load %s: %w", t.CertFile, err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

func scheme(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return ""
	}
	return p.Scheme
}

func isPlain(broker string) bool {
	s := scheme(broker)
	return s == "tcp" || s == "mqtt"
}

// mkdirFor makes the parent directory of path (0700), so a fresh
// installation's var/ works without a manual step.
func mkdirFor(path string) error {
	if path == "" {
		return nil
	}
	return os.MkdirAll(filepath.Dir(path), 0o700)
}
