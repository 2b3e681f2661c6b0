package deploytest

import (
	"context"
	"log/slog"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
	"go.yaml.in/yaml/v3"
)

const (
	rulesFile    = kubeDir + "/alerts.yaml"
	runbooksFile = "../../docs/runbooks.md"
	runbookURL   = "https://github.com/decryptd/decryptd/blob/main/docs/runbooks.md#"
)

// rule is one alerting rule as the plain rules file writes it.
type rule struct {
	Alert       string            `yaml:"alert" json:"alert"`
	Expr        string            `yaml:"expr" json:"expr"`
	For         string            `yaml:"for,omitempty" json:"for,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty" json:"annotations,omitempty"`
}

type ruleGroup struct {
	Name  string `yaml:"name"`
	Rules []rule `yaml:"rules"`
}

// loadRules reads the plain rules file strictly.
func loadRules(t *testing.T) []ruleGroup {
	t.Helper()
	f, err := os.Open(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var doc struct {
		Groups []ruleGroup `yaml:"groups"`
	}
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	if len(doc.Groups) == 0 {
		t.Fatalf("%s: no groups", rulesFile)
	}
	return doc.Groups
}

func allRules(t *testing.T) []rule {
	var out []rule
	for _, g := range loadRules(t) {
		out = append(out, g.Rules...)
	}
	return out
}

// promParser is a stock Prometheus's parser: no experimental functions.
func promParser() parser.Parser { return parser.NewParser(parser.Options{}) }

// TestRulesParse: every expression parses, every rule is an alert with a
// severity, a summary, a valid for, and no hard-coded figure of the
// configuration in its text.
func TestRulesParse(t *testing.T) {
	p := promParser()
	for _, r := range allRules(t) {
		if r.Alert == "" {
			t.Errorf("a rule without an alert name: %q", r.Expr)
		}
		if _, err := p.ParseExpr(r.Expr); err != nil {
			t.Errorf("%s: %v", r.Alert, err)
		}
		if r.For != "" {
			if _, err := time.ParseDuration(r.For); err != nil {
				t.Errorf("%s: for %q: %v", r.Alert, r.For, err)
			}
		}
		if s := r.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("%s: severity %q", r.Alert, s)
		}
		if r.Annotations["summary"] == "" {
			t.Errorf("%s: no summary", r.Alert)
		}
		// A configuration value written into the text goes stale when the
		// configuration changes (the "stale limit 6h" of an older summary).
		if regexp.MustCompile(`\b\d+(ms|s|m|h|d)\b`).MatchString(r.Annotations["summary"]) {
			t.Errorf("%s: summary hard-codes a duration: %q", r.Alert, r.Annotations["summary"])
		}
	}
}

// TestPrometheusRuleMatchesRulesFile: the PrometheusRule that kustomize
// builds holds exactly the plain rules file's groups.
func TestPrometheusRuleMatchesRulesFile(t *testing.T) {
	plain := loadRules(t)
	for _, dir := range []string{"base", "overlays/production"} {
		pr, ok := find[*monitoringv1.PrometheusRule](build(t, dir), "PrometheusRule", "decryptd")
		if !ok {
			t.Fatalf("%s: no PrometheusRule", dir)
		}
		var got []ruleGroup
		for _, g := range pr.Spec.Groups {
			rg := ruleGroup{Name: g.Name}
			for _, r := range g.Rules {
				x := rule{Alert: r.Alert, Expr: r.Expr.String(), Labels: r.Labels, Annotations: r.Annotations}
				if r.For != nil {
					x.For = string(*r.For)
				}
				rg.Rules = append(rg.Rules, x)
			}
			got = append(got, rg)
		}
		if !reflect.DeepEqual(got, plain) {
			t.Errorf("%s: the PrometheusRule's groups differ from %s:\n got %+v\nwant %+v", dir, rulesFile, got, plain)
		}
	}
}

// anchors returns the GitHub anchors of the Markdown headings in path.
func anchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	drop := regexp.MustCompile(`[^a-z0-9 _-]`)
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(line, "#"))
		a := strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(h), ""), " ", "-")
		out[a] = true
	}
	return out
}

