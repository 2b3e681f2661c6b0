// Package intake is the contract between decryptd's inputs (MQTT, package
// consumer; Kafka, package kafkainput) and what processes their messages
// (package pipeline). It is a leaf: it imports nothing of decryptd and no
// transport, so the pipeline, the decryption core and the sinks depend on
// it and never on an input's client library.
//
// What it owns:
//
//   - Message: one received message, source-neutral (Source, Topic,
//     DeviceID, Payload, Redelivered, ReceivedAt, and Position: a
//     LogPosition, where a log input's record sits (Kafka topic, partition,
//     offset), zero for MQTT).
//   - Processor: takes a message to its destinations and reports, through
//     the done callback handed with it (the acknowledgement hook), when the
//     input may acknowledge it.
//   - Input: what the daemon runs for each configured input (Run, Ready,
//     Shutdown).
//   - TopicPattern: where a topic carries the device id, for inputs whose
//     messages name their device in the topic (MQTT; a Kafka input carrying
//     MQTT topics).
//
// Delivery promise every Input keeps: at least once. A message is
// acknowledged to its source only after the Processor called its done
// with nil; a message whose done got an error, or never came before the
// input stopped, is not acknowledged and comes back (redelivered). Calls
// for messages of one device stream (an MQTT topic, a Kafka partition)
// come in receive order and never overlap.
package intake
