package spool

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/intake"
)

// Handler takes one spooled message on (the pipeline's replay path). It
// returns false, having done nothing, when the message's key still cannot
// be resolved: the device is tried again after a back-off. It returns true
// once the message is handed over (its record queued for the sinks, or its
// dead letter, or it is a known duplicate), and then calls done exactly
// once, on any goroutine, with the outcome (OutcomeDelivered,
// OutcomeDeadLettered, OutcomeDuplicate) and nil once the message may be
// removed from the spool, or OutcomeFailed and an error when it may not
// (shutdown): it then stays on disk for the next start. Successive calls
// for one device hand their messages over in the order of the calls.
type Handler func(ctx context.Context, m intake.Message, done func(outcome string, err error)) bool

// Run is the replay loop: until ctx ends it hands each device's spooled
// messages to h, in order, one device's messages at a time and at most
// Options.Concurrency devices at once, with at most Options.MaxInFlight
// messages (Options.MaxInFlightBytes of records) handed over and not yet
// done. A device whose key is still
// unresolvable is tried again after a capped, jittered back-off (its head
// message only: one key fetch per device at a time, never one per
// message). While every recent try failed (a KMS or registry outage), only
// a couple of devices probe at a time; the first success ends the outage
// and every waiting device is tried at once. A device leaves the spool's
// routing (Pending turns false) only once h has handed over its last
// message, so a later message of it, processed directly, follows them.
// Run returns once its workers have. Call it once.
func (s *Spool) Run(ctx context.Context, h Handler) {
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		now := s.o.Now()
		var start []*device
		var earliest time.Time
		room := s.o.Concurrency - s.running
		if s.outage {
			room = 0
			if s.running == 0 {
				if now.Before(s.probeAt) {
					earliest = s.probeAt
				} else {
					room = probeWidth
				}
			}
		}
		for _, d := range s.devs {
			if d.busy || len(d.q) == 0 {
				continue
			}
			if d.next.After(now) {
				if earliest.IsZero() || d.next.Before(earliest) {
					earliest = d.next
				}
				continue
			}
			if len(start) < room {
				d.busy = true
				start = append(start, d)
			}
		}
		s.running += len(start)
		s.mu.Unlock()
		for _, d := range start {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.drain(ctx, d, h)
			}()
		}
		wait := time.Hour
		if !earliest.IsZero() {
			wait = max(earliest.Sub(now), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// drain hands d's messages to h until none is left (d leaves the index)
// or one's key is still unresolvable (d backs off).
func (s *Spool) drain(ctx context.Context, d *device, h Handler) {
	defer func() {
		s.mu.Lock()
		s.running--
		s.mu.Unlock()
		s.kick()
	}()
	for {
		s.mu.Lock()
		if len(d.q) == 0 {
			delete(s.devs, d.key)
			s.ndevs.Add(-1)
			s.mu.Unlock()
			return
		}
		r := d.q[0]
		s.mu.Unlock()
		if !s.acquire(ctx, int64(r.n)) {
			s.retry(d, false)
			return
		}
		m, err := s.read(r)
		if err == nil && !m.ReceivedAt.IsZero() {
			s.mu.Lock()
			d.headAt = m.ReceivedAt.UnixNano()
			s.mu.Unlock()
		}
		if err != nil {
			s.release(int64(r.n))
			s.m.replayed.WithLabelValues(OutcomeUnreadable).Inc()
			s.log.Error("spooled message cannot be read back; retrying", zap.Error(err))
			s.retry(d, false)
			return
		}
		ok := h(ctx, m, func(outcome string, err error) {
			s.release(int64(r.n))
			s.m.replayed.WithLabelValues(outcome).Inc()
			if err != nil {
				s.log.Warn("spooled message handed over but not delivered; it stays spooled for the next start", zap.Error(err))
				return
			}
			s.ack(r)
		})
		if !ok {
			s.release(int64(r.n))
			s.m.replayed.WithLabelValues(OutcomeRetry).Inc()
			s.retry(d, ctx.Err() == nil)
			return
		}
		s.mu.Lock()
		d.q[0] = ref{}
		d.q = d.q[1:]
		d.attempt = 0
		if s.outage {
			s.outage, s.outTries = false, 0
			now := s.o.Now()
			for _, o := range s.devs {
				o.next, o.attempt = now, 0
			}
			s.log.Info("spooled devices' keys resolvable again; replaying")
			s.kick()
		}
		s.mu.Unlock()
	}
}

// retry backs d off; keyDown: its key was found unresolvable.
func (s *Spool) retry(d *device, keyDown bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.o.Now()
	d.busy = false
	d.next = now.Add(s.backoff(d.attempt))
	d.attempt++
	if keyDown {
		if !s.outage {
			s.outage, s.outTries = true, 0
		} else {
			s.outTries++
		}
		s.probeAt = now.Add(s.backoff(s.outTries))
	}
}

// backoff is MinBackoff doubled per attempt, capped at MaxBackoff, with
// jitter in its upper half.
func (s *Spool) backoff(attempt int) time.Duration {
	d := s.o.MaxBackoff
	if attempt < 32 {
		if e := s.o.MinBackoff << attempt; e > 0 && e < d {
			d = e
		}
	}
	return d/2 + time.Duration(s.o.Rand()*float64(d/2))
}

// acquire waits for room to hand over a replayed record of n bytes
// (MaxInFlight, MaxInFlightBytes; one record always fits when none is
// out); false when ctx ended first.
func (s *Spool) acquire(ctx context.Context, n int64) bool {
	for {
		s.mu.Lock()
		if s.handed == 0 || (s.handed < s.o.MaxInFlight && s.handedBytes+n <= s.o.MaxInFlightBytes) {
			s.handed++
			s.handedBytes += n
			s.mu.Unlock()
			return true
		}
		ch := s.freed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

func (s *Spool) release(n int64) {
	s.mu.Lock()
	s.handed--
	s.handedBytes -= n
	close(s.freed)
	s.freed = make(chan struct{})
	s.mu.Unlock()
}