// TestRunbooks: every alert's runbook_url points at a section of
// docs/runbooks.md, and that section says what it means, what to look at
// and what to do.
func TestRunbooks(t *testing.T) {
	have := anchors(t, runbooksFile)
	data, _ := os.ReadFile(runbooksFile)
	for _, r := range allRules(t) {
		u := r.Annotations["runbook_url"]
		a, ok := strings.CutPrefix(u, runbookURL)
		if !ok || a == "" {
			t.Errorf("%s: runbook_url %q does not point at a section of docs/runbooks.md (%s...)", r.Alert, u, runbookURL)
			continue
		}
		if !have[a] {
			t.Errorf("%s: docs/runbooks.md has no section #%s", r.Alert, a)
			continue
		}
		_, sec, _ := strings.Cut(string(data), "## "+r.Alert+"\n")
		sec, _, _ = strings.Cut(sec, "\n## ")
		for _, part := range []string{"What it means", "What to look at", "What to do"} {
			if !strings.Contains(sec, part) {
				t.Errorf("%s: its runbook section lacks %q", r.Alert, part)
			}
		}
	}
}

// alertRun evaluates one alert of the rules file every minute from 0 to
// end over the series of a promqltest "load" block, as Prometheus's rule
// manager does, and returns at which minutes it was firing.
func alertRun(t *testing.T, alert, load string, end time.Duration) map[time.Duration]bool {
	t.Helper()
	var r rule
	for _, x := range allRules(t) {
		if x.Alert == alert {
			r = x
		}
	}
	if r.Alert == "" {
		t.Fatalf("no alert %s", alert)
	}
	return exprRun(t, r, load, end)
}

func exprRun(t *testing.T, r rule, load string, end time.Duration) map[time.Duration]bool {
	t.Helper()
	store := promqltest.LoadedStorage(t, load)
	t.Cleanup(func() { store.Close() })
	engine := promqltest.NewTestEngineWithOpts(t, promql.EngineOpts{
		MaxSamples:    1e7,
		Timeout:       time.Minute,
		LookbackDelta: 5 * time.Minute,
		Parser:        promParser(),
		// A subquery without a step takes the evaluation interval: 1m,
		// the step of these runs (and Prometheus's default).
		NoStepSubqueryIntervalFn: func(int64) int64 { return time.Minute.Milliseconds() },
	})
	expr, err := promParser().ParseExpr(r.Expr)
	if err != nil {
		t.Fatal(err)
	}
	var hold time.Duration
	if r.For != "" {
		hold, _ = time.ParseDuration(r.For)
	}
	ar := rules.NewAlertingRule(r.Alert, expr, hold, 0, labels.FromMap(r.Labels), labels.FromMap(r.Annotations),
		labels.EmptyLabels(), "", false, slog.New(slog.DiscardHandler))
	query := rules.EngineQueryFunc(engine, store)
	firing := map[time.Duration]bool{}
	for at := time.Duration(0); at <= end; at += time.Minute {
		if _, err := ar.Eval(context.Background(), 0, time.Unix(0, 0).Add(at), query, nil, 0); err != nil {
			t.Fatalf("%s at %s: %v", r.Alert, at, err)
		}
		for _, a := range ar.ActiveAlerts() {
			if a.State == rules.StateFiring {
				firing[at] = true
			}
		}
	}
	return firing
}

// firstFiring is the first minute the alert fired, or -1.
func firstFiring(f map[time.Duration]bool, end time.Duration) time.Duration {
	for at := time.Duration(0); at <= end; at += time.Minute {
		if f[at] {
			return at
		}
	}
	return -1
}

