// Package deploytest tests what decryptd ships for running it: the
// Kubernetes manifests (deploy/kubernetes, a kustomize base and its
// overlays), the alert rules (deploy/kubernetes/alerts.yaml and the same
// rules as a PrometheusRule), the Grafana dashboards (deploy/grafana) and
// the runbooks (docs/runbooks.md).
//
// It promises, in its tests, that:
//   - every object of the base and of each overlay, built through
//     kustomize's Go API, decodes strictly (no unknown or duplicate field)
//     into its Kubernetes or prometheus-operator Go type, and that the pod
//     runs as 65532 with fsGroupChangePolicy OnRootMismatch, without a
//     service-account token, with a startupProbe, spread over nodes, with
//     pinned images, a hashed ConfigMap, and GOMEMLIMIT and a memory limit
//     derived from its configuration's memory budget (MemoryBudget); the
//     objects select and reach each other (TestWiring); the Dockerfile
//     pins its bases and runs as 65532; the data volume keeps an audit log
//     the writer accepts across restarts under the kubelet's fsGroup
//     handling (TestDataVolumeAcrossRestarts);
//   - every PromQL expression of the rules and of every dashboard panel
//     parses, and every metric they name is in the /metrics of a live
//     daemon after a run that rotates a key and dead-letters messages, or
//     of a live two-replica deployment with input.type kafka (kfake);
//     promlint finds nothing in either scrape; every panel has data over
//     its input's run, the overview's over both;
//   - every alert links an existing section of docs/runbooks.md, and the
//     alerts fire (or stay silent) as intended on series evaluated by
//     Prometheus's own rule code in process: no targets at all, revoked-only
//     KMS results, a replica restart, a healthy MQTT and a healthy Kafka
//     fleet, a Kafka partition stuck or moving, a lag growing or draining.
//
// The Prometheus server module is used by tests only, so the daemon's
// binary does not carry it.
package deploytest
