package fleet

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

// BenchmarkGenerator: the cost of making one message (sealing included).
func BenchmarkGenerator(b *testing.B) {
	for _, tc := range []struct {
		name string
		mix  Mix
	}{
		{"shapeA", Mix{}},
		{"shapeB", Mix{ShapeB: 1}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			f := memFleet(b, 1000, 0)
			g, err := NewGenerator(f.Devices(), tc.mix, 1, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			var size int
			for i := 0; i < b.N; i++ {
				m, err := g.Next(f.Device(i%1000), 1700000000)
				if err != nil {
					b.Fatal(err)
				}
				size = len(m.Payload)
			}
			b.ReportMetric(float64(size), "bytes/msg")
		})
	}
}

// BenchmarkRunMosquitto: 5,000 devices publishing a backlog as fast as a
// real Mosquitto (mutual TLS) acknowledges, with and without a subscriber
// draining it. Reports the achieved rate.
func BenchmarkRunMosquitto(b *testing.B) {
	for _, tc := range []struct {
		name        string
		subscriber  bool
		connections int
	}{
		{"conns=1/nosub", false, 1},
		{"conns=8/nosub", false, 8},
		{"conns=8/sub", true, 8},
	} {
		b.Run(tc.name, func(b *testing.B) {
			broker := mosquittotest.Start(b, mosquittotest.Options{})
			f := memFleet(b, 5000, 0)
			var received atomic.Int64
			if tc.subscriber {
				o := mqtt.NewClientOptions().AddBroker(broker.SSLURL).SetClientID("bench-sub").SetTLSConfig(broker.ClientTLS("ingest")).SetOrderMatters(false)
				c := mqtt.NewClient(o)
				if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					b.Fatal(tok.Error())
				}
				defer c.Disconnect(250)
				if tok := c.Subscribe("iot-2/type/+/id/+/evt/+/fmt/+", 1, func(mqtt.Client, mqtt.Message) { received.Add(1) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					b.Fatal(tok.Error())
				}
			}
			pub, err := NewPublisher(context.Background(), PublisherOptions{Broker: broker.SSLURL, TLS: broker.ClientTLS("telemsim"), Connections: tc.connections})
			if err != nil {
				b.Fatal(err)
			}
			defer pub.Close()
			const count = 50_000
			b.ResetTimer()
			var rate float64
			for i := 0; i < b.N; i++ {
				sum, err := Run(context.Background(), f, pub, RunOptions{Count: count, Mix: DefaultMix(), Seed: uint64(i)})
				if err != nil {
					b.Fatal(err)
				}
				if sum.Acked != count {
					b.Fatalf("acked %d of %d", sum.Acked, count)
				}
				rate = sum.Rate
			}
			b.StopTimer()
			b.ReportMetric(rate, "msg/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}