// TestAlerts: series in, alert out, for each alert: it fires on the
// situation it names (within its for, plus the rate window where there is
// one) and stays silent on a healthy fleet, including the cases the
// earlier rules got wrong.
func TestAlerts(t *testing.T) {
	const end = 90 * time.Minute
	healthy := `
  up{job="decryptd",instance="a"} 1x90
  up{job="decryptd",instance="b"} 1x90
  decryptd_mqtt_connection_up{instance="a"} 1x90
  decryptd_mqtt_connection_up{instance="b"} 1x90
  decryptd_mqtt_messages_received_total{instance="a"} 0+600x90
  decryptd_messages_processed_total{instance="a"} 0+600x90
  decryptd_messages_processed_total{instance="b"} 0+600x90
  decryptd_inflight_messages{instance="a"} 4x90
  decryptd_inflight_messages{instance="b"} 2x90
  decryptd_dead_letters_total{instance="a",reason="malformed"} 0+1x90
  decryptd_decrypt_failures_total{instance="a",reason="auth_failed"} 0x90
  decryptd_kms_requests_total{instance="a",operation="unwrap",result="ok"} 0+2x90
  decryptd_dek_cache_stale_serving{instance="a"} 0x90
  decryptd_sink_up{instance="a",sink="records"} 1x90
  decryptd_degraded{instance="a",cause="kms"} 0x90
  decryptd_degraded{instance="a",cause="registry"} 0x90
  decryptd_degraded{instance="a",cause="sink"} 0x90
  decryptd_degraded{instance="a",cause="broker"} 0x90
  decryptd_rotation_leader{instance="a"} 1x90
  decryptd_rotation_leader{instance="b"} 0x90
  decryptd_rotation_paused{instance="a"} 0x90
  decryptd_rotation_stragglers{instance="a"} 0x90
  decryptd_rotation_rewrap_incomplete{instance="a"} 0x90
  decryptd_rotation_rewrap_failures_total{instance="a"} 0x90
  decryptd_spool_oldest_age_seconds{instance="a"} 0 3 0x88
  decryptd_spool_bytes{instance="a"} 0+1x90
  decryptd_spool_max_bytes{instance="a"} 1000x90
`
	// A healthy Kafka fleet (input.type kafka): two replicas, 150 records
	// a second, 0.33% dead-lettered (under the alert's 1%), lag of a few seconds
	// of intake, an idle partition behind a transaction marker (lag 1,
	// never committed past), one failed commit during a rebalance, no
	// decryptd_mqtt_* series at all.
	healthyKafka := `
  up{job="decryptd",instance="k0"} 1x90
  up{job="decryptd",instance="k1"} 1x90
  decryptd_input_info{instance="k0",input="kafka"} 1x90
  decryptd_input_info{instance="k1",input="kafka"} 1x90
  decryptd_degraded{instance="k0",cause="broker"} 0x90
  decryptd_degraded{instance="k1",cause="broker"} 0x90
  decryptd_degraded{instance="k0",cause="kms"} 0x90
  decryptd_kafka_assigned_partitions{instance="k0"} 2x90
  decryptd_kafka_assigned_partitions{instance="k1"} 2x90
  decryptd_kafka_records_received_total{instance="k0"} 0+6000x90
  decryptd_kafka_records_received_total{instance="k1"} 0+3000x90
  decryptd_messages_processed_total{instance="k0"} 0+6000x90
  decryptd_messages_processed_total{instance="k1"} 0+3000x90
  decryptd_inflight_messages{instance="k0"} 40x90
  decryptd_inflight_messages{instance="k1"} 20x90
  decryptd_dead_letters_total{instance="k0",reason="malformed"} 0+30x90
  decryptd_kafka_partition_lag{instance="k0",topic="t",partition="0"} 60 140 90 200 60x86
  decryptd_kafka_partition_lag{instance="k0",topic="t",partition="1"} 40x90
  decryptd_kafka_partition_lag{instance="k1",topic="t",partition="2"} 0 30 0x88
  decryptd_kafka_partition_lag{instance="k1",topic="t",partition="3"} 1x90
  decryptd_kafka_committed_offset{instance="k0",topic="t",partition="0"} 0+3000x90
  decryptd_kafka_committed_offset{instance="k0",topic="t",partition="1"} 0+3000x90
  decryptd_kafka_committed_offset{instance="k1",topic="t",partition="2"} 0+3000x90
  decryptd_kafka_committed_offset{instance="k1",topic="t",partition="3"} 500x90
  decryptd_kafka_commits_total{instance="k0",result="ok"} 0+60x90
  decryptd_kafka_commits_total{instance="k0",result="error"} 0x90
  decryptd_kafka_commits_total{instance="k1",result="ok"} 0+60x90
  decryptd_kafka_commits_total{instance="k1",result="error"} 0x30 1x60
  decryptd_kafka_rebalances_total{instance="k0",event="assigned"} 1x90
  decryptd_kafka_rebalances_total{instance="k0",event="lost"} 0x90
  decryptd_kafka_rebalances_total{instance="k1",event="lost"} 0x30 1x60
  decryptd_kafka_replay_rebuild_truncated_total{instance="k0"} 0x90
  decryptd_kafka_replay_rebuild_truncated_total{instance="k1"} 0x90
  decryptd_sink_up{instance="k0",sink="records"} 1x90
`
	for _, r := range allRules(t) {
		t.Run(r.Alert+"/healthy", func(t *testing.T) {
			if at := firstFiring(exprRun(t, r, "load 1m"+healthy, end), end); at >= 0 {
				t.Errorf("fired at %s on a healthy fleet", at)
			}
		})
		t.Run(r.Alert+"/healthy kafka", func(t *testing.T) {
			if at := firstFiring(exprRun(t, r, "load 1m"+healthyKafka, end), end); at >= 0 {
				t.Errorf("fired at %s on a healthy Kafka fleet", at)
			}
		})
	}

	cases := []struct {
		name, alert, load string
		notBefore         time.Duration // silent until then (its for)
		by                time.Duration // firing by then
	}{
		{"no targets at all", "DecryptdNotReady", `
  some_other_job_metric 1x90`, 5 * time.Minute, 6 * time.Minute},
		{"every target down", "DecryptdNotReady", `
  up{job="decryptd",instance="a"} 0x90
  up{job="decryptd",instance="b"} 0x90`, 5 * time.Minute, 6 * time.Minute},
		{"up but no replica connected", "DecryptdNotReady", `
  up{job="decryptd",instance="a"} 1x90
  decryptd_mqtt_connection_up{instance="a"} 0x90`, 5 * time.Minute, 6 * time.Minute},
		{"every Kafka replica out of the group", "DecryptdNotReady", `
  up{job="decryptd",instance="k0"} 1x90
  up{job="decryptd",instance="k1"} 1x90
  decryptd_input_info{instance="k0",input="kafka"} 1x90
  decryptd_input_info{instance="k1",input="kafka"} 1x90
  decryptd_degraded{instance="k0",cause="broker"} 1x90
  decryptd_degraded{instance="k1",cause="broker"} 1x90
  decryptd_kafka_assigned_partitions{instance="k0"} 0x90
  decryptd_kafka_assigned_partitions{instance="k1"} 0x90`, 5 * time.Minute, 6 * time.Minute},
		{"Kafka replicas ready but holding no partition", "DecryptdNotReady", `
  up{job="decryptd",instance="k0"} 1x90
  decryptd_input_info{instance="k0",input="kafka"} 1x90
  decryptd_degraded{instance="k0",cause="broker"} 0x90
  decryptd_kafka_assigned_partitions{instance="k0"} 0x90`, 5 * time.Minute, 6 * time.Minute},
		{"one Kafka replica failing its fetches", "DecryptdReplicaDown", `
  up{job="decryptd",instance="k0"} 1x90
  up{job="decryptd",instance="k1"} 1x90
  decryptd_input_info{instance="k0",input="kafka"} 1x90
  decryptd_input_info{instance="k1",input="kafka"} 1x90
  decryptd_degraded{instance="k0",cause="broker"} 0x20 1x70
  decryptd_degraded{instance="k1",cause="broker"} 0x90`, 30 * time.Minute, 31 * time.Minute},
		// Partition 0's committed offset stops at minute 20 while records
		// keep arriving behind a stuck one; partition 1 goes on.
		{"a Kafka partition stuck behind a record", "DecryptdKafkaLagNotDraining", `
  decryptd_kafka_partition_lag{instance="k0",topic="t",partition="0"} 40x20 100+100x70
  decryptd_kafka_committed_offset{instance="k0",topic="t",partition="0"} 0+3000x20 60000x70
  decryptd_kafka_partition_lag{instance="k0",topic="t",partition="1"} 40x90
  decryptd_kafka_committed_offset{instance="k0",topic="t",partition="1"} 0+3000x90`, 30 * time.Minute, 36 * time.Minute},
		// The holder stopped fetching at minute 30 (its in-flight bound
		// full): its lag is flat, its committed offset too.
		{"a Kafka holder that stopped: lag flat", "DecryptdKafkaLagNotDraining", `
  decryptd_kafka_partition_lag{instance="k0",topic="t",partition="0"} 40x30 500x60
  decryptd_kafka_committed_offset{instance="k0",topic="t",partition="0"} 0+3000x30 90000x60`, 40 * time.Minute, 46 * time.Minute},
		// 100 records a second taken in, the lag rising by 1000 a
		// minute: more than 5 minutes of intake (30000) from minute 30.
		{"a Kafka group falling behind", "DecryptdKafkaLagGrowing", `
  decryptd_kafka_records_received_total{instance="k0"} 0+6000x90
  decryptd_kafka_partition_lag{instance="k0",topic="t",partition="0"} 100+1000x90
  decryptd_kafka_committed_offset{instance="k0",topic="t",partition="0"} 0+5000x90`, 45 * time.Minute, 46 * time.Minute},
		// From minute 10 every commit of k0 fails (one a second).
		{"Kafka commits failing", "DecryptdKafkaCommitErrors", `
  decryptd_kafka_commits_total{instance="k0",result="ok"} 0+60x10 600x80
  decryptd_kafka_commits_total{instance="k0",result="error"} 0x10 0+60x80
  decryptd_kafka_commits_total{instance="k1",result="ok"} 0+60x90
  decryptd_kafka_commits_total{instance="k1",result="error"} 0x90`, 20 * time.Minute, 24 * time.Minute},
		{"a truncated replay rebuild", "DecryptdKafkaReplayRebuildTruncated", `
  decryptd_kafka_replay_rebuild_truncated_total{instance="k0"} 0x30 1x60`, 30 * time.Minute, 31 * time.Minute},
		{"partitions lost twice in an hour", "DecryptdKafkaPartitionsLost", `
  decryptd_kafka_rebalances_total{instance="k0",event="lost"} 0x10 1x20 2x60`, 30 * time.Minute, 32 * time.Minute},
		{"one replica down beside a healthy one", "DecryptdReplicaDown", `
  up{job="decryptd",instance="a"} 1x90
  up{job="decryptd",instance="b"} 1x20 0x70
  decryptd_mqtt_connection_up{instance="a"} 1x90`, 30 * time.Minute, 32 * time.Minute},
		{"one replica disconnected", "DecryptdReplicaDown", `
  up{job="decryptd",instance="a"} 1x90
  decryptd_mqtt_connection_up{instance="a"} 1x20 0x70`, 30 * time.Minute, 31 * time.Minute},
		{"auth failures", "DecryptdAuthFailures", `
  decryptd_decrypt_failures_total{instance="a",reason="auth_failed"} 0+60x90`, 10 * time.Minute, 16 * time.Minute},
		{"dead letters above 1%", "DecryptdDeadLetters", `
  decryptd_mqtt_messages_received_total{instance="a"} 0+600x90
  decryptd_dead_letters_total{instance="a",reason="auth_failed"} 0+60x90`, 10 * time.Minute, 16 * time.Minute},
		// The same ratio on a Kafka fleet: received counted from
		// decryptd_kafka_records_received_total (2%, not 0.01/s).
		{"dead letters above 1% on a Kafka fleet", "DecryptdDeadLetters", `
  decryptd_kafka_records_received_total{instance="k0"} 0+6000x90
  decryptd_dead_letters_total{instance="k0",reason="auth_failed"} 0+120x90`, 10 * time.Minute, 16 * time.Minute},
		{"stale keys served", "DecryptdServingStaleKeys", `
  decryptd_dek_cache_stale_serving{instance="a"} 12x90`, 15 * time.Minute, 16 * time.Minute},
		{"KMS transient errors", "DecryptdKMSErrors", `
  decryptd_kms_requests_total{instance="a",operation="unwrap",result="revoked"} 0+5x90
  decryptd_kms_requests_total{instance="a",operation="unwrap",result="transient"} 0+5x90`, 10 * time.Minute, 16 * time.Minute},
		{"sink down", "DecryptdSinkDown", `
  decryptd_sink_up{instance="a",sink="records"} 0x90`, 2 * time.Minute, 3 * time.Minute},
		{"KMS degraded on one replica", "DecryptdDegraded", `
  decryptd_degraded{instance="a",cause="kms"} 0x10 1x80
  decryptd_degraded{instance="b",cause="kms"} 0x90
  decryptd_degraded{instance="a",cause="sink"} 0x90`, 20 * time.Minute, 21 * time.Minute},
		{"a stuck replica beside a healthy one", "DecryptdBacklogGrowing", `
  decryptd_inflight_messages{instance="a"} 4x90
  decryptd_messages_processed_total{instance="a"} 0+600x90
  decryptd_inflight_messages{instance="b"} 1024x90
  decryptd_messages_processed_total{instance="b"} 5000x90`, 10 * time.Minute, 12 * time.Minute},
		// The replica restarts at minute 30 (its counter starts again from
		// 0) and is stuck from then on: nothing finished since minute 30.
		{"a replica stuck after a restart", "DecryptdBacklogGrowing", `
  decryptd_inflight_messages{instance="a"} 4x90
  decryptd_messages_processed_total{instance="a"} 0+600x30 0x60`, 40 * time.Minute, 52 * time.Minute},
		{"rewrap failures", "DecryptdRewrapFailures", `
  decryptd_rotation_rewrap_failures_total{instance="a"} 0x10 1+1x80`, 10 * time.Minute, 12 * time.Minute},
		{"rewrap incomplete", "DecryptdRewrapIncomplete", `
  decryptd_rotation_rewrap_incomplete{instance="a"} 1x90`, 60 * time.Minute, 61 * time.Minute},
		{"rotation paused", "DecryptdRotationPaused", `
  decryptd_rotation_paused{instance="a"} 1x90`, 15 * time.Minute, 16 * time.Minute},
		{"no rotation leader", "DecryptdRotationNoLeader", `
  decryptd_rotation_leader{instance="a"} 0x90
  decryptd_rotation_leader{instance="b"} 0x90`, 10 * time.Minute, 11 * time.Minute},
		{"spooled messages waiting for their keys", "DecryptdSpoolOld", `
  decryptd_spool_oldest_age_seconds{instance="a"} 0x10 60+60x80`, 20 * time.Minute, 21 * time.Minute},
		{"spool nearly full", "DecryptdSpoolFilling", `
  decryptd_spool_bytes{instance="a"} 0+20x90
  decryptd_spool_max_bytes{instance="a"} 1000x90`, 45 * time.Minute, 46 * time.Minute},
	}
	for _, c := range cases {
		t.Run(c.alert+"/"+c.name, func(t *testing.T) {
			at := firstFiring(alertRun(t, c.alert, "load 1m"+c.load, end), end)
			if at < 0 || at > c.by {
				t.Fatalf("first fired at %s, want by %s", at, c.by)
			}
			if at < c.notBefore {
				t.Fatalf("fired at %s, before %s", at, c.notBefore)
			}
		})
	}

	// Stragglers: for 24h, so a longer run at a coarser step would be
	// needed; one step past 24h suffices.
	t.Run("DecryptdRotationStragglers/a day of stragglers", func(t *testing.T) {
		const day = 25 * time.Hour
		f := alertRun(t, "DecryptdRotationStragglers", "load 1m\n  decryptd_rotation_stragglers{instance=\"a\"} 3x1500", day)
		if at := firstFiring(f, day); at < 24*time.Hour || at > 24*time.Hour+time.Minute {
			t.Fatalf("first fired at %s, want at 24h", at)
		}
	})
}

