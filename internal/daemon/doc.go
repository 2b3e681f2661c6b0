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
//   - HTTP: /metrics (this daemon's registry, with the Go and process
//     collectors and decryptd_build_info), /healthz (200 while the process
//     serves), /readyz (200 only while MQTT is connected and subscribed and
//     the registry is loaded, 503 otherwise and from the start of
//     shutdown). Addr reports the bound address, so a listen address with
//     port 0 works.
//
//   - Shutdown, when Run's context ends or a part fails, follows one
//     deadline (shutdown_timeout): each input stops intake, lets in-flight
//     messages reach the sinks and acknowledges them (unsubscribing first
//     when configured) and disconnects; then the pipeline writes what its
//     batchers hold and flushes and closes every sink; then the key cache,
//     the registry, the KMS provider and the audit log close; the HTTP
//     server stops last. Errors of every step are joined. An unclean stop
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
