package rotation_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/decryptd/decryptd/internal/rotation"
)

// TestAlertRules: the Kubernetes alert rules cover rewrap failures, a
// paused rollout and stragglers, and every rotation metric they name is
// one the rotation package exports.
func TestAlertRules(t *testing.T) {
	data, err := os.ReadFile("../../../deploy/kubernetes/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// The plain rules file (the PrometheusRule in deploy/kubernetes/base
	// holds the same groups; internal/deploytest checks that).
	var doc struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if _, err := rotation.NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, mf := range mfs {
		known[mf.GetName()] = true
	}
	name := regexp.MustCompile(`decryptd_rotation_[a-z_]+`)
	exprs := map[string]string{}
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			exprs[r.Alert] = r.Expr
			for _, n := range name.FindAllString(r.Expr, -1) {
				if !known[n] {
					t.Errorf("alert %s names %s, which package rotation does not export", r.Alert, n)
				}
			}
		}
	}
	for alert, metric := range map[string]string{
		"DecryptdRewrapFailures":     "decryptd_rotation_rewrap_failures_total",
		"DecryptdRotationPaused":     "decryptd_rotation_paused",
		"DecryptdRotationStragglers": "decryptd_rotation_stragglers",
	} {
		if !strings.Contains(exprs[alert], metric) {
			t.Errorf("alert %s: want a rule on %s, got %q", alert, metric, exprs[alert])
		}
	}
}
