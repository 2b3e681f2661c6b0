package consumer

import (
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// connectionLabel names the link a per-connection series belongs to: "0"
// to Connections-1, a small fixed set (never a client id, which may carry a
// host name).
const connectionLabel = "connection"

type metrics struct {
	inline     prometheus.Counter
	ackLatency prometheus.Histogram
}

// linkMetrics are one link's series, resolved once so that the per-message
// path does no label lookup.
type linkMetrics struct {
	received    prometheus.Counter
	redelivered prometheus.Counter
	reconnects  prometheus.Counter
	released    prometheus.Counter
}

// newMetrics creates the consumer's metrics and sets each link's m; the
// gauges read live state through functions at scrape time, so they cannot
// drift.
func newMetrics(reg prometheus.Registerer, links []*link, inflight func() float64) (*metrics, error) {
	received := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "decryptd_mqtt_messages_received_total",
		Help: "PUBLISH packets delivered to the consumer by the broker, redeliveries included, per MQTT connection.",
	}, []string{connectionLabel})
	redelivered := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "decryptd_mqtt_messages_redelivered_total",
		Help: "Messages the broker sent again with the DUP flag (unacknowledged before a reconnect or restart), per MQTT connection; records they yield repeat an earlier record id.",
	}, []string{connectionLabel})
	reconnects := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "decryptd_mqtt_reconnects_total",
		Help: "Connections established after the first one, per MQTT connection.",
	}, []string{connectionLabel})
	released := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "decryptd_mqtt_messages_released_total",
		Help: "Messages received but neither processed nor acknowledged (shutdown, connection loss, broker over its window), per MQTT connection; the broker redelivers them.",
	}, []string{connectionLabel})
	m := &metrics{
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
	cs := []prometheus.Collector{
		received, redelivered, reconnects, released, m.inline, m.ackLatency,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "decryptd_inflight_messages",
			Help: "Messages held by the consumer between receipt and acknowledgement, all MQTT connections together (bounded by MaxInFlight).",
		}, inflight),
	}
	for _, l := range links {
		n := strconv.Itoa(l.n)
		l.m = linkMetrics{
			received:    received.WithLabelValues(n),
			redelivered: redelivered.WithLabelValues(n),
			reconnects:  reconnects.WithLabelValues(n),
			released:    released.WithLabelValues(n),
		}
		cs = append(cs,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name:        "decryptd_mqtt_connection_up",
				Help:        "1 while the MQTT connection is open, else 0, per MQTT connection.",
				ConstLabels: prometheus.Labels{connectionLabel: n},
			}, func() float64 { return b2f(l.client.IsConnectionOpen()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name:        "decryptd_mqtt_unacked_messages",
				Help:        "Messages received on this MQTT connection since it last connected and not yet acknowledged.",
				ConstLabels: prometheus.Labels{connectionLabel: n},
			}, func() float64 { return float64(l.unacked.Load()) }),
		)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range cs {
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
