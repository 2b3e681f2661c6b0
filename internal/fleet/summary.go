package fleet

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"
)

// Summary is what a run did. Counts of messages are by outcome at the
// broker: Acked messages were acknowledged (PUBACK), Errors failed or timed
// out.
type Summary struct {
	Devices        int `json:"devices"`
	Keys           int `json:"keys"`
	Connections    int `json:"connections"`
	OfflineDevices int `json:"offline_devices"`

	Published      uint64 `json:"published"`
	Acked          uint64 `json:"acked"`
	Errors         uint64 `json:"publish_errors"`
	Unacknowledged int64  `json:"unacknowledged,omitempty"` // still outstanding when the flush timed out
	Bytes          uint64 `json:"bytes_acked"`

	// Acked messages by kind (good, tampered, ...) and good ones by shape.
	ByKind  map[Kind]uint64  `json:"by_kind"`
	ByShape map[Shape]uint64 `json:"good_by_shape"`
	// Burst: acked messages that were held offline and sent late.
	Burst uint64 `json:"burst"`

	Duration     time.Duration `json:"-"`
	DurationSecs float64       `json:"duration_seconds"`
	// SendSecs is the time spent making and handing over messages; the
	// rest of Duration waited for the last PUBACKs.
	SendSecs   float64 `json:"send_seconds"`
	TargetRate float64 `json:"target_rate"`
	// Rate is acknowledged messages per second over Duration.
	Rate float64 `json:"achieved_rate"`
}

// ExpectedReasons counts the acked bad messages by the reason the daemon
// should report (decrypt.Reason's names).
func (s Summary) ExpectedReasons() map[string]uint64 {
	out := map[string]uint64{}
	for k, n := range s.ByKind {
		if r := k.Reason(); r != "" && n > 0 {
			out[r] += n
		}
	}
	return out
}

// Text writes the summary for a person.
func (s Summary) Text(w io.Writer) {
	fmt.Fprintf(w, "devices      %d (%d keys, %d offline at start) over %d connections\n", s.Devices, s.Keys, s.OfflineDevices, s.Connections)
	fmt.Fprintf(w, "duration     %s (sending %s)\n", s.Duration.Round(time.Millisecond), time.Duration(s.SendSecs*float64(time.Second)).Round(time.Millisecond))
	target := "unlimited"
	if s.TargetRate > 0 {
		target = fmt.Sprintf("%.0f msg/s", s.TargetRate)
	}
	fmt.Fprintf(w, "rate         %.0f msg/s achieved (target %s), %.1f MiB acked\n", s.Rate, target, float64(s.Bytes)/(1<<20))
	fmt.Fprintf(w, "published    %d, acked %d, publish errors %d", s.Published, s.Acked, s.Errors)
	if s.Unacknowledged > 0 {
		fmt.Fprintf(w, ", unacknowledged %d", s.Unacknowledged)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "good         %d (shape A %d, shape B %d; %d sent in offline bursts)\n", s.ByKind[Good], s.ByShape[ShapeA], s.ByShape[ShapeB], s.Burst)
	for _, k := range BadKinds() {
		if n := s.ByKind[k]; n > 0 {
			fmt.Fprintf(w, "bad          %-16s %d (expect reason %s)\n", k, n, k.Reason())
		}
	}
}

// kinds and shapes in a fixed order, for the counters.
func allKinds() [6]Kind {
	return [6]Kind{Good, Tampered, UnknownVersion, Replayed, Malformed, TopicMismatch}
}

func kindIndex(k Kind) int {
	for i, x := range allKinds() {
		if x == k {
			return i
		}
	}
	return 0
}

// stats are the run's counters, updated by workers and completion
// goroutines.
type stats struct {
	published atomic.Uint64
	acked     atomic.Uint64
	errors    atomic.Uint64
	bytes     atomic.Uint64
	burst     atomic.Uint64
	held      atomic.Int64
	byKind    [6]atomic.Uint64
	shapeA    atomic.Uint64
	shapeB    atomic.Uint64
	bad       atomic.Uint64
}

func newStats() *stats { return &stats{} }

func (s *stats) onPublish() { s.published.Add(1) }

func (s *stats) onResult(m Message, err error) {
	if err != nil {
		s.errors.Add(1)
		return
	}
	s.acked.Add(1)
	s.bytes.Add(uint64(len(m.Payload)))
	s.byKind[kindIndex(m.Kind)].Add(1)
	if m.Kind == Good {
		if m.Shape == ShapeB {
			s.shapeB.Add(1)
		} else {
			s.shapeA.Add(1)
		}
	} else {
		s.bad.Add(1)
	}
	if m.Burst {
		s.burst.Add(1)
	}
}

func (s *stats) summary(total, send time.Duration) Summary {
	sum := Summary{
		Published: s.published.Load(),
		Acked:     s.acked.Load(),
		Errors:    s.errors.Load(),
		Bytes:     s.bytes.Load(),
		Burst:     s.burst.Load(),
		ByKind:    map[Kind]uint64{},
		ByShape:   map[Shape]uint64{ShapeA: s.shapeA.Load(), ShapeB: s.shapeB.Load()},
		Duration:  total,
	}
	for i, k := range allKinds() {
		if n := s.byKind[i].Load(); n > 0 || k == Good {
			sum.ByKind[k] = n
		}
	}
	sum.DurationSecs = total.Seconds()
	sum.SendSecs = send.Seconds()
	if total > 0 {
		sum.Rate = float64(sum.Acked) / total.Seconds()
	}
	return sum
}

// progressLoop writes a status line every opts.ProgressEvery until ctx
// ends: acked so far, the rate over the last interval, bad, errors,
// outstanding and held.
func progressLoop(ctx context.Context, st *stats, start time.Time, opts RunOptions) {
	t := time.NewTicker(opts.ProgressEvery)
	defer t.Stop()
	lastN, lastT := uint64(0), start
	width := 0
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			n := st.acked.Load()
			rate := float64(n-lastN) / now.Sub(lastT).Seconds()
			lastN, lastT = n, now
			pub := st.published.Load()
			out := int64(pub) - int64(n) - int64(st.errors.Load())
			line := fmt.Sprintf("%6.1fs  acked %d  %.0f msg/s  bad %d  errors %d  outstanding %d  held %d",
				now.Sub(start).Seconds(), n, rate, st.bad.Load(), st.errors.Load(), out, st.held.Load())
			if opts.ProgressTTY {
				pad := ""
				if len(line) < width {
					pad = strings.Repeat(" ", width-len(line))
				}
				width = len(line)
				fmt.Fprint(opts.Progress, "\r"+line+pad)
			} else {
				fmt.Fprintln(opts.Progress, line)
			}
		}
	}
}
