// Package kafka is the Kafka sink (IBM Event Streams included): each record
// is produced to one topic by an idempotent franz-go producer with acks=all,
// keyed by its device id (so one device's records land on one partition, in
// order), with the headers record_id, key_id and key_version (the last two
// absent when no key opened the record).
//
// Delivery promise (package sink's): Write returns nil only once every
// record of the batch is acknowledged by all in-sync replicas; a failure or
// an ended context fails the whole Write, and the pipeline retries the
// batch (a retried record may then appear twice on the topic, with the same
// record_id header: consumers deduplicate by it). The producer is
// idempotent, so the client's own retries never duplicate nor reorder.
// Write copies the records before producing them, so returning on an ended
// context while a produce is still in flight never lets the caller's
// recycled buffers reach the broker.
//
// Security: TLS unless allow_plaintext (records hold PHI), and SASL PLAIN,
// SCRAM-SHA-512 or OAUTHBEARER. Secrets (password, token) come from a file
// (re-read at every authentication, so a rotated API key needs no restart)
// or an environment variable, never from the configuration itself; they
// never appear in errors. IBM Event Streams: mechanism plain, username
// "token", the API key as password (see config.example.yaml).
//
// Like every sink it holds no metrics and no logger: the pipeline times and
// counts its writes under the sink's name. Config, Validate, New and the
// one registration line are the shape of every sink type.
package kafka
