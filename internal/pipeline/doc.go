// Package pipeline owns the stage between MQTT intake and the sinks: it
// decrypts each message (through an Opener, the decryption core), hands the
// record to every configured sink, or the message as received to the
// dead-letter sink, and says when the message may be acknowledged. It
// implements consumer.Processor.
//
// Delivery promise:
//
//   - Process returns nil only when every sink holds the record, or the
//     dead-letter sink holds the message, or the message is a duplicate of
//     one already delivered. Otherwise it blocks; it returns an error only
//     when its context ends, and then the message must not be acknowledged
//     (the broker redelivers it). Nothing is dropped.
//   - Transient faults are retried, never dead-lettered: a key that cannot
//     be resolved for now (KMS down) and a sink that fails a write are both
//     retried with capped, jittered exponential back-off until they succeed
//     or the context ends. While a sink is down, Process blocks, so the
//     consumer's bound on in-flight messages slows intake instead of
//     filling memory.
//   - A record a sink refuses for good (sink.ErrBadRecord) is dead-lettered
//     under the reason "sink_rejected"; the other sinks still get it.
//   - When Process gives up because its context ended after the record was
//     accepted, it calls Opener.Forget, so the broker's redelivery is
//     decrypted again instead of being taken for a duplicate or a replay.
//   - A duplicate (the decryptor's ErrDuplicate) is acknowledged only once
//     every delivery that started before it has finished: if the first copy
//     failed and was forgotten, the duplicate is decrypted and delivered
//     instead.
//
// Batching (group commit): each sink has a collector goroutine that takes
// the records of concurrent Process calls at any time, and one writer
// goroutine that writes one batch at a time (a sink's Write is never called
// concurrently) and then releases every waiter of that batch. While the
// writer writes and fsyncs a batch, the collector gathers the next one;
// when the writer is done it takes everything gathered meanwhile (up to
// MaxBatch) at once. When the writer is idle, a record is written at once
// (or, with a positive Linger, after at most Linger, or as soon as every
// call in progress has handed its record over). One fsync then covers a
// whole batch, and intake never stalls on it.
//
// Nothing here logs or exports a payload, plaintext or key; metric labels
// come from fixed sets (reason, sink name, cause, outcome). Logs record
// state changes only: a sink going down and coming back, the KMS becoming
// unavailable and available again, a revoked key seen.
//
// A Pipeline is safe for concurrent use. Close stops it once intake has
// stopped: it writes what the batchers still hold, flushes and closes every
// sink.
package pipeline
