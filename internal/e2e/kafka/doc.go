// Package kafka holds the end-to-end test of decryptd's Kafka input
// (input.type kafka, package kafkainput) under failure: an in-process Kafka
// (kfake) listening on 127.0.0.1 TCP ports, three decryptd processes (the
// cmd/decryptd binary, built once without the race detector, each run with
// a configuration file of its own as an operator would) in one consumer
// group, and the PostgreSQL sink.
//
// It owns no production code. Its test is the evidence of issue 15's
// "what must be shown":
//
//   - a topic of 12 partitions receives 100,000 messages keyed by device
//     id, each value an envelope v1 payload sealed by internal/fleet for a
//     provisioned device (about 300 bytes, shapes A and B), with the
//     device's MQTT topic in the mqtt_topic header, as a bridge writes
//     them;
//   - three replicas share the partitions; one is SIGKILLed mid-stream, the
//     group rebalances its partitions to the other two, and it is started
//     again (a second rebalance);
//   - nothing is lost: the PostgreSQL table holds exactly the 100,000
//     record ids the test computed from what it produced, rows = unique
//     ids, none made up;
//   - what the killed replica had delivered but not committed is delivered
//     again by the partition's next owner with the same record id: each
//     replica also writes a file sink (a ledger), so every delivery is on
//     disk by id; the ids delivered more than once are the duplicates, each
//     one of the produced ids and one row in the table (ON CONFLICT DO
//     NOTHING); there is at least one, decryptd's count of the records it
//     knew for redelivered (decryptd_kafka_records_redelivered_total: those
//     the victim had received by its last commit) is at most their number,
//     and every live replica's decryptd_records_delivered_total agrees
//     with its ledger;
//   - an independent client (kcat, librdkafka) reads the topic back (100,000
//     records, key = the device of the mqtt_topic header) and then joins
//     the group once the replicas stopped, finding nothing left to consume:
//     every partition's committed offset is at its end.
//
// The test needs PostgreSQL (DECRYPTD_TEST_PG_DSN, internal/testutil/pgtest)
// and kcat (scripts/test-deps.sh installs both) and fails, never skips,
// when one is missing.
package kafka
