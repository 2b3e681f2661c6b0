// Package daemon owns decryptd's lifecycle: it builds every part from a
// validated configuration, from the leaves up (audit log, KMS provider,
// registry, key cache, decryptor, sinks, dead-letter sink, pipeline, the
// inputs that input.type names (intake.Input: the MQTT consumer, or the
// Kafka input, handed the decryptor so it can rebuild the replay window of
// each partition it is assigned), HTTP server), runs them, and takes them
// down again.
//
// Promises:
//
//   - Everything a part needs is passed in; nothing is global. The caller
//     supplies the logger and the Prometheus registry (New makes one if
//     none), so tests run several daemons in one process.
//
//   - HTTP, served from the start of New (before the parts are built) to
//     the end of shutdown: /metrics (this daemon's registry, with the Go
//     and process collectors, decryptd_build_info and
//     decryptd_degraded{cause}), /healthz (200 while the process serves,
//     whatever its dependencies do: liveness; its JSON body gives the
//     phase, starting, running or stopping, and the degraded state by
//     cause, kms, registry, sink and broker, with reason and since when;
//     no secret, URL or device id), /readyz (200 only when this replica
//     makes progress for someone: built, every input connected and
//     subscribed, at least one record sink up, not shutting down; 503
//     with the reason otherwise). A KMS or registry outage leaves a
//     replica ready: devices whose keys are cached keep flowing, and the
//     outage is every replica's. health.go holds the details;
//     docs/runbooks.md, "Health and readiness", the operator's view. Addr
//     reports the bound address, so a listen address with port 0 works.
//
//   - Start: a KMS (Key Protect, probed by reading the root key) or a
//     PostgreSQL registry unreachable at start is waited for with backoff
//     (retryStart; the cause degraded, /readyz 503 "starting: waiting for
//     kms"); what no retry fixes (a DSN that does not parse, credentials
//     or database refused, an unknown root key) ends New at once. A
//     context that ends during the wait ends New with ErrStartCanceled.
//
//   - Health sources: the key cache's registry reads and KMS unwraps go
//     through wrappers that report to the health tracker, the pipeline
//     reports sinks going down and up (pipeline.Options.SinkState), and
//     the inputs' Ready is probed for the broker cause; a degraded KMS or
//     registry is asked again every 15 s (recheck), so that it clears
//     without traffic.
//
//   - Shutdown, when Run's context ends or a part fails, follows one
//     deadline (shutdown_timeout): each input stops intake, lets in-flight
//     messages reach the sinks and acknowledges them (unsubscribing first
//     when configured) and disconnects; then the pipeline writes what its
//     batchers hold and flushes and closes every sink; then the key cache,
//     the registry, the KMS provider and the audit log close; the HTTP
//     server stops last. Errors of every step are joined; a step's error
//     names what was degraded meanwhile (whyUnfinished: "kms
//     unreachable", "sink records: down"), and rotation is named only when
//     it runs. The log line "shutting down" writes the deadline with its
//     unit ("30s"). An unclean stop
//     duplicates (records carry a stable id), never loses.
//
//   - Every KMS unwrap the key cache makes is written to the audit log
//     (never key material) and counted; Replay reports the count.
//
//   - Fleet key rotation (rotation.enabled; off by default, and then
//     nothing of it is built): the decryptor is wrapped so every record
//     that opened is observed by the rotation tracker (adoption, message
//     counts), and the rotation controller runs under its lease (a
//     PostgreSQL advisory lock for registry driver postgres, a lock file
//     registry.path+LeaseSuffix for driver file), publishing rekeys over a
//     connection of its own (the consumer's brokers and TLS, client id
//     <mqtt.client_id>-rotation) opened only once it has one to send. At
//     shutdown the controller stops leading at once; the tracker stops
//     after the consumer (it observes the last in-flight records and
//     flushes its counts); both before the registry closes.
//
// Replay runs the same parts without MQTT and HTTP, for `decryptd replay`.
package daemon
