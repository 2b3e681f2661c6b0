// Package alertrules reads a Prometheus rules file (the rule_files:
// format of deploy/kubernetes/alerts.yaml) in tests, written once for the
// packages that check their alerts watch the metrics they export: Exprs
// returns each alert's expression by alert name.
package alertrules
