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
	"github.com/decryptd/decryptd/internal/health"
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
	o      Options
	log    *zap.Logger
	health *health.Tracker
	// parts and inputs are set by New before built; the HTTP handlers,
	// which run from before, read them only once built is true.
	parts     *parts
	inputs    []input
	built     atomic.Bool
	ln        net.Listener
	srv       *http.Server
	serveDone <-chan struct{}
	errs      errList // of the HTTP server and of Run's goroutines
	stopping  atomic.Bool
	ran       atomic.Bool
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

// New binds the HTTP listener and serves /healthz, /readyz (503 until
// Run's inputs are connected) and /metrics at once, then builds every part,
// waiting with backoff for a KMS or PostgreSQL registry that is down at
// start (degraded state set meanwhile), but receives nothing yet: Run
// starts the work. ctx bounds the building only (the waits, registry
// lock, broker connections of MQTT sinks); when it ends during a wait, the
// error wraps ErrStartCanceled. If Run is never called, Close releases
// what New built.
func New(ctx context.Context, o Options) (_ *Daemon, err error) {
	if err := o.withDefaults(); err != nil {
		return nil, err
	}
	if err := registerProcessMetrics(o.Registry, o.Version); err != nil {
		return nil, err
	}
	d := &Daemon{o: o, log: o.Logger.With(zap.String("component", "daemon"))}
	d.health, err = health.New(health.Options{Registerer: o.Registry, Logger: o.Logger})
	if err != nil {
		return nil, fmt.Errorf("daemon: register metrics: %w", err)
	}
	d.health.Probe(health.Broker, d.brokerProbe)

	d.ln, err = net.Listen("tcp", o.Config.Metrics.Listen)
	if err != nil {
		return nil, fmt.Errorf("metrics.listen: %w", err)
	}
	d.srv = &http.Server{Handler: d.handler(), ReadHeaderTimeout: 10 * time.Second}
	d.serveDone = d.serve(&d.errs)
	defer func() {
		if err != nil {
			_ = d.srv.Close()
			<-d.serveDone
		}
	}()

	p, err := build(ctx, &d.o, d.health)
	if err != nil {
		return nil, err
	}
	d.parts = p
	defer func() {
		if err != nil {
			err = errors.Join(err, d.closeParts(context.Background()))
		}
	}()

	d.inputs, err = buildInputs(o, p.pipe, p.dec)
	if err != nil {
		return nil, err
	}
	d.built.Store(true)
	return d, nil
}

// Addr is the HTTP listener's bound address (the actual port when the
// configuration asked for port 0).
func (d *Daemon) Addr() net.Addr { return d.ln.Addr() }

// KMSUnwraps is how many KMS unwraps the key cache has made.
func (d *Daemon) KMSUnwraps() uint64 { return d.parts.unwraps.Load() }

// Ready reports what /readyz reports: built (the registry loaded, the KMS
// reachable at start), every input ready (MQTT connected and subscribed),
// at least one record sink up, and not shutting down.
func (d *Daemon) Ready() bool { return d.notReadyReason() == "" }

// Health is the degraded state by cause, as /healthz reports it.
func (d *Daemon) Health() health.Report { return d.health.Report() }

// notReady names the first input that is not ready, or "". Call it only
// once built.
func (d *Daemon) notReady() string {
	for _, in := range d.inputs {
		if !in.Ready() {
			return in.name
		}
	}
	return ""
}

// Run runs the daemon until ctx ends or a part fails, then shuts it down
// (see the package doc for the order) within shutdown_timeout, and returns
// the failure and every shutdown error, joined. Call it once.
func (d *Daemon) Run(ctx context.Context) error {
	if !d.ran.CompareAndSwap(false, true) {
		return errors.New("daemon: Run called twice")
	}
	errs := &d.errs
	serveDone := d.serveDone
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		select {
		case <-gctx.Done():
			return nil
		case <-serveDone:
			return errors.New("http server stopped") // stop everything
		}
	})
	g.Go(func() error {
		// Returns nil when gctx ends; an error only if it cannot start.
		if err := d.parts.cache.Run(gctx); err != nil {
			errs.add(err)
			return err
		}
		return nil
	})
	g.Go(func() error { d.recheck(gctx); return nil }) // ends with gctx
	d.runInputs(g, gctx, errs)
	rot := d.startRotation(gctx)
	g.Go(func() error {
		<-gctx.Done()
		d.shutdown(ctx, rot, errs)
		return nil
	})
	_ = g.Wait()
	<-serveDone
	err := errs.join()
	if err != nil {
		d.log.Error("stopped with errors", zap.Error(err))
	} else {
		d.log.Info("stopped")
	}
	return err
}

// errList collects the errors of Run's goroutines.
type errList struct {
	mu   sync.Mutex
	errs []error
}

