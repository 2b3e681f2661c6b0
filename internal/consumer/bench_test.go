package consumer

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

type countProc struct{ n atomic.Int64 }

func (p *countProc) Process(_ context.Context, _ intake.Message, done func(error)) {
	p.n.Add(1)
	done(nil)
}

func (p *countProc) TryProcess(_ context.Context, _ intake.Message, done func(error)) bool {
	p.n.Add(1)
	done(nil)
	return true
}

// BenchmarkConsume measures end-to-end intake through a real Mosquitto over
// mutual TLS: b.N messages (100 B, QoS 1, 100 topics) are queued in the
// consumer's durable session first, then drained and acknowledged. It
// compares MaxInFlight settings, i.e. how far in-order acknowledgement and
// the bound cost throughput, and one connection with four (the backlog
// split over four sessions). cpu-ns/op is this process's CPU time per
// message (user + system), the figure that should not grow with cores.
func BenchmarkConsume(b *testing.B) {
	for _, tc := range []struct{ inflight, conns int }{{64, 1}, {1024, 1}, {1024, 4}} {
		inflight := tc.inflight
		b.Run(fmt.Sprintf("inflight=%d/connections=%d", inflight, tc.conns), func(b *testing.B) {
			broker := mosquittotest.Start(b, mosquittotest.Options{Plain: true, MaxInflight: inflight})
			p := &countProc{}
			o := Options{
				Brokers: []string{broker.SSLURL}, ClientID: "bench", Topics: []string{"dev/+/evt"},
				SharedGroup: "g", TLS: broker.ClientTLS("bench"), MaxInFlight: inflight,
				Connections: tc.conns,
			}
			c, err := New(o, p)
			if err != nil {
				b.Fatal(err)
			}
			// Create the durable session and subscription, then go offline.
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			for !c.Ready() {
				time.Sleep(5 * time.Millisecond)
			}
			cancel()
			<-done

			pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker.TCPURL).SetClientID("pub"))
			if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				b.Fatal(tok.Error())
			}
			defer pub.Disconnect(100)
			payload := make([]byte, 100)
			var last mqtt.Token
			for i := range b.N {
				last = pub.Publish(fmt.Sprintf("dev/d%03d/evt", i%100), 1, false, payload)
				if i%1000 == 999 {
					last.Wait()
				}
			}
			last.Wait()

			c, err = New(o, p)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := processCPU()
			ctx, cancel = context.WithCancel(context.Background())
			defer cancel()
			go func() { done <- c.Run(ctx) }()
			for p.n.Load() < int64(b.N) || !idle(c) {
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
			cancel()
			<-done
		})
	}
}

// processCPU is this process's CPU time (user + system) in nanoseconds.
func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
