package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"sync"
	"time"
)

// Sender publishes messages over a pool of connections; *Publisher is the
// MQTT one. Publish keeps the order of its calls per connection, blocks
// while that connection is at its bound of outstanding publishes, and calls
// done once with the outcome.
type Sender interface {
	Connections() int
	Publish(ctx context.Context, conn int, topic string, payload []byte, done func(error)) error
	Flush(ctx context.Context) error
}

// RunOptions say how much to send and how.
type RunOptions struct {
	// Rate is the total target in messages per second (devices × per-device
	// rate); 0 means as fast as the sender allows (the backlog mode).
	Rate float64
	// Count stops the run after this many messages (bursts included); 0
	// means no limit.
	Count int64
	// Duration stops the run after this long; 0 means no limit. With
	// neither Count nor Duration the run lasts until ctx ends.
	Duration time.Duration
	// Seed makes a run's content reproducible (nonces excepted).
	Seed uint64
	// Mix is the shape and bad-message mix (zero value: all shape A, no bad
	// messages; DefaultMix is half and half).
	Mix Mix
	// Offline is the share of devices (0..1) that start offline: they hold
	// their messages (made at their normal times, with those timestamps)
	// for OfflineFor, then send them in one burst, ignoring the rate, and
	// carry on online. Held messages are also sent when the run ends
	// earlier. Bursts are always good messages.
	Offline    float64
	OfflineFor time.Duration
	// Progress, when set, gets a status line every ProgressEvery (default
	// 1s); with ProgressTTY the line is rewritten in place (\r).
	Progress      io.Writer
	ProgressEvery time.Duration
	ProgressTTY   bool
	// OnResult, when set, is called with every message and its publish
	// outcome (from the sender's completion goroutines: keep it short).
	OnResult func(Message, error)
	// FlushTimeout bounds the wait for the last PUBACKs (default 60s).
	FlushTimeout time.Duration
	// Now is the clock for timestamps (default time.Now); rates use the
	// monotonic clock.
	Now func() time.Time
}

// Run sends the fleet's messages through s until opts.Count or
// opts.Duration is reached or ctx ends, waits for the outstanding
// publishes, and summarises. Device i is carried by connection i modulo the
// pool size, its messages in order. An error is returned only when nothing
// sensible could be sent (a bad option, a sealing failure); publish
// failures are counted in the summary.
func Run(ctx context.Context, f *Fleet, s Sender, opts RunOptions) (Summary, error) {
	if err := opts.check(f, s); err != nil {
		return Summary{}, err
	}
	k := s.Connections()
	parts, nOffline := split(f, k, &opts)

	st := newStats()
	start := time.Now()
	runCtx := ctx
	var cancel context.CancelFunc = func() {}
	if opts.Duration > 0 {
		runCtx, cancel = context.WithTimeout(ctx, opts.Duration)
	}
	defer cancel()
	stopProgress := startProgress(st, start, &opts)

	// One worker per connection that carries devices (and, with a count,
	// has messages to make).
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for i, p := range parts {
		if p.count == 0 && opts.Count > 0 {
			continue
		}
		g, err := NewGenerator(p.devices, opts.Mix, opts.Seed*1_000_003+uint64(i)+1, nil)
		if err != nil {
			return Summary{}, err
		}
		w := &worker{
			s: s, conn: p.conn, devices: p.devices, offline: p.offline, gen: g, st: st,
			bucket: newBucket(p.rate), limit: p.count, opts: &opts, start: start,
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.run(ctx, runCtx)
		}()
	}
	wg.Wait()
	sendEnd := time.Since(start)

	// The last PUBACKs, then the summary.
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), opts.FlushTimeout)
	flushErr := s.Flush(fctx)
	fcancel()
	stopProgress()
	if opts.Progress != nil && opts.ProgressTTY {
		fmt.Fprintln(opts.Progress)
	}
	sum := st.summary(time.Since(start), sendEnd)
	sum.Devices = f.Len()
	sum.Keys = f.Keys()
	sum.Connections = k
	sum.OfflineDevices = nOffline
	sum.TargetRate = opts.Rate
	if flushErr != nil {
		sum.Unacknowledged = int64(sum.Published - sum.Acked - sum.Errors)
	}
	if err := errors.Join(errs...); err != nil {
		return sum, err
	}
	return sum, nil
}

