// Package health keeps decryptd's degraded state by cause (kms, registry,
// sink, broker), which the daemon exports as the gauge
// decryptd_degraded{cause} and as the JSON detail of /healthz.
//
// Promises:
//
//   - Every cause of Causes is always present, in the metric (0 or 1) and
//     in the report, from the moment New returns.
//   - A cause is degraded while any of its parts is (a sink cause has one
//     part per sink; kms and registry have one or two). Since is when the
//     cause went from healthy to degraded, kept while parts change.
//   - Reasons are short fixed phrases chosen by the caller ("unreachable",
//     "down", "not connected"), never error text: the report and the
//     metric carry no secret, URL or identifier of a device or key. Sink
//     and input names (from the configuration) may appear.
//   - Probes (Probe) are evaluated on every Report and every scrape, so a
//     state that is polled (an input's readiness) is as fresh as the
//     question.
//   - Each change of a cause is logged once (component "health").
//
// A Tracker is safe for concurrent use; Set never blocks on I/O.
package health