// TestAlertsSilent: the cases the earlier rules got wrong, from the
// silent side: a KMS that answers only "revoked" is not failing, a
// replica restart while messages keep flowing is not a standstill, and
// 0.5% dead letters on a Kafka fleet is under 1%; and what a Kafka
// consumer group does in normal life: a backlog that drains, a partition
// that moves, an idle partition behind a transaction marker, commits that
// fail during a rebalance, a single lost partition.
func TestAlertsSilent(t *testing.T) {
	const end = 60 * time.Minute
	for _, c := range []struct{ name, alert, load string }{
		{"revoked-only KMS results", "DecryptdKMSErrors", `
  decryptd_kms_requests_total{instance="a",operation="unwrap",result="revoked"} 0+30x60
  decryptd_kms_requests_total{instance="a",operation="unwrap",result="ok"} 0+2x60`},
		// Restarts at minute 20 and goes on delivering: the counter drops
		// to 0 and grows again.
		{"a replica restart, delivering", "DecryptdBacklogGrowing", `
  decryptd_inflight_messages{instance="a"} 4x60
  decryptd_messages_processed_total{instance="a"} 0+600x20 0+600x40
  decryptd_inflight_messages{instance="b"} 4x60
  decryptd_messages_processed_total{instance="b"} 0+600x60`},
		// The same restart with the replica's new pod address: its series
		// change instance and start from 0.
		{"a replica restart on a new address", "DecryptdBacklogGrowing", `
  decryptd_inflight_messages{instance="a"} 4x20
  decryptd_messages_processed_total{instance="a"} 0+600x20
  decryptd_inflight_messages{instance="a2"} _x21 4x39
  decryptd_messages_processed_total{instance="a2"} _x21 0+600x39`},
		// The Kafka cases. 0.5% of 100 records a second is 0.5 dead
		// letters a second: under 1%, though over the 0.01/s at which the
		// rule that divided by the MQTT counter alone fired when an MQTT
		// counter was there at all (TestOldRulesWereWrong).
		{"0.5% dead letters on a Kafka-only fleet", "DecryptdDeadLetters", `
  decryptd_input_info{instance="k0",input="kafka"} 1x60
  decryptd_kafka_records_received_total{instance="k0"} 0+6000x60
  decryptd_dead_letters_total{instance="k0",reason="malformed"} 0+30x60`},
		{"0.5% dead letters on Kafka beside an idle MQTT replica", "DecryptdDeadLetters", `
  decryptd_mqtt_messages_received_total{instance="a"} 0x60
  decryptd_kafka_records_received_total{instance="k0"} 0+6000x60
  decryptd_dead_letters_total{instance="k0",reason="malformed"} 0+30x60`},
		// Both inputs' fleets in one Prometheus: the two counters add up.
		{"1.5 dead letters a second of 200 over MQTT and Kafka", "DecryptdDeadLetters", `
  decryptd_mqtt_messages_received_total{instance="a"} 0+6000x60
  decryptd_kafka_records_received_total{instance="k0"} 0+6000x60
  decryptd_dead_letters_total{instance="a",reason="malformed"} 0+60x60
  decryptd_dead_letters_total{instance="k0",reason="malformed"} 0+30x60`},
		// A replica failing its fetches beside a working one: a
		// ReplicaDown, not a NotReady.
		{"one Kafka replica failing fetches beside a working one", "DecryptdNotReady", `
  up{job="decryptd",instance="k0"} 1x60
  up{job="decryptd",instance="k1"} 1x60
  decryptd_input_info{instance="k0",input="kafka"} 1x60
  decryptd_input_info{instance="k1",input="kafka"} 1x60
  decryptd_degraded{instance="k0",cause="broker"} 1x60
  decryptd_degraded{instance="k1",cause="broker"} 0x60
  decryptd_kafka_assigned_partitions{instance="k0"} 0x60
  decryptd_kafka_assigned_partitions{instance="k1"} 3x60`},
		// An MQTT replica's broker cause is the MQTT term's business (its
		// connection gauge), not the Kafka term's.
		{"an MQTT replica with one of its connections down", "DecryptdReplicaDown", `
  up{job="decryptd",instance="a"} 1x60
  decryptd_input_info{instance="a",input="mqtt"} 1x60
  decryptd_mqtt_connection_up{instance="a",connection="0"} 1x60
  decryptd_mqtt_connection_up{instance="a",connection="1"} 0x60
  decryptd_degraded{instance="a",cause="broker"} 1x60`},
		// A backlog of 200000 after an outage, draining by 2000 a minute
		// at 100 records a second: minutes behind, but falling.
		{"a Kafka backlog draining", "DecryptdKafkaLagGrowing", `
  decryptd_kafka_records_received_total{instance="k0"} 0+6000x60
  decryptd_kafka_partition_lag{instance="k0",topic="t",partition="0"} 200000-2000x60
  decryptd_kafka_committed_offset{instance="k0",topic="t",partition="0"} 0+8000x60`},
		{"an idle partition behind a transaction marker", "DecryptdKafkaLagNotDraining", `
  decryptd_kafka_partition_lag{instance="k0",topic="t",partition="0"} 1x60
  decryptd_kafka_committed_offset{instance="k0",topic="t",partition="0"} 500x60`},
		// The partition moves from k0 to k1 at minute 20; k1 rebuilds its
		// replay window for two minutes before its first commit.
		{"a partition moving to another replica", "DecryptdKafkaLagNotDraining", `
  decryptd_kafka_partition_lag{instance="k0",topic="t",partition="0"} 40x20
  decryptd_kafka_committed_offset{instance="k0",topic="t",partition="0"} 0+3000x20
  decryptd_kafka_partition_lag{instance="k1",topic="t",partition="0"} _x20 3000 3000 40x37
  decryptd_kafka_committed_offset{instance="k1",topic="t",partition="0"} _x20 60000x3 63000+3000x36`},
		// A few failed commits at each of two rebalances.
		{"failed commits around rebalances", "DecryptdKafkaCommitErrors", `
  decryptd_kafka_commits_total{instance="k0",result="ok"} 0+60x60
  decryptd_kafka_commits_total{instance="k0",result="error"} 0x20 3x20 6x20`},
		{"partitions lost once", "DecryptdKafkaPartitionsLost", `
  decryptd_kafka_rebalances_total{instance="k0",event="lost"} 0x20 1x40`},
	} {
		t.Run(c.alert+"/"+c.name, func(t *testing.T) {
			if at := firstFiring(alertRun(t, c.alert, "load 1m"+c.load, end), end); at >= 0 {
				t.Fatalf("fired at %s", at)
			}
		})
	}
}

