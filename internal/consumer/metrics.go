package consumer

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	received    prometheus.Counter
	redelivered prometheus.Counter
	reconnects  prometheus.Counter
	released    prometheus.Counter
	inline      prometheus.Counter
	ackLatency  prometheus.Histogram
}

// newMetrics creates the consumer's metrics; the gauges read live state
// through the given functions at scrape time, so they cannot drift.
func newMetrics(reg prometheus.Registerer, up, inflight, unacked func() float64) (*metrics, error) {
	m := &metrics{
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_mqtt_messages_received_total",
			Help: "PUBLISH packets delivered to the consumer by the broker, redeliveries included.",
		}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_mqtt_messages_redelivered_total",
			Help: "Messages the broker sent again with the DUP flag (unacknowledged before a reconnect or restart); records they yield repeat an earlier record id.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_mqtt_reconnects_total",
			Help: "Connections established after the first one.",
		}),
		released: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_mqtt_messages_released_total",
			Help: "Messages received but neither processed nor acknowledged (shutdown, connection loss, broker over its window); the broker redelivers them.",
		}),
		inline: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_mqtt_messages_fast_path_total",
			Help: "Messages the intake goroutine processed itself (key cached, none of the topic's messages waiting); the others went to a worker.",
		}),
		ackLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "decryptd_mqtt_ack_latency_seconds",
			Help:    "Time from receiving a message to handing its PUBACK to the client.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 17), // 0.5 ms .. 33 s
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{
		m.received, m.redelivered, m.reconnects, m.released, m.inline, m.ackLatency,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "decryptd_mqtt_connection_up",
			Help: "1 while the MQTT connection is open, else 0.",
		}, up),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "decryptd_inflight_messages",
			Help: "Messages held by the consumer between receipt and acknowledgement (bounded by MaxInFlight).",
		}, inflight),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "decryptd_mqtt_unacked_messages",
			Help: "Messages received on the current connection and not yet acknowledged.",
		}, unacked),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("consumer: register metrics: %w", err)
		}
	}
	return m, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
