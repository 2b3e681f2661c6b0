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
		versions: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "decryptd_rotation_dek_versions",
			Help: "DEK versions in the registry by state (in use: active and decrypt_only), as last seen by the rotation leader."}, []string{"state"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "decryptd_rotation_pending",
			Help: "Rotations whose new version is delivered but not yet adopted."}),
		stragglers: prometheus.NewGauge(prometheus.GaugeOpts{Name: "decryptd_rotation_stragglers",
			Help: "Pending rotations not adopted after their first retry."}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{Name: "decryptd_rotation_paused",
			Help: "1 while the rollout is paused because failed deliveries or stragglers passed the threshold."}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "decryptd_rotation_leader",
			Help: "1 while this replica holds the rotation lease."}),
		rekeysSent: prometheus.NewCounter(prometheus.CounterOpts{Name: "decryptd_rotation_rekeys_sent_total",
			Help: "Rekey messages the broker accepted."}),
		rekeysFailed: prometheus.NewCounter(prometheus.CounterOpts{Name: "decryptd_rotation_rekeys_failed_total",
			Help: "Rekey messages that could not be made or published."}),
		rotationsStarted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "decryptd_rotation_started_total",
			Help: "Rotations started, by trigger."}, []string{"trigger"}),
		adoptions: prometheus.NewCounter(prometheus.CounterOpts{Name: "decryptd_rotation_adoptions_total",
			Help: "New versions adopted (first message decrypted under them)."}),
		revoked: prometheus.NewCounter(prometheus.CounterOpts{Name: "decryptd_rotation_revoked_total",
			Help: "Superseded versions revoked after their grace period."}),
		decryptOnlyMessages: prometheus.NewCounter(prometheus.CounterOpts{Name: "decryptd_rotation_decrypt_only_messages_total",
			Help: "Messages decrypted under a decrypt_only (superseded) version."}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "decryptd_rotation_failures_total",
			Help: "Rotation operations that failed, by operation."}, []string{"operation"}),
		rewrapFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "decryptd_rotation_rewrap_failures_total",
			Help: "DEK versions whose rewrap after a root rotation failed."}),
		rewrapFailing: prometheus.NewGauge(prometheus.GaugeOpts{Name: "decryptd_rotation_rewrap_incomplete",
			Help: "1 while the rewrap after a root rotation has failures left to retry."}),
		rootKeyAge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "decryptd_rotation_root_key_age_seconds",
			Help: "Age of the root key version that wraps new DEKs (since its last rotation), as last seen by the rotation leader; 0 while root rotation is off or not yet read."}),
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
