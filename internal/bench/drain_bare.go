package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// drainBare drains the backlog with a bare paho client: persistent
// session, QoS 1, the handler on paho's router (OrderMatters true, as
// decryptd's consumer) counting the message and reading its timestamp,
// paho acknowledging it when the handler returns. The transport's own
// limit.
func drainBare(ctx context.Context, b *Broker, brokerURL string, tc *tls.Config, id string, n int, progress io.Writer, label string) (*DrainRun, error) {
	lat := make([]float64, n)
	var count atomic.Int64
	done := make(chan struct{})
	var end time.Time
	handler := func(_ mqtt.Client, m mqtt.Message) {
		now := time.Now()
		i := count.Add(1) - 1
		if i >= int64(n) {
			return // a redelivery beyond the backlog: counted, not timed
		}
		lat[i] = float64(now.UnixMicro()-timestampOf(m.Payload())*1000) / 1000
		if i == int64(n)-1 {
			end = now
			close(done)
		}
	}
	opts := mqtt.NewClientOptions().AddBroker(brokerURL).SetClientID(id).SetTLSConfig(tc).
		SetCleanSession(false).SetOrderMatters(true).SetDefaultPublishHandler(handler).
		SetKeepAlive(30 * time.Second).SetConnectTimeout(10 * time.Second).SetAutoReconnect(false)
	c := mqtt.NewClient(opts)

	settle()
	if err := resetPeakRSS(); err != nil {
		return nil, fmt.Errorf("reset peak RSS: %w", err)
	}
	base := rss()
	cpu0, bcpu0 := cpuTime(), procCPU(b.Pid())
	start := time.Now()
	stop := reportEvery(progress, time.Second, func() string {
		k := count.Load()
		return fmt.Sprintf("%s: drained %d/%d (%.0f msg/s)", label, k, n, float64(k)/time.Since(start).Seconds())
	})
	if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		stop()
		return nil, fmt.Errorf("connect: %v", tok.Error())
	}
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	case <-time.After(10 * time.Minute):
		err = fmt.Errorf("drained %d of %d in 10 minutes", count.Load(), n)
	}
	cpu1, bcpu1 := cpuTime(), procCPU(b.Pid())
	peak := peakRSS()
	stop()
	c.Disconnect(500)
	if err != nil {
		return nil, err
	}
	secs := end.Sub(start).Seconds()
	return &DrainRun{
		Side: "bare", Messages: n, Seconds: secs, Rate: float64(n) / secs,
		CPUPerMsgUS:       float64((cpu1 - cpu0).Microseconds()) / float64(n),
		BrokerCPUPerMsgUS: float64((bcpu1 - bcpu0).Microseconds()) / float64(n),
		BaseRSS:           base, PeakRSS: peak,
		Receipt: summarise(lat),
	}, nil
}