// TestOldRulesWereWrong shows, on the same engine, what the rules before
// this version did with two of the cases above, so the tests above are
// known to tell the difference.
func TestOldRulesWereWrong(t *testing.T) {
	const end = 60 * time.Minute
	const oldDeadLetters = `sum(rate(decryptd_dead_letters_total[5m])) / clamp_min(sum(rate(decryptd_mqtt_messages_received_total[5m])), 1) > 0.01`
	old := []struct {
		r          rule
		load       string
		wantFiring bool // what a correct rule does
	}{
		{rule{Alert: "OldNotReady", Expr: `sum(up{job="decryptd"}) == 0 or sum(decryptd_mqtt_connection_up) == 0`, For: "5m"},
			"load 1m\n  some_other_job_metric 1x60", true},
		{rule{Alert: "OldKMSErrors", Expr: `sum(rate(decryptd_kms_requests_total{result!="ok"}[5m])) > 0`, For: "10m"},
			"load 1m\n  decryptd_kms_requests_total{instance=\"a\",operation=\"unwrap\",result=\"revoked\"} 0+30x60", false},
		// The dead-letter ratio over the MQTT counter alone: on a
		// Kafka-only fleet the denominator is empty and 2% dead letters
		// never fire; beside an idle MQTT replica it is clamped to 1/s and
		// 0.5% fires (0.5 dead letters a second).
		{rule{Alert: "OldDeadLetters (Kafka only)", Expr: oldDeadLetters, For: "10m"},
			"load 1m\n  decryptd_kafka_records_received_total{instance=\"k0\"} 0+6000x60\n  decryptd_dead_letters_total{instance=\"k0\",reason=\"malformed\"} 0+120x60", true},
		{rule{Alert: "OldDeadLetters (Kafka beside idle MQTT)", Expr: oldDeadLetters, For: "10m"},
			"load 1m\n  decryptd_mqtt_messages_received_total{instance=\"a\"} 0x60\n  decryptd_kafka_records_received_total{instance=\"k0\"} 0+6000x60\n  decryptd_dead_letters_total{instance=\"k0\",reason=\"malformed\"} 0+30x60", false},
		{rule{Alert: "OldNotReady (Kafka)", Expr: `absent(up{job="decryptd"} == 1) or max(decryptd_mqtt_connection_up) == 0`, For: "5m"},
			"load 1m\n  up{job=\"decryptd\",instance=\"k0\"} 1x60\n  decryptd_input_info{instance=\"k0\",input=\"kafka\"} 1x60\n  decryptd_degraded{instance=\"k0\",cause=\"broker\"} 1x60", true},
		{rule{Alert: "OldBacklogGrowing", Expr: `max(decryptd_inflight_messages) > 0 and deriv(sum(decryptd_records_delivered_total)[10m:]) == 0`, For: "10m"},
			"load 1m\n  decryptd_inflight_messages{instance=\"a\"} 4x60\n  decryptd_records_delivered_total{instance=\"a\"} 0+600x60\n  decryptd_inflight_messages{instance=\"b\"} 1024x60\n  decryptd_records_delivered_total{instance=\"b\"} 5000x60", true},
	}
	for _, o := range old {
		got := firstFiring(exprRun(t, o.r, o.load, end), end) >= 0
		if got == o.wantFiring {
			t.Errorf("%s: the old rule already did the right thing (firing %v): the case does not test the fix", o.r.Alert, got)
		}
	}
}

