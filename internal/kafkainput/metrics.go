package kafkainput

import (
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	received         prometheus.Counter
	redelivered      prometheus.Counter
	unmapped         prometheus.Counter
	inline           prometheus.Counter
	fetchErrors      prometheus.Counter
	rebalances       *prometheus.CounterVec
	commits          *prometheus.CounterVec
	rebuilt          prometheus.Counter
	rebuildTruncated prometheus.Counter
}

var (
	lagDesc = prometheus.NewDesc("decryptd_kafka_partition_lag",
		"Records of a partition this replica holds that are not committed yet: its high watermark (from its last fetch, refreshed every 10 s while it fetches nothing) less its committed offset, or its log start offset when it has no commit or that is higher.",
		[]string{"topic", "partition"}, nil)
	committedDesc = prometheus.NewDesc("decryptd_kafka_committed_offset",
		"The offset last committed for a partition this replica holds (-1: none yet).",
		[]string{"topic", "partition"}, nil)
)

// newMetrics creates the input's metrics; the gauges read live state at
// scrape time. Labels: topic (a configured Kafka topic) and partition
// number only.
func newMetrics(reg prometheus.Registerer, in *Input) (*metrics, error) {
	m := &metrics{
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_kafka_records_received_total",
			Help: "Records fetched and handed to processing, redeliveries included.",
		}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_kafka_records_redelivered_total",
			Help: "Records at or past the committed offset that the partition's previous holder had already received (per its last commit): processed again, their records repeat an earlier record id.",
		}),
		unmapped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_kafka_records_unmapped_total",
			Help: "Records without an MQTT topic (no topic header, or no key for topic_from key): processed without a device check against the topic.",
		}),
		inline: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_kafka_records_fast_path_total",
			Help: "Records a worker handed to the pipeline without waiting (key cached); the others waited for their key (or a transient fault) in the pipeline.",
		}),
		fetchErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_kafka_fetch_errors_total",
			Help: "Fetch errors reported by the client (broker unreachable, authorization, ...); fetching retries.",
		}),
		rebalances: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "decryptd_kafka_rebalances_total",
			Help: "Group rebalances that changed this replica's partitions, by event: assigned, revoked (committed and released), lost (dropped without a commit).",
		}, []string{"event"}),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "decryptd_kafka_commits_total",
			Help: "Offset commits by result (ok, error).",
		}, []string{"result"}),
		rebuilt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_kafka_replay_rebuild_records_total",
			Help: "Records read back and remembered in the replay window when partitions were assigned.",
		}),
		rebuildTruncated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decryptd_kafka_replay_rebuild_truncated_total",
			Help: "Partitions whose replay window rebuild stopped before their committed offset (timeout, revocation, reader failure).",
		}),
	}
	for _, e := range []string{"assigned", "revoked", "lost"} {
		m.rebalances.WithLabelValues(e)
	}
	for _, r := range []string{"ok", "error"} {
		m.commits.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{
		m.received, m.redelivered, m.unmapped, m.inline, m.fetchErrors, m.rebalances, m.commits, m.rebuilt, m.rebuildTruncated,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "decryptd_inflight_messages",
			Help: "Messages held by the input between receipt and settling (bounded by max_in_flight).",
		}, func() float64 { return float64(in.inFlight()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "decryptd_kafka_assigned_partitions",
			Help: "Partitions this replica holds.",
		}, func() float64 { in.mu.Lock(); defer in.mu.Unlock(); return float64(len(in.parts)) }),
		partitionCollector{in},
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("kafkainput: register metrics: %w", err)
		}
	}
	return m, nil
}

// partitionCollector exports lag and committed offset per held partition.
type partitionCollector struct{ in *Input }

func (c partitionCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- lagDesc
	ch <- committedDesc
}

func (c partitionCollector) Collect(ch chan<- prometheus.Metric) {
	c.in.mu.Lock()
	ps := make([]*partition, 0, len(c.in.parts))
	for _, p := range c.in.parts {
		ps = append(ps, p)
	}
	c.in.mu.Unlock()
	for _, p := range ps {
		num := strconv.Itoa(int(p.p))
		committed := p.committed.Load()
		ch <- prometheus.MustNewConstMetric(committedDesc, prometheus.GaugeValue, float64(committed), p.topic, num)
		if lag, ok := lagOf(p.hwm.Load(), committed, p.logStart.Load()); ok {
			ch <- prometheus.MustNewConstMetric(lagDesc, prometheus.GaugeValue, float64(lag), p.topic, num)
		}
	}
}
