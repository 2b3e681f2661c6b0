package rotation

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the rotation's Prometheus metrics. The gauges describing the
// fleet are set by the replica that leads; the others by every replica.
type Metrics struct {
	versions            *prometheus.GaugeVec // state
	pending             prometheus.Gauge
	stragglers          prometheus.Gauge
	paused              prometheus.Gauge
	leader              prometheus.Gauge
	rekeysSent          prometheus.Counter
	rekeysFailed        prometheus.Counter
	rotationsStarted    *prometheus.CounterVec // trigger
	adoptions           prometheus.Counter
	revoked             prometheus.Counter
	decryptOnlyMessages prometheus.Counter
	failures            *prometheus.CounterVec // operation
	rewrapFailures      prometheus.Counter
	rewrapFailing       prometheus.Gauge
	rootKeyAge          prometheus.Gauge
}

// Triggers and operations: the label values used.
var (
	triggers   = []string{"age", "messages", "operator"}
	operations = []string{"rotate", "rekey", "adopt", "revoke", "root_rotate", "rewrap", "scan"}
)

// NewMetrics registers the metrics on reg (nil: kept, not exported).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		versions:            gaugeVec("decryptd_rotation_dek_versions", "DEK versions in the registry by state (in use: active and decrypt_only), as last seen by the rotation leader.", "state"),
		pending:             gauge("decryptd_rotation_pending", "Rotations whose new version is delivered but not yet adopted."),
		stragglers:          gauge("decryptd_rotation_stragglers", "Pending rotations not adopted after their first retry."),
		paused:              gauge("decryptd_rotation_paused", "1 while the rollout is paused because failed deliveries or stragglers passed the threshold."),
		leader:              gauge("decryptd_rotation_leader", "1 while this replica holds the rotation lease."),
		rekeysSent:          counter("decryptd_rotation_rekeys_sent_total", "Rekey messages the broker accepted."),
		rekeysFailed:        counter("decryptd_rotation_rekeys_failed_total", "Rekey messages that could not be made or published."),
		rotationsStarted:    counterVec("decryptd_rotation_started_total", "Rotations started, by trigger.", "trigger"),
		adoptions:           counter("decryptd_rotation_adoptions_total", "New versions adopted (first message decrypted under them)."),
		revoked:             counter("decryptd_rotation_revoked_total", "Superseded versions revoked after their grace period."),
		decryptOnlyMessages: counter("decryptd_rotation_decrypt_only_messages_total", "Messages decrypted under a decrypt_only (superseded) version."),
		failures:            counterVec("decryptd_rotation_failures_total", "Rotation operations that failed, by operation.", "operation"),
		rewrapFailures:      counter("decryptd_rotation_rewrap_failures_total", "DEK versions whose rewrap after a root rotation failed."),
		rewrapFailing:       gauge("decryptd_rotation_rewrap_incomplete", "1 while the rewrap after a root rotation has failures left to retry."),
		rootKeyAge:          gauge("decryptd_rotation_root_key_age_seconds", "Age of the root key version that wraps new DEKs (since its last rotation), as last seen by the rotation leader; 0 while root rotation is off or not yet read."),
	}
	for _, s := range []string{"active", "decrypt_only", "revoked", "shredded"} {
		m.versions.WithLabelValues(s)
	}
	for _, t := range triggers {
		m.rotationsStarted.WithLabelValues(t)
	}
	for _, o := range operations {
		m.failures.WithLabelValues(o)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.versions, m.pending, m.stragglers, m.paused, m.leader, m.rekeysSent,
			m.rekeysFailed, m.rotationsStarted, m.adoptions, m.revoked, m.decryptOnlyMessages, m.failures,
			m.rewrapFailures, m.rewrapFailing, m.rootKeyAge} {
			if err := reg.Register(c); err != nil {
				return nil, errors.Join(errors.New("rotation: register metrics"), err)
			}
		}
	}
	return m, nil
}

// The constructors below keep NewMetrics to one line a metric.

func gauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
}

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

func gaugeVec(name, help, label string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, []string{label})
}

func counterVec(name, help, label string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{label})
}
