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

// TestLiveDaemon runs a real daemon (rotation and dead letters included,
// see runDaemon), scrapes its /metrics as Prometheus would, and checks the
// rules and dashboards against what it exposed: promlint finds nothing;
// every metric an alert or a panel names exists, with every label they
// match on; every panel's queries return data over the run. With
// DECRYPTD_DASHBOARD_PICTURES=DIR it also writes each dashboard's picture
// (DIR/<board>.svg) drawn from those results.
func TestLiveDaemon(t *testing.T) {
	run := runDaemon(t)
	last := run.last()
	have := exposed(t, last)
	t.Logf("%d scrapes over %s; %d series names exposed", len(run.scrapes), run.end.Sub(run.start).Round(time.Second), len(have))

	t.Run("promlint", func(t *testing.T) {
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
	t.Run("no per-device or per-key label", func(t *testing.T) {
		for _, line := range strings.Split(string(last), "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			for _, id := range []string{"pump-", "ghost-", "device/", `="v1"`, `="v2"`} {
				if strings.Contains(line, id) {
					t.Errorf("a series carries a device or key label: %s", line)
				}
			}
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
				t.Errorf("%s: %s is not in the live daemon's /metrics", where, name)
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
	// Panels that show a fault; a healthy run has none to show.
	mayBeEmpty := map[string]bool{"KMS errors": true}
	boards := map[string][]panelData{}
	t.Run("dashboard panels have data", func(t *testing.T) {
		for _, b := range grafana.Boards() {
			for _, dp := range dashboards[b.File] {
				pd := panelData{Title: dp.Title, Unit: dp.Unit, Stat: dp.Type == "stat"}
				for _, q := range dp.Targets {
					qr, err := engine.NewRangeQuery(context.Background(), run.store, nil, withWindow(q.Expr, window), run.start, run.end, scrapeEvery)
					if err != nil {
						t.Fatalf("%s/%s: %v", b.File, dp.Title, err)
					}
					res := qr.Exec(context.Background())
					if res.Err != nil {
						t.Fatalf("%s/%s: %q: %v", b.File, dp.Title, q.Expr, res.Err)
					}
					m, err := res.Matrix()
					if err != nil {
						t.Fatal(err)
					}
					pd.Series = append(pd.Series, toSeries(m, q.Legend)...)
					qr.Close()
				}
				if !hasValue(pd.Series) && !mayBeEmpty[dp.Title] {
					t.Errorf("%s: panel %q shows no data after the run", b.File, dp.Title)
				}
				boards[b.File] = append(boards[b.File], pd)
			}
		}
	})

	t.Run("pictures", func(t *testing.T) {
		dir := os.Getenv("DECRYPTD_DASHBOARD_PICTURES")
		for _, b := range grafana.Boards() {
			note := fmt.Sprintf("Not Grafana: each panel's PromQL from deploy/grafana/%s, evaluated with Prometheus's engine over %d scrapes (every %s) of a live decryptd run (internal/deploytest TestLiveDaemon); $__rate_interval = %s.",
				b.File, len(run.scrapes), scrapeEvery, window)
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
