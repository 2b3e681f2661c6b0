// Package bench is decryptd's benchmark harness behind cmd/decryptd-bench
// and scripts/bench.sh (make bench). It owns the measurements that need
// real parts, which go test -bench cannot set up fairly:
//
//   - Drain: a backlog (200,000 messages of about 300 bytes from 5,000
//     devices by default) queued at QoS 1 in a persistent session on a
//     local Mosquitto started by the harness (mutual TLS, one config for
//     both sides), then drained by a bare paho subscriber that only counts
//     and acknowledges (the transport's limit) and by decryptd, in process,
//     into an fsynced file sink. Both sides alternate (bare, decryptd, bare,
//     decryptd, ...), each on a fresh backlog in its own session, and the
//     ratio is taken from medians of the same run. It reports messages per
//     second, latency from the device timestamp (milliseconds) to receipt
//     and to the sink, CPU time per message (getrusage of this process, the
//     broker apart), peak RSS and the KMS unwraps decryptd made.
//   - Kafka drain (decryptd-bench -input kafka or both): a backlog of the
//     same messages produced once into an in-process Kafka (kfake, one
//     broker on a 127.0.0.1 port, 12 partitions, keyed by device, the
//     MQTT topic in the mqtt_topic header, as a bridge writes them), then
//     drained from the start of the topic, each time in a consumer group
//     of its own, by a bare franz-go group consumer that only counts the
//     records and commits (the transport's limit) and by decryptd
//     (input.type kafka), in process, into the same fsynced file sink as
//     above, alternately; the ratio is taken from medians of the same run.
//     Rates are taken from the first record on (the group join, the same
//     for both, is reported apart); CPU per message includes the broker,
//     which runs in this process. With -kafka-brokers the backlog is in a
//     Kafka the bench does not start instead, in a topic it creates and
//     deletes: kfake in a process of its own (-serve-kfake, pinned with
//     taskset; its CPU per record reported apart with -kafka-broker-pid)
//     or a cluster.
//   - Cold start: one first message from each of N devices, decryptd
//     unwrapping through the real Key Protect provider against the
//     emulator (internal/kpemu) answering after a set latency. It reports
//     the unwraps, the most unwrap requests the emulator held at once, the
//     time until every key is cached, and the memory the cached keys take
//     above the idle daemon.
//
// Set-up shortcuts, none of them in the measured part: the fleet's keys are
// provisioned with fleet.Bulk (dekctl provision's semantics) into a file
// registry written in one go, and the provisioning audit events are
// counted instead of written (the daemon under test writes its own audit
// log, fsyncs included).
//
// The harness is a tool, not a test: it needs /usr/sbin/mosquitto (the
// Kafka drain does not), writes
// only under its working directory, listens only on 127.0.0.1 and stops
// the processes it started.
package bench
