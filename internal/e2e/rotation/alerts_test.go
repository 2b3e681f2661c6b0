package rotation_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/decryptd/decryptd/internal/rotation"
	"github.com/decryptd/decryptd/internal/testutil/alertrules"
)

// TestAlertRules: the Kubernetes alert rules cover rewrap failures, a
// paused rollout and stragglers, and every rotation metric they name is
// one the rotation package exports.
func TestAlertRules(t *testing.T) {
	// The plain rules file (the PrometheusRule in deploy/kubernetes/base
	// holds the same groups; internal/deploytest checks that).
	exprs := alertrules.Exprs(t, "../../../deploy/kubernetes/alerts.yaml")
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
	for alert, expr := range exprs {
		for _, n := range name.FindAllString(expr, -1) {
			if !known[n] {
				t.Errorf("alert %s names %s, which package rotation does not export", alert, n)
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
