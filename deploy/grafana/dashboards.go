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
	return []Board{overview(), keys(), rotation()}
}

func overview() Board {
	return Board{UID: "decryptd-overview", Title: "decryptd / overview", File: "overview.json",
		Description: "Messages in, records out, dead letters, duplicates, latency, in flight, sinks and the MQTT connection of each replica.",
		Panels: []Panel{
			{Title: "Messages in", Unit: "ops", Description: "MQTT messages received per second, by replica.",
				Queries: []Query{{`sum by (instance) (rate(decryptd_mqtt_messages_received_total[$__rate_interval]))`, "{{instance}}"}}},
			{Title: "Records out", Unit: "ops", Description: "Records each sink accepted per second (the dead-letter sink included).",
				Queries: []Query{{`sum by (sink) (rate(decryptd_records_delivered_total[$__rate_interval]))`, "{{sink}}"}}},
			{Title: "Dead letters by reason", Unit: "ops", Stacked: true, Description: "Messages that could not be decrypted, by the spec's reason (docs/runbooks.md#decryptddeadletters).",
				Queries: []Query{{`sum by (reason) (rate(decryptd_dead_letters_total[$__rate_interval]))`, "{{reason}}"}}},
			{Title: "Duplicates", Unit: "ops", Description: "Exact repeats of messages already delivered (acknowledged again, no new record), by cause: redelivery (the broker's) or repeat (the device sent it again).",
				Queries: []Query{{`sum by (cause) (rate(decryptd_duplicates_total[$__rate_interval]))`, "duplicates: {{cause}}"},
					{`sum(rate(decryptd_mqtt_messages_redelivered_total[$__rate_interval]))`, "redelivered by the broker"}}},
			{Title: "Ack latency", Unit: "s", Description: "Receipt to PUBACK, p50 and p99 over all replicas.",
				Queries: []Query{{`histogram_quantile(0.5, sum by (le) (rate(decryptd_mqtt_ack_latency_seconds_bucket[$__rate_interval])))`, "p50"},
					{`histogram_quantile(0.99, sum by (le) (rate(decryptd_mqtt_ack_latency_seconds_bucket[$__rate_interval])))`, "p99"}}},
			{Title: "End-to-end latency", Unit: "s", Description: "Device timestamp to sink acceptance, p50 and p99 (includes device clock skew and buffering).",
				Queries: []Query{{`histogram_quantile(0.5, sum by (le) (rate(decryptd_end_to_end_latency_seconds_bucket[$__rate_interval])))`, "p50"},
					{`histogram_quantile(0.99, sum by (le) (rate(decryptd_end_to_end_latency_seconds_bucket[$__rate_interval])))`, "p99"}}},
			{Title: "In flight", Unit: "short", Description: "Messages received and not yet acknowledged, by replica (bounded by mqtt.max_in_flight).",
				Queries: []Query{{`sum by (instance) (decryptd_inflight_messages)`, "{{instance}}"}}},
			{Title: "Sinks: up", Unit: "short", Description: "1 while a sink accepts writes; 0 pauses intake (docs/runbooks.md#decryptdsinkdown).",
				Queries: []Query{{`min by (sink) (decryptd_sink_up)`, "{{sink}}"}}},
			{Title: "Sink write time p99", Unit: "s", Description: "Time of one batch write (and fsync), by sink.",
				Queries: []Query{{`histogram_quantile(0.99, sum by (le, sink) (rate(decryptd_sink_write_duration_seconds_bucket[$__rate_interval])))`, "{{sink}}"}}},
			{Title: "MQTT connection per replica", Unit: "short", Description: "1 while the replica is connected and subscribed.",
				Queries: []Query{{`max by (instance) (decryptd_mqtt_connection_up)`, "{{instance}}"}}},
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
