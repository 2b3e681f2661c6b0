package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/spool"
)

// The key-pending spool (Options.Spool), as the pipeline uses it:
//
//   - A Process call whose key cannot be resolved within KeyWait
//     (decrypt.ErrTransient: KMS or registry unreachable, or hanging) is
//     appended to the spool as received, and done(nil) is called once the
//     spool's fsync covers it: the input acknowledges it and its in-flight
//     slot moves on, so devices whose keys are cached are not held behind
//     it.
//   - While a device has messages in the spool, each later message of it
//     (spool.Key: its device id) is appended behind them, even when its
//     key is cached, and TryProcess declines it; so a device's records
//     reach the sinks in receive order.
//   - The spool's replay loop hands the spooled messages back (replay),
//     device by device in order, once their key resolves: decrypted and
//     delivered, dead-lettered or found a duplicate through the same path
//     as any message; the spool drops one only once its done is nil.
//   - When the spool is full (or failed), a message waits inside Process
//     as without a spool (backpressure), retrying the key and the spool in
//     turn; never dropped.
//   - Handle never spools: its caller waits for the outcome.

// OutcomeSpooled is the Result outcome of a message the spool holds (its
// delivery is counted when the spool replays it).
const OutcomeSpooled = "spooled"

// outageKeyWait is how long a message waits for its key before it is
// spooled while keys were found unresolvable within outageMemory: a KMS
// that hangs would otherwise cost each device KeyWait of a consumer worker
// and of its in-flight window, and cached devices' acknowledgements wait
// behind.
const (
	outageKeyWait = 10 * time.Millisecond
	outageMemory  = 5 * time.Second
)

// keyWait is how long a Process call waits for a key before spooling.
func (p *Pipeline) keyWait() time.Duration {
	if last := p.lastTransient.Load(); last != 0 && time.Since(time.Unix(0, last)) < outageMemory {
		return min(p.o.KeyWait, outageKeyWait)
	}
	return p.o.KeyWait
}

// errSpooled ends open for a message handed to the spool.
var errSpooled = errors.New("pipeline: spooled")

func (p *Pipeline) startSpool() {
	if p.o.Spool == nil {
		return
	}
	p.sp = p.o.Spool
	ctx, cancel := context.WithCancel(context.Background())
	p.replayCancel, p.replayDone = cancel, make(chan struct{})
	go func() {
		defer close(p.replayDone)
		p.sp.Run(ctx, p.replay)
	}()
}

// stopReplay stops the replay loop and waits for it: what it handed over
// is then in the batchers, which Close drains.
func (p *Pipeline) stopReplay() {
	if p.sp == nil {
		return
	}
	p.replayCancel()
	<-p.replayDone
}

// spoolBehind appends d's message behind its device's spooled messages,
// if it has any; it reports whether d is taken care of (spooled, or
// finished with its context's error while the spool was full).
func (p *Pipeline) spoolBehind(d *delivery) bool {
	for attempt := 0; ; attempt++ {
		ok, err := p.sp.Append(d.m, true, d.spooled)
		if ok {
			return true
		}
		if err == nil {
			return false // nothing of its device is spooled
		}
		// Full (or failed): this device's later messages may not overtake
		// its spooled ones, so the message waits here until there is room
		// or the spool has drained the device.
		if attempt == 0 {
			p.logOnce("spool cannot take a message of a device with spooled messages; holding it", err)
		}
		p.m.retries.WithLabelValues(causeKMS).Inc()
		if serr := sleep(d.ctx, p.backoff(attempt)); serr != nil {
			d.finish(Result{}, fmt.Errorf("pipeline: %w", serr))
			return true
		}
	}
}

// spool appends d's message (ifPending: only behind its device's spooled
// messages) and reports whether the spool took it.
func (p *Pipeline) spool(d *delivery, ifPending bool) bool {
	ok, err := p.sp.Append(d.m, ifPending, d.spooled)
	if err != nil && !errors.Is(err, spool.ErrClosed) {
		p.logOnce("spool cannot take a key-pending message; holding it", err)
	}
	return ok
}

// spooled is the spool's durability callback for d's message.
func (d *delivery) spooled(err error) {
	if err != nil {
		// The fsync failed: the message may not be durable, so it is not
		// acknowledged (the source redelivers it); the spool may still
		// replay its copy (a duplicate, caught by the replay window).
		d.finish(Result{}, fmt.Errorf("pipeline: spool: %w", err))
		return
	}
	d.finish(Result{Outcome: OutcomeSpooled}, nil)
}

// replay is the spool's Handler: m's key is tried once (for at most
// KeyWait); when it resolves, m goes the way of any message.
func (p *Pipeline) replay(ctx context.Context, m intake.Message, done func(string, error)) bool {
	octx, cancel := context.WithTimeout(ctx, p.o.KeyWait)
	rec, err := p.o.Opener.Open(octx, m)
	cancel()
	if errors.Is(err, decrypt.ErrTransient) {
		if ctx.Err() == nil {
			p.lastTransient.Store(time.Now().UnixNano())
		}
		return false
	}
	if p.kmsDown.Load() && p.kmsDown.CompareAndSwap(true, false) {
		p.log.Info("keys resolvable again")
	}
	d := p.begin(ctx, m, nil, func(res Result, err error) {
		switch {
		case err != nil:
			done(spool.OutcomeFailed, err)
		case res.Outcome == OutcomeDeadLettered:
			done(spool.OutcomeDeadLettered, nil)
		case res.Outcome == OutcomeDuplicate:
			done(spool.OutcomeDuplicate, nil)
		default:
			done(spool.OutcomeDelivered, nil)
		}
	})
	if errors.Is(err, decrypt.ErrDuplicate) {
		// As in submit: a copy of m (a redelivery of a message spooled
		// before a crash) may still be on its way; wait for it, then ask
		// again.
		if werr := p.flight.waitBefore(ctx, d.ticket); werr != nil {
			d.finish(Result{}, werr)
			return true
		}
		rec, err = p.open(ctx, m, nil)
		if err != nil && decrypt.Reason(err) == "" && !errors.Is(err, decrypt.ErrDuplicate) {
			p.log.Debug("spooled message: replay stopped", zap.Error(err))
		}
	}
	p.opened(d, rec, err)
	return true
}
