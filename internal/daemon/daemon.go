package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/consumer"
	"github.com/decryptd/decryptd/internal/pipeline"
)

// Options are what Run and New need besides the context.
type Options struct {
	// Config is a validated configuration (config.Load). Required.
	Config *config.Config
	// Logger is the root logger (nil: none). Each part adds its component.
	Logger *zap.Logger
	// Registry receives every metric and is served on /metrics. Nil: New
	// makes one. The Go and process collectors and decryptd_build_info are
	// added to it.
	Registry *prometheus.Registry
	// Version is reported by decryptd_build_info (default "dev").
	Version string
	// Stdout is where stdout sinks write (default os.Stdout).
	Stdout io.Writer
	// Env looks up environment variables (the Key Protect API key when
	// kms.keyprotect.api_key_env names one); default os.LookupEnv.
	Env func(string) (string, bool)
}

func (o *Options) withDefaults() error {
	if o.Config == nil {
		return errors.New("daemon: Options.Config is required")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Env == nil {
		o.Env = os.LookupEnv
	}
	return nil
}

func (o *Options) env(name string) (string, bool) { return o.Env(name) }

// Daemon is one built decryptd: New builds it, Run runs it until its
// context ends, then shuts it down.
type Daemon struct {
	o        Options
	log      *zap.Logger
	parts    *parts
	consumer *consumer.Consumer
	ln       net.Listener
	srv      *http.Server
	stopping atomic.Bool
	ran      atomic.Bool
}

// Run builds the daemon and runs it until ctx ends, then shuts it down
// within the configured shutdown_timeout.
func Run(ctx context.Context, o Options) error {
	d, err := New(ctx, o)
	if err != nil {
		return err
	}
	return d.Run(ctx)
}

// New builds every part and binds the HTTP listener, but receives nothing
// yet: Run starts the work. ctx bounds the building only (registry lock,
// broker connections of MQTT sinks). If Run is never called, Close
// releases what New built.
func New(ctx context.Context, o Options) (_ *Daemon, err error) {
	if err := o.withDefaults(); err != nil {
		return nil, err
	}
	if err := registerProcessMetrics(o.Registry, o.Version); err != nil {
		return nil, err
	}
	p, err := build(ctx, &o)
	if err != nil {
		return nil, err
	}
	d := &Daemon{o: o, log: o.Logger.With(zap.String("component", "daemon")), parts: p}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.closeParts(context.Background()))
		}
	}()

	tc, err := tlsConfig(o.Config.MQTT.TLS)
	if err != nil {
		return nil, fmt.Errorf("mqtt.tls: %w", err)
	}
	m := o.Config.MQTT
	d.consumer, err = consumer.New(consumer.Options{
		Brokers: m.Brokers, ClientID: m.ClientID, Topics: m.Topics, SharedGroup: m.SharedGroup,
		TopicPattern: o.Config.Decrypt.TopicPattern,
		TLS:          tc, AllowPlainTCP: m.AllowPlaintext,
		KeepAlive: m.KeepAlive, ConnectTimeout: m.ConnectTimeout,
		MaxInFlight: m.MaxInFlight, Workers: m.Workers,
		UnsubscribeOnShutdown: m.UnsubscribeOnShutdown,
		ShutdownTimeout:       o.Config.ShutdownTimeout,
		Logger:                o.Logger, Registerer: o.Registry,
	}, p.pipe)
	if err != nil {
		return nil, err
	}

	d.ln, err = net.Listen("tcp", o.Config.Metrics.Listen)
	if err != nil {
		return nil, fmt.Errorf("metrics.listen: %w", err)
	}
	d.srv = &http.Server{Handler: d.handler(), ReadHeaderTimeout: 10 * time.Second}
	return d, nil
}

// Addr is the HTTP listener's bound address (the actual port when the
// configuration asked for port 0).
func (d *Daemon) Addr() net.Addr { return d.ln.Addr() }

// KMSUnwraps is how many KMS unwraps the key cache has made.
func (d *Daemon) KMSUnwraps() uint64 { return d.parts.unwraps.Load() }

// Ready reports what /readyz reports: MQTT connected and subscribed, the
// registry loaded (it is, once New returned), and not shutting down.
func (d *Daemon) Ready() bool {
	return !d.stopping.Load() && d.consumer.Ready()
}

