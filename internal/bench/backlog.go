package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/decryptd/decryptd/internal/fleet"
)

// publishBacklog publishes n messages at QoS 1 over conns mutual-TLS
// connections, device after device round the fleet (so every device's
// messages are spread over the whole backlog), each sealed at the moment
// it is made with a millisecond timestamp (the end-to-end latency starts
// there). It returns once the broker has acknowledged every one, with the
// payload bytes sent.
func publishBacklog(ctx context.Context, url string, tc *tls.Config, f *fleet.Fleet, n, conns int, seed uint64, progress io.Writer, label string) (bytesSent int64, err error) {
	pub, err := fleet.NewPublisher(ctx, fleet.PublisherOptions{Broker: url, TLS: tc, Connections: conns, ClientID: "bench-pub-" + label + "-"})
	if err != nil {
		return 0, err
	}
	defer pub.Close()
	devices := f.Devices()
	var acked, failed, size atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	stop := reportEvery(progress, time.Second, func() string {
		a := acked.Load()
		return fmt.Sprintf("%s: published %d/%d (%.0f msg/s)", label, a, n, float64(a)/time.Since(start).Seconds())
	})
	defer stop()

	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for c := 0; c < conns; c++ {
		// Connection c carries devices c, c+conns, ... and its share of
		// the n messages, in turn round those devices.
		var mine []*fleet.Device
		for i := c; i < len(devices); i += conns {
			mine = append(mine, devices[i])
		}
		count := n / conns
		if c < n%conns {
			count++
		}
		if len(mine) == 0 || count == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			g, err := fleet.NewGenerator(mine, fleet.DefaultMix(), seed+uint64(c), nil)
			if err != nil {
				errs <- err
				return
			}
			for k := 0; k < count; k++ {
				d := mine[k%len(mine)]
				m, err := g.Next(d, time.Now().UnixMilli())
				if err != nil {
					errs <- err
					return
				}
				size.Add(int64(len(m.Payload)))
				if err := pub.Publish(ctx, c, m.Topic, m.Payload, func(err error) {
					if err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err)
						return
					}
					acked.Add(1)
				}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return 0, err
		}
	}
	fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := pub.Flush(fctx); err != nil {
		return 0, fmt.Errorf("bench: wait for PUBACKs: %w", err)
	}
	if f := failed.Load(); f > 0 {
		return 0, fmt.Errorf("bench: %d publishes failed, first: %v", f, firstErr.Load())
	}
	return size.Load(), nil
}

// timestampOf finds the envelope's "timestamp": member (both shapes carry
// it in the clear) without parsing the JSON: a byte search and a few
// digits, well under a microsecond.
func timestampOf(payload []byte) int64 {
	i := bytes.Index(payload, []byte(`"timestamp":`))
	if i < 0 {
		return 0
	}
	var ts int64
	for _, c := range payload[i+len(`"timestamp":`):] {
		if c < '0' || c > '9' {
			break
		}
		ts = ts*10 + int64(c-'0')
	}
	return ts
}

// reportEvery calls line every period and prints it to w (nil: nothing)
// until the returned stop is called.
func reportEvery(w io.Writer, period time.Duration, line func() string) (stop func()) {
	if w == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				fmt.Fprintln(w, line())
			case <-done:
				return
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}