// TestRunbookPanels: a panel a runbook sends the reader to ("Keys
// dashboard, "KMS latency p99"") exists on that dashboard.
func TestRunbookPanels(t *testing.T) {
	data, err := os.ReadFile(runbooksFile)
	if err != nil {
		t.Fatal(err)
	}
	titles := map[string]map[string]bool{}
	for file, panels := range loadDashboards(t) {
		board := strings.TrimSuffix(file, ".json")
		titles[board] = map[string]bool{}
		for _, p := range panels {
			titles[board][p.Title] = true
		}
	}
	text := strings.Join(strings.Fields(string(data)), " ")
	refs := regexp.MustCompile(`(?i)\b(overview|keys|rotation|kafka) dashboard[^.;(]*`)
	quoted := regexp.MustCompile(`"([^"]+)"`)
	n := 0
	for _, m := range refs.FindAllStringSubmatch(text, -1) {
		board := strings.ToLower(m[1])
		for _, q := range quoted.FindAllStringSubmatch(m[0], -1) {
			n++
			if !titles[board][q[1]] {
				t.Errorf("docs/runbooks.md names panel %q of the %s dashboard, which has no such panel", q[1], board)
			}
		}
	}
	if n == 0 {
		t.Fatal("found no panel reference in docs/runbooks.md")
	}
	t.Logf("%d panel references checked", n)
}