// Run runs the daemon until ctx ends or a part fails, then shuts it down
// (see the package doc for the order) within shutdown_timeout, and returns
// the failure and every shutdown error, joined. Call it once.
func (d *Daemon) Run(ctx context.Context) error {
	if !d.ran.CompareAndSwap(false, true) {
		return errors.New("daemon: Run called twice")
	}
	var mu sync.Mutex
	var errs []error
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}

	g, gctx := errgroup.WithContext(ctx)
	serveDone := make(chan struct{})
	go func() {
		defer close(serveDone)
		if err := d.srv.Serve(d.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fail(fmt.Errorf("http: %w", err))
		}
	}()
	d.log.Info("serving", zap.String("http", d.Addr().String()), zap.String("version", d.o.Version))

	g.Go(func() error {
		// Returns nil when gctx ends; an error only if it cannot start.
		if err := d.parts.cache.Run(gctx); err != nil {
			fail(err)
			return err
		}
		return nil
	})
	g.Go(func() error {
		// The consumer ends only through Shutdown below, which uses the
		// shutdown deadline rather than this (already ended) context.
		err := d.consumer.Run(context.WithoutCancel(gctx))
		if err != nil && !d.stopping.Load() {
			fail(fmt.Errorf("mqtt: %w", err))
			return err
		}
		return nil
	})
	g.Go(func() error {
		select {
		case <-gctx.Done():
		case <-serveDone:
			// The HTTP server failed: stop everything.
			return errors.New("http server stopped")
		}
		return nil
	})
	// Rotation (rotation.enabled): the tracker runs until the consumer has
	// stopped (it observes the last in-flight records, then flushes its
	// counts); the controller stops leading as soon as shutdown starts.
	// Both end before the registry and the audit log close.
	var rotWG sync.WaitGroup
	tctx, stopTracker := context.WithCancel(context.WithoutCancel(gctx))
	defer stopTracker()
	if r := d.parts.rot; r != nil {
		rotWG.Add(2)
		go func() {
			defer rotWG.Done()
			r.runTracker(tctx)
		}()
		go func() {
			defer rotWG.Done()
			_ = r.controller.Run(gctx)
		}()
	}
	g.Go(func() error {
		<-gctx.Done()
		d.stopping.Store(true)
		d.log.Info("shutting down", zap.Duration("deadline", d.o.Config.ShutdownTimeout))
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.o.Config.ShutdownTimeout)
		defer cancel()
		if err := d.consumer.Shutdown(sctx); err != nil {
			fail(err)
		}
		stopTracker()
		rotDone := make(chan struct{})
		go func() { rotWG.Wait(); close(rotDone) }()
		select {
		case <-rotDone:
		case <-sctx.Done():
			fail(errors.New("rotation: did not stop within the shutdown deadline"))
		}
		if err := d.closeParts(sctx); err != nil {
			fail(err)
		}
		if err := d.srv.Shutdown(sctx); err != nil {
			fail(fmt.Errorf("http: shutdown: %w", err))
			_ = d.srv.Close()
		}
		return nil
	})
	_ = g.Wait()
	<-serveDone
	err := errors.Join(errs...)
	if err != nil {
		d.log.Error("stopped with errors", zap.Error(err))
	} else {
		d.log.Info("stopped")
	}
	return err
}

// Close releases what New built, for a daemon whose Run was never called.
func (d *Daemon) Close(ctx context.Context) error {
	if d.ran.Load() {
		return nil
	}
	d.ran.Store(true)
	var errs []error
	if d.consumer != nil {
		errs = append(errs, d.consumer.Shutdown(ctx))
	}
	errs = append(errs, d.closeParts(ctx))
	if d.ln != nil {
		errs = append(errs, d.ln.Close())
	}
	return errors.Join(errs...)
}

// closeParts flushes and closes the sinks (through the pipeline), then
// the key cache, registry, KMS provider and audit log.
func (d *Daemon) closeParts(ctx context.Context) error {
	var errs []error
	if d.parts.pipe != nil {
		errs = append(errs, d.parts.pipe.Close(ctx))
	}
	errs = append(errs, d.parts.closeAll())
	return errors.Join(errs...)
}

func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.o.Registry, promhttp.HandlerOpts{Registry: d.o.Registry}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		switch {
		case d.stopping.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "shutting down\n")
		case !d.consumer.Ready():
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "mqtt not connected and subscribed\n")
		default:
			_, _ = io.WriteString(w, "ready\n")
		}
	})
	return mux
}

// registerProcessMetrics adds the Go and process collectors and
// decryptd_build_info.
func registerProcessMetrics(reg *prometheus.Registry, version string) error {
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "decryptd_build_info",
		Help: "Always 1; labels name the build.",
	}, []string{"version", "goversion"})
	info.WithLabelValues(version, runtime.Version()).Set(1)
	var errs []error
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		info,
	} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("daemon: register metrics: %w", err)
	}
	return nil
}

// Replay builds the parts below the consumer (no MQTT, no HTTP), runs the
// dead letters read from in through the pipeline (pipeline.Replay), and
// closes everything. The dead-letter sink must not be the file being
// read: the replay would read what it appends; that case is refused.
func Replay(ctx context.Context, o Options, in io.Reader) (pipeline.Summary, error) {
	if err := o.withDefaults(); err != nil {
		return pipeline.Summary{}, err
	}
	if f, ok := in.(*os.File); ok && o.Config.DeadLetter.Type == config.SinkFile {
		if a, err := f.Stat(); err == nil {
			if b, err := os.Stat(o.Config.DeadLetter.Path); err == nil && os.SameFile(a, b) {
				return pipeline.Summary{}, fmt.Errorf("replay: %s is the dead-letter file the replay appends to; move it aside and replay the moved file", o.Config.DeadLetter.Path)
			}
		}
	}
	// A replay observes nothing for rotation: no tracker runs here.
	cfg := *o.Config
	cfg.Rotation.Enabled = false
	o.Config = &cfg
	p, err := build(ctx, &o)
	if err != nil {
		return pipeline.Summary{}, err
	}
	rctx, stop := context.WithCancel(ctx)
	feed := make(chan error, 1)
	go func() { feed <- p.cache.Run(rctx) }()
	sum, err := pipeline.Replay(ctx, p.pipe, in)
	stop()
	<-feed
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.Config.ShutdownTimeout)
	defer cancel()
	cerr := errors.Join(p.pipe.Close(sctx), p.closeAll())
	return sum, errors.Join(err, cerr)
}
