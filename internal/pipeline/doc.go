// Package pipeline owns the stage between the inputs (intake) and the sinks: it
// decrypts each message (through an Opener, the decryption core), hands the
// record to every configured sink, or the message as received to the
// dead-letter sink, and says when the message may be acknowledged. It
// implements intake.Processor.
//
// Delivery promise:
//
//   - Process (and TryProcess) hand a message on and report it through a
//     done callback: nil only when every sink holds the record, or the
//     dead-letter sink holds the message, or the message is a duplicate of
//     one already delivered; an error only when the message's context
//     ended or the pipeline closed, and then the message must not be
//     acknowledged (the broker redelivers it). Nothing is dropped. The call
//     itself returns as soon as the message no longer needs the caller's
//     goroutine (its record queued for the sinks' next batch), so a caller
//     does not wait for a write and fsync; Handle waits for done.
//   - TryProcess never blocks: it declines (returns false, having done
//     nothing) a message whose key is not cached, a transient fault, or a
//     possible duplicate, for the caller to pass to Process on a goroutine
//     that may wait.
//   - Records reach each sink in the order the calls handed them over.
//   - Transient faults are retried, never dead-lettered: a key that cannot
//     be resolved for now (KMS down) is retried inside Process (or, with
//     Options.Spool, spooled: see below), and a sink
//     that fails a write is retried by its batcher, both with capped,
//     jittered exponential back-off, until they succeed or the message's
//     context ends. While a sink is down, done is not called, so the
//     consumer's bound on in-flight messages slows intake instead of
//     filling memory.
//   - A record a sink refuses for good (sink.ErrBadRecord) is dead-lettered
//     under the reason "sink_rejected"; the other sinks still get it.
//   - A record that is not delivered after all (its context ended while
//     its sink failed, or Close's deadline passed) is given to
//     Opener.Forget, so the broker's redelivery is decrypted again instead
//     of being taken for a duplicate or a replay.
//   - A duplicate (the decryptor's ErrDuplicate: an exact repeat of an
//     accepted message, envelope amendment 1) is acknowledged only once
//     every delivery that started before it has finished: if the first
//     copy failed and was forgotten, the duplicate is decrypted and
//     delivered instead (flight.go: every message pays one atomic
//     increment and one rarely contended shard lock for this; only a
//     duplicate looks at every shard). It is never dead-lettered nor delivered twice, and is
//     counted by cause (decryptd_duplicates_total{cause}): redelivery (the
//     broker's, DUP set) or repeat (the device sent it again, e.g. a QoS 1
//     resend after a lost PUBACK, which reaches us without DUP).
//
// The key-pending spool (Options.Spool, package spool; spool.go): a
// Process call whose key is not resolved within Options.KeyWait (default
// 1s; 10ms while keys were found unresolvable in the last 5s, so that a
// hanging KMS costs each device's first message a moment, not a second, of
// the consumer's workers and window) appends the message as received to the spool and reports done(nil)
// once the spool's group-commit fsync covers it, so the input acknowledges
// it and devices whose keys are cached are not held behind it. While a
// device has spooled messages, its later ones are spooled behind them and
// TryProcess declines them, so per-device order holds. The spool's replay
// loop hands the messages back when their key resolves; they then go the
// normal way (decrypt, replay window, sinks or dead letter) and leave the
// spool once their done is nil. A full spool falls back to holding the
// message in Process (backpressure). Handle never spools.
//
// Each sink gets its own encoded record: the record's standard JSON
// (decrypt.Record.AppendJSON), shared by every sink that takes it as is,
// or, for a sink implementing RecordEncoder (a per-sink field policy), what
// its AppendRecord makes of the record; the plaintext is wiped once every
// encoding is done.
//
// Batching (group commit): each sink has one writer goroutine that writes
// one batch at a time (a sink's Write is never called concurrently) and
// then answers every record of it. Calls append their records to the
// sink's pending list at any time, also while a batch is written; when the
// writer is done it takes everything gathered meanwhile (up to MaxBatch
// records and MaxBatchBytes of JSON, so one write never needs more memory
// than that) at once. With a positive Linger a record waits up to Linger for others to
// join its batch (a lone record of the only delivery under way is written
// at once). One fsync then covers a whole batch, and
// intake never stalls on it; appending wakes the writer only when it is
// idle. A batch whose write fails is retried in parts, halving down to one
// record and growing back after each success, in order: a sink that cannot
// take the whole batch (a nearly full disk) is never retried forever at a
// size that cannot fit.
//
// Several batches, one fsync: when the writer finds more than one batch
// pending (records came faster than one write and fsync took) and its sink
// is a sink.GroupWriter (the file sinks, the dead-letter file included), it
// writes every pending batch, each within MaxBatch and MaxBatchBytes, with
// WriteUnsynced, then makes them durable with one Sync, and answers their
// records only after it. An fsync of a few milliseconds thus holds all
// the records that came while the previous one ran, not at most MaxBatch:
// what one group holds is bounded by the inputs' in-flight bounds (records
// and bytes), not by the batch bounds. When anything of a group fails,
// none of it counts as held: its batches are written again one by one with
// Write (a failed fsync is not cured by a later one), in order. The write
// metrics count such a group as one write (its duration and records).
//
// Settling off the writer: answering a written record (the flight
// tracker, recycling its buffers, metrics, the input's done callback with
// the input's own locks) was most of the serial writer's CPU per record,
// which caps a replica's records per second whatever the cores. The writer
// hands a written batch's answers, in chunks of up to 128, to settler
// goroutines (GOMAXPROCS per pipeline) and goes on writing; batches under
// 32 records (low load: no hand-off latency) and a full settler queue are
// answered by the writer itself. Every answer still follows its record's
// write (and fsync); dones of one batch run in no set order (the inputs
// accept any order; per-device order is the order of the writes). Close
// returns only after the settlers answered everything. Writers and
// settlers carry pprof labels (goroutine=writer|settler), so a CPU profile
// tells the serial work apart: BenchmarkWriterFile.
//
// Nothing here logs or exports a payload, plaintext or key; metric labels
// come from fixed sets (reason, sink name, cause, outcome). Logs record
// state changes only: a sink going down and coming back, the KMS becoming
// unavailable and available again, a revoked key seen.
//
// A Pipeline is safe for concurrent use. Close stops it once intake has
// stopped: it writes what the batchers still hold, lets the settlers answer
// every written record, flushes and closes every sink.
package pipeline