func (l *errList) add(err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

func (l *errList) join() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return errors.Join(l.errs...)
}

// serve runs the HTTP server until Shutdown; the channel closes when it
// has stopped.
func (d *Daemon) serve(errs *errList) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := d.srv.Serve(d.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs.add(fmt.Errorf("http: %w", err))
		}
	}()
	d.log.Info("serving", zap.String("http", d.Addr().String()), zap.String("version", d.o.Version))
	return done
}

// runInputs runs every input. An input ends only through Shutdown, which
// uses the shutdown deadline rather than this (by then ended) context; an
// input that fails on its own stops the daemon.
func (d *Daemon) runInputs(g *errgroup.Group, gctx context.Context, errs *errList) {
	for _, in := range d.inputs {
		g.Go(func() error {
			err := in.Run(context.WithoutCancel(gctx))
			if err != nil && !d.stopping.Load() {
				errs.add(fmt.Errorf("%s: %w", in.name, err))
				return err
			}
			return nil
		})
	}
}

// rotationRun is the rotation goroutines started by startRotation.
type rotationRun struct {
	wg          sync.WaitGroup
	stopTracker context.CancelFunc
}

// startRotation (rotation.enabled) runs the tracker until the inputs have
// stopped (it observes the last in-flight records, then flushes its
// counts) and the controller until shutdown starts. Both end before the
// registry and the audit log close.
func (d *Daemon) startRotation(gctx context.Context) *rotationRun {
	tctx, stop := context.WithCancel(context.WithoutCancel(gctx))
	rr := &rotationRun{stopTracker: stop}
	if r := d.parts.rot; r != nil {
		rr.wg.Add(2)
		go func() {
			defer rr.wg.Done()
			r.runTracker(tctx)
		}()
		go func() {
			defer rr.wg.Done()
			_ = r.controller.Run(gctx)
		}()
	}
	return rr
}

// shutdown takes the daemon down in the package doc's order within one
// deadline: inputs (in-flight messages delivered and acknowledged),
// rotation, the parts (pipeline and sinks, cache, registry, KMS, audit),
// the HTTP server last.
func (d *Daemon) shutdown(ctx context.Context, rot *rotationRun, errs *errList) {
	d.stopping.Store(true)
	// The deadline as a duration string ("30s"): zap's JSON encoder would
	// write a bare number of seconds.
	d.log.Info("shutting down", zap.Stringer("deadline", d.o.Config.ShutdownTimeout))
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.o.Config.ShutdownTimeout)
	defer cancel()
	for _, in := range d.inputs {
		if err := in.Shutdown(sctx); err != nil {
			errs.add(d.whyUnfinished(err))
		}
	}
	rot.stopTracker()
	if d.parts.rot != nil { // with rotation off there is nothing to wait for, nor to blame
		rotDone := make(chan struct{})
		go func() { rot.wg.Wait(); close(rotDone) }()
		if sctx.Err() != nil {
			// The inputs used the deadline up: the tracker, told to stop
			// just now, still gets a moment to flush and exit.
			t := time.NewTimer(250 * time.Millisecond)
			select {
			case <-rotDone:
			case <-t.C:
			}
			t.Stop()
		}
		select {
		case <-rotDone:
		default:
			select {
			case <-rotDone:
			case <-sctx.Done():
				errs.add(errors.New("rotation: did not stop within the shutdown deadline"))
			}
		}
	}
	if err := d.closeParts(sctx); err != nil {
		errs.add(d.whyUnfinished(err))
	}
	if err := d.srv.Shutdown(sctx); err != nil {
		errs.add(fmt.Errorf("http: shutdown: %w", err))
		_ = d.srv.Close()
	}
}

// Close releases what New built, for a daemon whose Run was never called.
func (d *Daemon) Close(ctx context.Context) error {
	if d.ran.Load() {
		return nil
	}
	d.ran.Store(true)
	var errs []error
	for _, in := range d.inputs {
		errs = append(errs, in.Shutdown(ctx))
	}
	errs = append(errs, d.closeParts(ctx))
	d.stopping.Store(true)
	if err := d.srv.Close(); err != nil { // closes the listener too
		errs = append(errs, fmt.Errorf("http: %w", err))
	}
	<-d.serveDone
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
	mux.HandleFunc("GET /healthz", d.serveHealthz)
	mux.HandleFunc("GET /readyz", d.serveReadyz)
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
	// Nor does it touch the key-pending spool: it belongs to the running
	// daemon (which holds its lock and replays it), and a replay waits for
	// each outcome anyway (Handle never spools).
	cfg.Spool.Dir = ""
	o.Config = &cfg
	h, err := health.New(health.Options{Logger: o.Logger}) // nothing serves it
	if err != nil {
		return pipeline.Summary{}, err
	}
	p, err := build(ctx, &o, h)
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
