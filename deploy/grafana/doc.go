// Package grafana defines decryptd's Grafana dashboards (overview, keys,
// rotation, kafka input) in Go, once, and builds them with the Grafana Foundation SDK
// (github.com/grafana/grafana-foundation-sdk/go) into the JSON files beside
// this one, which are what ships (import them in Grafana, or provision
// them from a ConfigMap).
//
// It promises that the committed JSON files are exactly what Boards
// builds (TestGenerated; regenerate with
// `go test ./deploy/grafana -run TestGenerated -update`), and that every
// panel queries Prometheus through the dashboard's datasource variable.
// internal/deploytest checks the files' PromQL against a live daemon.
package grafana
