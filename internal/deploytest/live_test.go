package deploytest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"

	"github.com/decryptd/decryptd/deploy/grafana"
)

const grafanaDir = "../../deploy/grafana"

// dashPanel is one panel of a shipped dashboard JSON file.
type dashPanel struct {
	Board, Title, Type, Unit string
	Targets                  []grafana.Query
}

// loadDashboards reads the committed dashboard files (what ships, not
// the Go that made them).
func loadDashboards(t *testing.T) map[string][]dashPanel {
	t.Helper()
	out := map[string][]dashPanel{}
	for _, b := range grafana.Boards() {
		data, err := os.ReadFile(filepath.Join(grafanaDir, b.File))
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Title  string `json:"title"`
			Panels []struct {
				Title       string `json:"title"`
				Type        string `json:"type"`
				FieldConfig struct {
					Defaults struct {
						Unit string `json:"unit"`
					} `json:"defaults"`
				} `json:"fieldConfig"`
				Targets []struct {
					Expr         string `json:"expr"`
					LegendFormat string `json:"legendFormat"`
				} `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal(data, &d); err != nil {
			t.Fatalf("%s: %v", b.File, err)
		}
		for _, p := range d.Panels {
			dp := dashPanel{Board: d.Title, Title: p.Title, Type: p.Type, Unit: p.FieldConfig.Defaults.Unit}
			for _, q := range p.Targets {
				dp.Targets = append(dp.Targets, grafana.Query{Expr: q.Expr, Legend: q.LegendFormat})
			}
			out[b.File] = append(out[b.File], dp)
		}
	}
	return out
}

// withWindow replaces Grafana's $__rate_interval by a window.
func withWindow(expr, window string) string {
	return strings.ReplaceAll(expr, "$__rate_interval", window)
}

// TestDashboardQueriesParse: every query of every panel parses (with
// $__rate_interval as Grafana would fill it).
func TestDashboardQueriesParse(t *testing.T) {
	p := promParser()
	n := 0
	for file, panels := range loadDashboards(t) {
		for _, dp := range panels {
			if len(dp.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", file, dp.Title)
			}
			for _, q := range dp.Targets {
				if _, err := p.ParseExpr(withWindow(q.Expr, "1m")); err != nil {
					t.Errorf("%s: %q: %v", file, dp.Title, err)
				}
				n++
			}
		}
	}
	t.Logf("%d dashboard queries parse", n)
}

// selectorsOf lists the metric names and the label names each expression
// selects on.
func selectorsOf(t *testing.T, expr string) map[string][]string {
	t.Helper()
	e, err := promParser().ParseExpr(withWindow(expr, "1m"))
	if err != nil {
		t.Fatalf("%q: %v", expr, err)
	}
	out := map[string][]string{}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		var ls []string
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName {
				name = m.Value
				continue
			}
			ls = append(ls, m.Name)
		}
		out[name] = append(out[name], ls...)
		return nil
	})
	return out
}

// TestLiveDaemon runs two real deployments, scrapes their /metrics as
// Prometheus would, and checks the rules and dashboards against what they
// exposed: an MQTT one (rotation and dead letters included, see
// runDaemon) and a Kafka one (input.type kafka, two replicas against
// kfake, see runKafkaDaemon). promlint finds nothing in either; every
// metric an alert or a panel names exists in one of them, with every label
// they match on (so the decryptd_kafka_* names are checked against the
// kafkainput package's real registration); every panel's queries return
// data over the run of its input (the overview's over both, but for the
// panels marked MQTT-only). With DECRYPTD_DASHBOARD_PICTURES=DIR it also
// writes each dashboard's picture (DIR/<board>.svg) drawn from those
// results: the kafka board from the Kafka run, the others from the MQTT
// run.
func TestLiveDaemon(t *testing.T) {
	mqttRun := runDaemon(t)
	kafkaRun := runKafkaDaemon(t)
	runs := []struct {
		input string
		run   *liveRun
	}{{"mqtt", mqttRun}, {"kafka", kafkaRun}}
	// have: every series name either deployment exposed, with the label
	// names it carried in either.
	have := map[string]map[string]bool{}
	for _, r := range runs {
		got := exposed(t, r.run.last())
		for name, ls := range got {
			if have[name] == nil {
				have[name] = map[string]bool{}
			}
			for l := range ls {
				have[name][l] = true
			}
		}
		t.Logf("%s: %d scrapes over %s; %d series names exposed", r.input, len(r.run.scrapes), r.run.end.Sub(r.run.start).Round(time.Second), len(got))
	}

	for _, r := range runs {
		last := r.run.last()
		t.Run("promlint/"+r.input, func(t *testing.T) {
			problems, err := promlint.New(bytes.NewReader(last)).Lint()
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Errorf("promlint: %s: %s", p.Metric, p.Text)
			}
		})

		// Labels come from small fixed sets: never a device id, a key id or a
		// key version (one series per device would not scale to a fleet).
		t.Run("no per-device or per-key label/"+r.input, func(t *testing.T) {
			for _, line := range strings.Split(string(last), "\n") {
				if strings.HasPrefix(line, "#") {
					continue
				}
				for _, id := range []string{"pump-", "meter-", "ghost-", "device/", `="v1"`, `="v2"`} {
					if strings.Contains(line, id) {
						t.Errorf("a series carries a device or key label: %s", line)
					}
				}
			}
		})
	}
	t.Run("kafka input exposed", func(t *testing.T) {
		got := exposed(t, kafkaRun.last())
		for _, name := range []string{"decryptd_kafka_partition_lag", "decryptd_kafka_commits_total", "decryptd_kafka_rebalances_total", "decryptd_kafka_records_received_total", "decryptd_kafka_replay_rebuild_truncated_total"} {
			if got[name] == nil {
				t.Errorf("the Kafka deployment does not expose %s", name)
			}
		}
		if !bytes.Contains(kafkaRun.last(), []byte(`decryptd_input_info{input="kafka"} 1`)) {
			t.Error(`the Kafka deployment does not say decryptd_input_info{input="kafka"} 1`)
		}
	})

	// Target labels Prometheus adds; up is the scrape's own series.
	targetLabels := map[string]bool{"job": true, "instance": true}
	checkExpr := func(t *testing.T, where, expr string) {
		t.Helper()
		for name, ls := range selectorsOf(t, expr) {
			if name == "up" {
				continue
			}
			got, ok := have[name]
			if !ok {
				t.Errorf("%s: %s is not in either live daemon's /metrics", where, name)
				continue
			}
			for _, l := range ls {
				if !got[l] && !targetLabels[l] {
					t.Errorf("%s: %s has no label %q", where, name, l)
				}
			}
		}
	}
	t.Run("rule metrics exist", func(t *testing.T) {
		for _, r := range allRules(t) {
			checkExpr(t, "alert "+r.Alert, r.Expr)
		}
	})
	dashboards := loadDashboards(t)
	t.Run("dashboard metrics exist", func(t *testing.T) {
		for file, panels := range dashboards {
			for _, dp := range panels {
				for _, q := range dp.Targets {
					checkExpr(t, file+" "+dp.Title, q.Expr)
				}
			}
		}
	})

	// Evaluate every panel over the run, as Grafana would ask Prometheus,
	// with $__rate_interval at 10 scrape intervals.
	engine := promqltest.NewTestEngineWithOpts(t, promql.EngineOpts{
		MaxSamples: 5e7, Timeout: time.Minute, LookbackDelta: 5 * time.Minute, Parser: promParser(),
		NoStepSubqueryIntervalFn: func(int64) int64 { return scrapeEvery.Milliseconds() },
	})
	window := (10 * scrapeEvery).String()
	evalPanel := func(t *testing.T, run *liveRun, file string, dp dashPanel) panelData {
		t.Helper()
		pd := panelData{Title: dp.Title, Unit: dp.Unit, Stat: dp.Type == "stat"}
		for _, q := range dp.Targets {
			qr, err := engine.NewRangeQuery(context.Background(), run.store, nil, withWindow(q.Expr, window), run.start, run.end, scrapeEvery)
			if err != nil {
				t.Fatalf("%s/%s: %v", file, dp.Title, err)
			}
			res := qr.Exec(context.Background())
			if res.Err != nil {
				t.Fatalf("%s/%s: %q: %v", file, dp.Title, q.Expr, res.Err)
			}
			m, err := res.Matrix()
			if err != nil {
				t.Fatal(err)
			}
			pd.Series = append(pd.Series, toSeries(m, q.Legend)...)
			qr.Close()
		}
		return pd
	}
	// The Kafka run did what the kafka board is there to show: the second
	// replica's join revoked partitions from the first and had it rebuild
	// their replay windows from the log, and at the end the group held
	// every partition and had committed them all.
	t.Run("kafka run rebalanced", func(t *testing.T) {
		for expr, want := range map[string]func(float64) bool{
			`sum(decryptd_kafka_rebalances_total{event="revoked"})`:                         func(v float64) bool { return v >= 1 },
			`count(decryptd_kafka_rebalances_total{event="assigned"} > 0)`:                  func(v float64) bool { return v == 2 },
			`sum(decryptd_kafka_replay_rebuild_records_total)`:                              func(v float64) bool { return v > 0 },
			`sum(decryptd_kafka_assigned_partitions)`:                                       func(v float64) bool { return v == kafkaPartitions },
			`sum(decryptd_kafka_commits_total{result="ok"})`:                                func(v float64) bool { return v > 0 },
			`sum(decryptd_kafka_partition_lag)`:                                             func(v float64) bool { return v == 0 },
			`sum(decryptd_kafka_records_unmapped_total)`:                                    func(v float64) bool { return v > 0 },
			`sum(decryptd_dead_letters_total) / sum(decryptd_kafka_records_received_total)`: func(v float64) bool { return v > 0.05 },
		} {
			q, err := engine.NewInstantQuery(context.Background(), kafkaRun.store, nil, expr, kafkaRun.end)
			if err != nil {
				t.Fatal(err)
			}
			res := q.Exec(context.Background())
			v, err := res.Vector()
			if err != nil || len(v) != 1 || !want(v[0].F) {
				t.Errorf("%s at the end of the Kafka run: %v (%v)", expr, res.Value, err)
				for _, e := range []string{"decryptd_kafka_partition_lag", "decryptd_kafka_committed_offset", "decryptd_inflight_messages"} {
					dq, _ := engine.NewInstantQuery(context.Background(), kafkaRun.store, nil, e, kafkaRun.end)
					t.Logf("%s", dq.Exec(context.Background()).Value)
				}
			}
			q.Close()
		}
	})

	// Panels that show a fault; a healthy run has none to show.
	mayBeEmpty := map[string]bool{"KMS errors": true}
	// The board each run draws: the kafka board is the Kafka input's; the
	// others are drawn from the MQTT run (rotation needs MQTT for rekeys).
	runOf := func(file string) (*liveRun, string) {
		if file == "kafka.json" {
			return kafkaRun, "a live decryptd deployment with input.type kafka (two replicas, kfake)"
		}
		return mqttRun, "a live decryptd run"
	}
	boards := map[string][]panelData{}
	t.Run("dashboard panels have data", func(t *testing.T) {
		for _, b := range grafana.Boards() {
			run, _ := runOf(b.File)
			for _, dp := range dashboards[b.File] {
				pd := evalPanel(t, run, b.File, dp)
				if !hasValue(pd.Series) && !mayBeEmpty[dp.Title] {
					t.Errorf("%s: panel %q shows no data after the run", b.File, dp.Title)
				}
				boards[b.File] = append(boards[b.File], pd)
			}
		}
	})
	// The overview serves either input: over the Kafka run too, every
	// panel has data but those that only an MQTT input can fill (marked
	// "(MQTT input)" in their title).
	t.Run("overview panels have data on the kafka input", func(t *testing.T) {
		for _, dp := range dashboards["overview.json"] {
			if strings.Contains(dp.Title, "(MQTT input)") || mayBeEmpty[dp.Title] {
				continue
			}
			if !hasValue(evalPanel(t, kafkaRun, "overview.json", dp).Series) {
				t.Errorf("overview.json: panel %q shows no data over the Kafka run", dp.Title)
			}
		}
	})

	t.Run("pictures", func(t *testing.T) {
		dir := os.Getenv("DECRYPTD_DASHBOARD_PICTURES")
		for _, b := range grafana.Boards() {
			run, what := runOf(b.File)
			note := fmt.Sprintf("Not Grafana: each panel's PromQL from deploy/grafana/%s, evaluated with Prometheus's engine over %d scrapes (every %s) of %s (internal/deploytest TestLiveDaemon); $__rate_interval = %s.",
				b.File, len(run.scrapes), scrapeEvery, what, window)
			svg := renderSVG(b.Title, note, boards[b.File], run.start, run.end)
			if !strings.Contains(svg, "<path d=\"M") {
				t.Errorf("%s: the picture draws no line", b.File)
			}
			if dir == "" {
				continue
			}
			out := filepath.Join(dir, strings.TrimSuffix(b.File, ".json")+".svg")
			if err := os.WriteFile(out, []byte(svg), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %s", out)
		}
	})
}

func hasValue(ss []seriesData) bool {
	for _, s := range ss {
		for _, v := range s.V {
			if !math.IsNaN(v) {
				return true
			}
		}
	}
	return false
}

// TestPicturesCurrent: the committed pictures (docs/dashboards) show every
// panel of the committed dashboards, so a dashboard changed without
// redrawing them fails here.
func TestPicturesCurrent(t *testing.T) {
	for file, panels := range loadDashboards(t) {
		svg, err := os.ReadFile(filepath.Join("../../docs/dashboards", strings.TrimSuffix(file, ".json")+".svg"))
		if err != nil {
			t.Fatalf("%v (draw it: DECRYPTD_DASHBOARD_PICTURES=$PWD/docs/dashboards go test -run TestLiveDaemon ./internal/deploytest)", err)
		}
		for _, p := range panels {
			if !bytes.Contains(svg, []byte(">"+html.EscapeString(p.Title)+"<")) {
				t.Errorf("docs/dashboards picture of %s lacks panel %q: redraw it", file, p.Title)
			}
		}
	}
}
