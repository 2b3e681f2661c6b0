package grafana

import (
	"encoding/json"
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// Query is one PromQL target of a panel. $__rate_interval is Grafana's
// rate window (at least four scrape intervals).
type Query struct {
	Expr   string
	Legend string
}

// Kind is how a panel draws.
type Kind int

// Panel kinds.
const (
	TimeSeries Kind = iota // lines over time
	Stat                   // one current value per series
)

// Panel is one dashboard panel.
type Panel struct {
	Title       string
	Description string
	Unit        string // Grafana unit id: short, s, ops, percentunit, ...
	Kind        Kind
	Stacked     bool
	Queries     []Query
}

// Board is one dashboard: File is its JSON file's name in this folder.
type Board struct {
	UID, Title, File, Description string
	Panels                        []Panel
}

// Boards are decryptd's dashboards.
func Boards() []Board {
	return []Board{overview(), keys(), rotation(), kafka()}
}

func overview() Board {
	return Board{UID: "decryptd-overview", Title: "decryptd / overview", File: "overview.json",
		Description: "Messages in, records out, dead letters, duplicates, latency, in flight, sinks and the input connection of each replica, for either input (input.type mqtt or kafka; the kafka input's own panels are on decryptd / kafka input).",
		Panels: []Panel{
			// One input per replica: each instance has one of the two
			// counters, so "or" gives one line per replica whichever it runs.
			{Title: "Messages in", Unit: "ops", Description: "Messages received per second, by replica: MQTT messages (input.type mqtt) or Kafka records (input.type kafka), redeliveries included.",
				Queries: []Query{{`sum by (instance) (rate(decryptd_mqtt_messages_received_total[$__rate_interval])) or sum by (instance) (rate(decryptd_kafka_records_received_total[$__rate_interval]))`, "{{instance}}"}}},
			{Title: "Records out", Unit: "ops", Description: "Records each sink accepted per second (the dead-letter sink included).",
				Queries: []Query{{`sum by (sink) (rate(decryptd_records_delivered_total[$__rate_interval]))`, "{{sink}}"}}},
			{Title: "Dead letters by reason", Unit: "ops", Stacked: true, Description: "Messages that could not be decrypted, by the spec's reason (docs/runbooks.md#decryptddeadletters).",
				Queries: []Query{{`sum by (reason) (rate(decryptd_dead_letters_total[$__rate_interval]))`, "{{reason}}"}}},
			{Title: "Duplicates", Unit: "ops", Description: "Exact repeats of messages already delivered (acknowledged again, no new record), by cause: redelivery (the broker's) or repeat (the device sent it again); and what the input marked redelivered (MQTT: the broker's DUP flag; Kafka: below the previous holder's receipt point).",
				Queries: []Query{{`sum by (cause) (rate(decryptd_duplicates_total[$__rate_interval]))`, "duplicates: {{cause}}"},
					{`sum(rate(decryptd_mqtt_messages_redelivered_total[$__rate_interval]))`, "redelivered by the broker"},
					{`sum(rate(decryptd_kafka_records_redelivered_total[$__rate_interval]))`, "redelivered by Kafka"}}},
			{Title: "Ack latency (MQTT input)", Unit: "s", Description: "Receipt to PUBACK, p50 and p99 over all MQTT replicas. The Kafka input commits offsets instead (decryptd / kafka input: lag and commits); this panel is empty there.",
				Queries: []Query{{`histogram_quantile(0.5, sum by (le) (rate(decryptd_mqtt_ack_latency_seconds_bucket[$__rate_interval])))`, "p50"},
					{`histogram_quantile(0.99, sum by (le) (rate(decryptd_mqtt_ack_latency_seconds_bucket[$__rate_interval])))`, "p99"}}},
			{Title: "End-to-end latency", Unit: "s", Description: "Device timestamp to sink acceptance, p50 and p99 (includes device clock skew and buffering).",
				Queries: []Query{{`histogram_quantile(0.5, sum by (le) (rate(decryptd_end_to_end_latency_seconds_bucket[$__rate_interval])))`, "p50"},
					{`histogram_quantile(0.99, sum by (le) (rate(decryptd_end_to_end_latency_seconds_bucket[$__rate_interval])))`, "p99"}}},
			{Title: "In flight", Unit: "short", Description: "Messages received and not yet settled (acknowledged, or commit-ready), by replica (bounded by mqtt.max_in_flight or kafka.max_in_flight).",
				Queries: []Query{{`sum by (instance) (decryptd_inflight_messages)`, "{{instance}}"}}},
			{Title: "Sinks: up", Unit: "short", Description: "1 while a sink accepts writes; 0 pauses intake (docs/runbooks.md#decryptdsinkdown).",
				Queries: []Query{{`min by (sink) (decryptd_sink_up)`, "{{sink}}"}}},
			{Title: "Sink write time p99", Unit: "s", Description: "Time of one batch write (and fsync), by sink.",
				Queries: []Query{{`histogram_quantile(0.99, sum by (le, sink) (rate(decryptd_sink_write_duration_seconds_bucket[$__rate_interval])))`, "{{sink}}"}}},
			// MQTT: any connection open (as before). Kafka has no connection
			// gauge; its readiness (group joined, fetches succeeding, a broker
			// answering) is the broker cause of decryptd_degraded, which the
			// join restricts to Kafka replicas.
			{Title: "Input connected per replica", Unit: "short", Description: "1 while the replica's input is connected: MQTT, a connection open; Kafka, the group joined and fetches succeeding (not decryptd_degraded{cause=\"broker\"}).",
				Queries: []Query{{`max by (instance) (decryptd_mqtt_connection_up) or max by (instance) ((1 - decryptd_degraded{cause="broker"}) and on (instance) decryptd_input_info{input="kafka"})`, "{{instance}}"}}},
		}}
}

func keys() Board {
	return Board{UID: "decryptd-keys", Title: "decryptd / keys", File: "keys.json",
		Description: "KMS calls, their latency and errors, the DEK cache, and unwraps against the key versions in use.",
		Panels: []Panel{
			{Title: "KMS calls by result", Unit: "ops", Stacked: true, Description: "revoked is an answer, not an error (docs/runbooks.md#decryptdkmserrors).",
				Queries: []Query{{`sum by (operation, result) (rate(decryptd_kms_requests_total[$__rate_interval]))`, "{{operation}} {{result}}"}}},
			{Title: "KMS latency p99", Unit: "s",
				Queries: []Query{{`histogram_quantile(0.99, sum by (le, operation) (rate(decryptd_kms_request_duration_seconds_bucket[$__rate_interval])))`, "{{operation}}"}}},
			{Title: "KMS errors", Unit: "ops", Description: "Results other than ok and revoked.",
				Queries: []Query{{`sum by (operation, result) (rate(decryptd_kms_requests_total{result!~"ok|revoked"}[$__rate_interval]))`, "{{operation}} {{result}}"}}},
			{Title: "Cache lookups by result", Unit: "ops", Stacked: true, Description: "hit, miss, negative (no such version, remembered), stale (served past its lifetime while the KMS is unreachable).",
				Queries: []Query{{`sum by (result) (rate(decryptd_dek_cache_requests_total[$__rate_interval]))`, "{{result}}"}}},
			{Title: "Cache hit ratio", Unit: "percentunit", Kind: Stat,
				Queries: []Query{{`sum(rate(decryptd_dek_cache_requests_total{result="hit"}[$__rate_interval])) / clamp_min(sum(rate(decryptd_dek_cache_requests_total[$__rate_interval])), 1e-9)`, "hit ratio"}}},
			{Title: "Cached DEKs and stale serving", Unit: "short",
				Queries: []Query{{`sum by (instance) (decryptd_dek_cache_entries)`, "entries {{instance}}"},
					{`sum by (instance) (decryptd_dek_cache_stale_serving)`, "stale {{instance}}"}}},
			{Title: "Unwraps per hour vs key versions cached", Unit: "short", Description: "About one unwrap per key version per cache.ttl: unwraps far above the versions in use mean the cache is not holding.",
				Queries: []Query{{`sum(increase(decryptd_kms_requests_total{operation="unwrap"}[1h]))`, "unwraps in the last hour"},
					{`max(decryptd_dek_cache_entries)`, "versions cached (largest replica)"}}},
			{Title: "Cache evictions", Unit: "ops",
				Queries: []Query{{`sum by (reason) (rate(decryptd_dek_cache_evictions_total[$__rate_interval]))`, "{{reason}}"}}},
		}}
}

func rotation() Board {
	return Board{UID: "decryptd-rotation", Title: "decryptd / rotation", File: "rotation.json",
		Description: "Fleet key rotation: versions by state, rekeys, adoption, stragglers, pause, leader, the rewrap after a root key rotation, and the root key's age. Fleet gauges come from the replica holding the rotation lease (max picks it).",
		Panels: []Panel{
			{Title: "DEK versions by state", Unit: "short", Stacked: true,
				Queries: []Query{{`max by (state) (decryptd_rotation_dek_versions)`, "{{state}}"}}},
			{Title: "Rotations started", Unit: "short", Description: "By trigger (age, messages, operator) over the last hour.",
				Queries: []Query{{`sum by (trigger) (increase(decryptd_rotation_started_total[1h]))`, "{{trigger}}"}}},
			{Title: "Rekeys sent and failed", Unit: "ops",
				Queries: []Query{{`sum(rate(decryptd_rotation_rekeys_sent_total[$__rate_interval]))`, "sent"},
					{`sum(rate(decryptd_rotation_rekeys_failed_total[$__rate_interval]))`, "failed"}}},
			{Title: "Adoptions and revocations", Unit: "ops",
				Queries: []Query{{`sum(rate(decryptd_rotation_adoptions_total[$__rate_interval]))`, "adopted"},
					{`sum(rate(decryptd_rotation_revoked_total[$__rate_interval]))`, "revoked after grace"}}},
			{Title: "Pending and stragglers", Unit: "short", Description: "Rotations waiting for their device's first message under the new version; stragglers are still silent after a retry.",
				Queries: []Query{{`max(decryptd_rotation_pending)`, "pending"}, {`max(decryptd_rotation_stragglers)`, "stragglers"}}},
			{Title: "Messages under decrypt_only versions", Unit: "ops", Description: "Late or buffered messages under a superseded version (still decrypted until its grace period ends).",
				Queries: []Query{{`sum(rate(decryptd_rotation_decrypt_only_messages_total[$__rate_interval]))`, "decrypt_only"}}},
			{Title: "Paused, leader", Unit: "short", Kind: Stat, Description: "paused 1: the rollout stopped itself (docs/runbooks.md#decryptdrotationpaused); leaders: replicas holding the lease (1 expected).",
				Queries: []Query{{`max(decryptd_rotation_paused)`, "paused"}, {`sum(decryptd_rotation_leader)`, "leaders"}}},
			{Title: "Rotation failures by operation", Unit: "ops",
				Queries: []Query{{`sum by (operation) (rate(decryptd_rotation_failures_total[$__rate_interval]))`, "{{operation}}"}}},
			{Title: "Rewrap after a root rotation", Unit: "short", Description: "incomplete 1: DEKs still under an older root version (do not disable it).",
				Queries: []Query{{`max(decryptd_rotation_rewrap_incomplete)`, "incomplete"},
					{`sum(increase(decryptd_rotation_rewrap_failures_total[1h]))`, "failures in the last hour"}}},
			{Title: "Root key age", Unit: "s", Description: "Age of the root key version that wraps new DEKs, against the root rotation policy (rotation.root_max_age); 0 while root rotation is off.",
				Queries: []Query{{`max(decryptd_rotation_root_key_age_seconds)`, "root key age"}}},
		}}
}

// kafka is the board of the Kafka input (input.type kafka): what an
// operator of a consumer group watches. Lag is per partition held (its
// high watermark, refreshed by the holder every 10 s even when it does not
// fetch, less its committed offset or the log start offset), so it counts
// the records in flight too: read it with the commits.
func kafka() Board {
	return Board{UID: "decryptd-kafka", Title: "decryptd / kafka input", File: "kafka.json",
		Description: "The Kafka input (input.type kafka): lag by partition and replica, records in, commits, rebalances, the replay window rebuild on assignment, fetch errors and group membership. Source-neutral panels (records out, dead letters, latency) are on decryptd / overview.",
		Panels: []Panel{
			{Title: "Lag by partition", Unit: "short", Description: "Records of each partition not committed yet: its high watermark (refreshed every 10 s) less its committed offset or log start (records in flight included); see docs/runbooks.md#decryptdkafkalagnotdraining.",
				Queries: []Query{{`max by (topic, partition) (decryptd_kafka_partition_lag)`, "{{topic}}/{{partition}}"}}},
			{Title: "Lag and in flight by replica", Unit: "short", Description: "The lag of the partitions each replica holds, beside the records it holds in flight (bounded by kafka.max_in_flight): lag well above in flight is backlog still in Kafka.",
				Queries: []Query{{`sum by (instance) (decryptd_kafka_partition_lag)`, "lag {{instance}}"},
					{`sum by (instance) (decryptd_inflight_messages and on (instance) decryptd_input_info{input="kafka"})`, "in flight {{instance}}"}}},
			{Title: "Records in", Unit: "ops", Description: "Records fetched and handed to processing, by replica; those marked redelivered (the previous holder had received them) and those without an MQTT topic (unmapped: no device check against the topic).",
				Queries: []Query{{`sum by (instance) (rate(decryptd_kafka_records_received_total[$__rate_interval]))`, "{{instance}}"},
					{`sum(rate(decryptd_kafka_records_redelivered_total[$__rate_interval]))`, "redelivered"},
					{`sum(rate(decryptd_kafka_records_unmapped_total[$__rate_interval]))`, "unmapped"}}},
			{Title: "Seconds behind", Unit: "s", Description: "The group's lag divided by its intake rate: how long the backlog takes to drain at the current pace (about kafka.commit_interval when keeping up; docs/runbooks.md#decryptdkafkalaggrowing).",
				Queries: []Query{{`sum(max by (topic, partition) (decryptd_kafka_partition_lag)) / sum(rate(decryptd_kafka_records_received_total[$__rate_interval]))`, "seconds behind"}}},
			{Title: "Commits by result", Unit: "ops", Stacked: true, Description: "Offset commits (every kafka.commit_interval while a partition progresses, on revocation, at shutdown) by result; error: at least one partition's commit failed (docs/runbooks.md#decryptdkafkacommiterrors).",
				Queries: []Query{{`sum by (result) (rate(decryptd_kafka_commits_total[$__rate_interval]))`, "{{result}}"}}},
			{Title: "Rebalances by event", Unit: "short", Description: "Rebalances that changed a replica's partitions over the last hour: assigned, revoked (committed and released), lost (session expired or fenced: dropped without a commit, docs/runbooks.md#decryptdkafkapartitionslost).",
				Queries: []Query{{`sum by (event) (increase(decryptd_kafka_rebalances_total[1h]))`, "{{event}}"}}},
			{Title: "Assigned partitions per replica", Unit: "short", Description: "Partitions each replica holds (0 is normal for a replica beyond the partition count).",
				Queries: []Query{{`sum by (instance) (decryptd_kafka_assigned_partitions)`, "{{instance}}"}}},
			{Title: "Replay window rebuild", Unit: "short", Description: "Records read back into the replay window on assignment, and partitions whose rebuild stopped early (kafka.replay_rebuild_timeout, revocation, a read failure) over the last hour (docs/runbooks.md#decryptdkafkareplayrebuildtruncated).",
				Queries: []Query{{`sum(increase(decryptd_kafka_replay_rebuild_records_total[1h]))`, "records read back"},
					{`sum(increase(decryptd_kafka_replay_rebuild_truncated_total[1h]))`, "partitions stopped short"}}},
			{Title: "Fetch errors", Unit: "ops", Description: "Fetch errors the client reported (broker unreachable, authorization, ...), by replica; fetching retries.",
				Queries: []Query{{`sum by (instance) (rate(decryptd_kafka_fetch_errors_total[$__rate_interval]))`, "{{instance}}"}}},
			{Title: "Group joined and fetching", Unit: "short", Description: "1 while the replica has joined the group, its fetches succeed and a broker answers (/readyz); 0 is decryptd_degraded{cause=\"broker\"}.",
				Queries: []Query{{`max by (instance) ((1 - decryptd_degraded{cause="broker"}) and on (instance) decryptd_input_info{input="kafka"})`, "{{instance}}"}}},
		}}
}

// datasource is the dashboard's Prometheus, chosen by its variable.
var datasource = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

// Build turns a Board into a Grafana dashboard: two panels a row, each
// 12 wide and 8 high.
func Build(b Board) (dashboard.Dashboard, error) {
	d := dashboard.NewDashboardBuilder(b.Title).
		Uid(b.UID).
		Description(b.Description).
		Tags([]string{"decryptd"}).
		Refresh("30s").
		Time("now-6h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Prometheus").Type("prometheus"))
	for i, p := range b.Panels {
		pos := dashboard.GridPos{X: uint32(12 * (i % 2)), Y: uint32(8 * (i / 2)), W: 12, H: 8}
		var targets []cog.Builder[variants.Dataquery]
		for j, q := range p.Queries {
			targets = append(targets, prometheus.NewDataqueryBuilder().
				Datasource(datasource).
				Expr(q.Expr).
				LegendFormat(q.Legend).
				RefId(string(rune('A'+j))))
		}
		switch p.Kind {
		case Stat:
			d.WithPanel(stat.NewPanelBuilder().Id(uint32(i + 1)).Title(p.Title).Description(p.Description).Unit(p.Unit).
				Datasource(datasource).GridPos(pos).Targets(targets).
				GraphMode(common.BigValueGraphModeArea))
		default:
			ts := timeseries.NewPanelBuilder().Id(uint32(i + 1)).Title(p.Title).Description(p.Description).Unit(p.Unit).
				Datasource(datasource).GridPos(pos).Targets(targets).Min(0).FillOpacity(10).
				Legend(common.NewVizLegendOptionsBuilder().ShowLegend(true).DisplayMode(common.LegendDisplayModeList).Placement(common.LegendPlacementBottom)).
				Tooltip(common.NewVizTooltipOptionsBuilder().Mode(common.TooltipDisplayModeMulti).Sort(common.SortOrderDescending))
			if p.Stacked {
				ts.Stacking(common.NewStackingConfigBuilder().Mode(common.StackingModeNormal))
			}
			d.WithPanel(ts)
		}
	}
	out, err := d.Build()
	if err != nil {
		return dashboard.Dashboard{}, fmt.Errorf("dashboard %s: %w", b.UID, err)
	}
	return out, nil
}

// JSON is the dashboard's file content: indented, with a final newline.
func JSON(b Board) ([]byte, error) {
	d, err := Build(b)
	if err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("dashboard %s: %w", b.UID, err)
	}
	return append(data, '\n'), nil
}