// check refuses options Run cannot honour and fills in the defaults.
func (opts *RunOptions) check(f *Fleet, s Sender) error {
	if f == nil || f.Len() == 0 {
		return errors.New("fleet: run needs at least one device")
	}
	if opts.Rate < 0 || math.IsNaN(opts.Rate) || math.IsInf(opts.Rate, 0) {
		return fmt.Errorf("fleet: rate %v: want >= 0", opts.Rate)
	}
	if opts.Count < 0 || opts.Duration < 0 {
		return errors.New("fleet: count and duration must not be negative")
	}
	if !(opts.Offline >= 0 && opts.Offline <= 1) {
		return fmt.Errorf("fleet: offline share %v: want 0..1", opts.Offline)
	}
	if opts.Offline > 0 && opts.OfflineFor <= 0 {
		return errors.New("fleet: an offline share needs an offline duration")
	}
	if err := opts.Mix.Validate(); err != nil {
		return err
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ProgressEvery <= 0 {
		opts.ProgressEvery = time.Second
	}
	if opts.FlushTimeout <= 0 {
		opts.FlushTimeout = 60 * time.Second
	}
	if s.Connections() <= 0 {
		return errors.New("fleet: sender has no connections")
	}
	return nil
}

// part is one connection's share of a run: its devices (and which of them
// start offline), rate and count.
type part struct {
	conn    int
	devices []*Device
	offline []bool
	rate    float64
	count   int64
}

// split draws which devices start offline (seeded: the same for a seed)
// and splits the fleet, the rate and the count over the k connections, at
// most one part per device.
func split(f *Fleet, k int, opts *RunOptions) (parts []*part, nOffline int) {
	pick := rand.New(rand.NewPCG(opts.Seed, 0x0ff11e))
	offline := make([]bool, f.Len())
	for i := range offline {
		if opts.Offline > 0 && pick.Float64() < opts.Offline {
			offline[i] = true
			nOffline++
		}
	}
	parts = make([]*part, min(k, f.Len()))
	for i := range parts {
		parts[i] = &part{conn: i}
	}
	for i := 0; i < f.Len(); i++ {
		p := parts[i%len(parts)]
		p.devices = append(p.devices, f.devices[i])
		p.offline = append(p.offline, offline[i])
	}
	var assigned int64
	for i, p := range parts {
		share := float64(len(p.devices)) / float64(f.Len())
		p.rate = opts.Rate * share
		if opts.Count > 0 {
			p.count = int64(float64(opts.Count) * share)
			if i == len(parts)-1 {
				p.count = opts.Count - assigned
			}
			assigned += p.count
		}
	}
	return parts, nOffline
}

// startProgress starts the progress lines, if asked for; the returned
// function stops them and waits.
func startProgress(st *stats, start time.Time, opts *RunOptions) (stop func()) {
	if opts.Progress == nil {
		return func() {}
	}
	pctx, pcancel := context.WithCancel(context.Background())
	var pwg sync.WaitGroup
	pwg.Add(1)
	go func() {
		defer pwg.Done()
		progressLoop(pctx, st, start, *opts)
	}()
	return func() { pcancel(); pwg.Wait() }
}

// worker sends one connection's devices' messages.
type worker struct {
	s       Sender
	conn    int
	devices []*Device
	offline []bool
	gen     *Generator
	st      *stats
	bucket  *bucket
	limit   int64 // messages to make; 0: no limit
	opts    *RunOptions
	start   time.Time

	made    int64
	held    map[int][]int64 // device index -> timestamps held while offline
	flushed bool
}

// run makes messages until the limit or until ctx (the run's time) ends.
// Held messages go out at the end unless parent (the caller's) ended.
func (w *worker) run(parent, ctx context.Context) error {
	offlineEnd := w.start.Add(w.opts.OfflineFor)
	anyOffline := false
	for _, o := range w.offline {
		anyOffline = anyOffline || o
	}
	if anyOffline {
		w.held = make(map[int][]int64)
	}
	next := 0
	defer func() {
		// Whatever is still held goes out at the end, so that a run of
		// Count messages sends Count messages; not after an interrupt.
		if parent.Err() == nil {
			_ = w.burst(parent)
		}
	}()
	for w.limit == 0 || w.made < w.limit {
		if err := w.bucket.wait(ctx); err != nil {
			return nil // the run's end
		}
		now := time.Now()
		if anyOffline && !w.flushed && !now.Before(offlineEnd) {
			if err := w.burst(ctx); err != nil {
				return nil
			}
		}
		i := next
		next = (next + 1) % len(w.devices)
		d := w.devices[i]
		ts := w.opts.Now().Unix()
		w.made++
		if anyOffline && !w.flushed && w.offline[i] {
			w.held[i] = append(w.held[i], ts)
			w.st.held.Add(1)
			continue
		}
		m, err := w.gen.Next(d, ts)
		if err != nil {
			return err
		}
		if err := w.publish(ctx, m); err != nil {
			return nil
		}
	}
	return nil
}

// burst sends every held message, oldest first per device, ignoring the
// rate.
func (w *worker) burst(ctx context.Context) error {
	if w.flushed {
		return nil
	}
	w.flushed = true
	for i := range w.devices {
		for _, ts := range w.held[i] {
			m, err := w.gen.Good(w.devices[i], ts)
			if err != nil {
				return err
			}
			m.Burst = true
			w.st.held.Add(-1)
			if err := w.publish(ctx, m); err != nil {
				return err
			}
		}
		delete(w.held, i)
	}
	return nil
}

func (w *worker) publish(ctx context.Context, m Message) error {
	w.st.onPublish()
	onResult := w.opts.OnResult
	return w.s.Publish(ctx, w.conn, m.Topic, m.Payload, func(err error) {
		w.st.onResult(m, err)
		if onResult != nil {
			onResult(m, err)
		}
	})
}

// bucket is a token bucket on the monotonic clock: rate tokens a second,
// holding at most a twentieth of a second's worth (at least one), so a
// late wake-up catches up briefly without bursting.
type bucket struct {
	rate   float64
	cap    float64
	tokens float64
	last   time.Time
}

func newBucket(rate float64) *bucket {
	return &bucket{rate: rate, cap: max(1, rate/20), tokens: 1, last: time.Now()}
}

// wait takes one token, sleeping until there is one; rate 0 never waits.
func (b *bucket) wait(ctx context.Context) error {
	if b.rate <= 0 {
		return ctx.Err()
	}
	for {
		now := time.Now()
		b.tokens = min(b.cap, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
		if b.tokens >= 1 {
			b.tokens--
			return ctx.Err()
		}
		d := time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}
