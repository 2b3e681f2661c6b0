package spool

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a replay attempt (decryptd_spool_replayed_total{outcome}).
const (
	OutcomeDelivered    = "delivered"     // every sink holds the record
	OutcomeDeadLettered = "dead_lettered" // a permanent reason once the key resolved (e.g. auth_failed)
	OutcomeDuplicate    = "duplicate"     // the replay window had it (a redelivered copy came first)
	OutcomeFailed       = "failed"        // handed over, but not done (shutdown): stays spooled for the next start
	OutcomeRetry        = "retry"         // the key is still unresolvable: tried again later
	OutcomeUnreadable   = "unreadable"    // the record could not be read back: tried again later
)

// Outcomes is every outcome replays are counted under.
func Outcomes() []string {
	return []string{OutcomeDelivered, OutcomeDeadLettered, OutcomeDuplicate, OutcomeFailed, OutcomeRetry, OutcomeUnreadable}
}

type metrics struct {
	appends  prometheus.Counter
	full     prometheus.Counter
	torn     prometheus.Counter
	replayed *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, s *Spool) (*metrics, error) {
	m := &metrics{
		appends: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_spool_appends_total",
			Help: "Messages written to the key-pending spool (their key could not be resolved for now, or their device had messages spooled already).",
		}),
		full: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_spool_full_total",
			Help: "Appends refused because the spool was at spool.max_bytes; the message waited in the pipeline instead (backpressure).",
		}),
		torn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_spool_torn_records_total",
			Help: "Torn or corrupt records found at the end of a segment when the spool was reopened (a crash during a write, before the message was acknowledged); truncated.",
		}),
		replayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "decryptd_spool_replayed_total",
			Help: "Replay attempts of spooled messages, by outcome.",
		}, []string{"outcome"}),
	}
	for _, o := range Outcomes() {
		m.replayed.WithLabelValues(o)
	}
	cs := []prometheus.Collector{m.appends, m.full, m.torn, m.replayed,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "decryptd_spool_messages",
			Help: "Messages in the key-pending spool, not yet delivered.",
		}, func() float64 { return float64(s.Stats().Messages) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "decryptd_spool_bytes",
			Help: "Bytes of the key-pending spool's segment files (bounded by spool.max_bytes).",
		}, func() float64 { return float64(s.Stats().Bytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "decryptd_spool_max_bytes",
			Help: "The spool's bound on its segment files' total size (spool.max_bytes).",
		}, func() float64 { return float64(s.o.MaxBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "decryptd_spool_oldest_age_seconds",
			Help: "Age (since receipt) of the oldest spooled message not yet handed to the sinks; 0 when none.",
		}, func() float64 {
			o := s.oldest()
			if o == 0 {
				return 0
			}
			return max(0, s.o.Now().Sub(time.Unix(0, o)).Seconds())
		}),
	}
	if reg != nil {
		for _, c := range cs {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("spool: register metrics: %w", err)
			}
		}
	}
	return m, nil
}
