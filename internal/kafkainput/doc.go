// Package kafkainput is decryptd's Kafka input (input.type kafka): a
// franz-go consumer group (cooperative-sticky balancer) over topics that a
// bridge fills with the devices' MQTT messages. It is an intake.Input and
// hands intake.Messages to an intake.Processor: Source "kafka", Payload the
// record value unchanged, Topic the MQTT topic (from a header, or a
// template filled with the record key; see mapping.go), DeviceID read
// from that topic with the topic pattern as the MQTT input does,
// ReceivedAt the time of the poll, Position the record's Kafka topic,
// partition and offset (sharing the record's topic string; dead letters
// name the record by it, also when no MQTT topic could be mapped).
// Decryption, sinks, dead letters and
// retries belong to the Processor.
//
// Files by job: input.go (New, Run, Ready, Shutdown, the poll loop, the
// in-flight bound, commits), group.go (the rebalance callbacks),
// tracker.go (the per-partition ordered-commit tracker), dispatch.go (per
// topic order, workers), rebuild.go (the replay window's rebuild),
// mapping.go (MQTT topic and commit metadata), metrics.go.
//
// # Delivery promise
//
// At least once, per device in order:
//
//   - Offsets are committed only by the input (auto-commit off), per
//     partition, for the prefix of handed-out records whose done came back
//     nil, in offset order: a record that finished early waits for every
//     earlier one of its partition (tracker). So a committed offset never
//     passes a record that every sink (or the dead-letter sink) does not
//     hold. Commits run every CommitInterval, on revocation and at
//     shutdown. A crash, a kill or a lost session redelivers what was not
//     committed (from the committed offset on), never loses.
//   - Revocation (cooperative: only the partitions that move): the
//     partition's in-flight messages finish (at most RevokeTimeout), its
//     done prefix is committed, then it is released; the next holder
//     starts exactly there. A lost partition (session expired, fenced) is
//     dropped at once without a commit: its queued messages are not
//     processed, and those being processed may reach the sinks twice.
//   - Records of one MQTT topic (one device) are handed to the Processor
//     one at a time in offset order; different topics run concurrently
//     on a fixed pool of Workers goroutines (a topic's records always go
//     to the worker its hash picks). The poll goroutine only tracks and
//     queues records, so it fetches the next ones while the workers
//     decrypt and the sinks write.
//   - At most MaxInFlight records (and MaxInFlightBytes of values, passed
//     by at most one poll) are between fetch and settling; polling waits
//     (PollRecords is asked for no more than the room left; once the
//     bound is reached, until a sixteenth of it, at most 256 records, is
//     free again), so a slow sink slows fetching instead of filling
//     memory. Values are copied out of the fetch responses as they are
//     polled, so a record in flight holds its own bytes, never its
//     batch. Beside them the client holds at most ConcurrentFetches
//     fetch responses, each at most FetchMaxBytes(MaxInFlightBytes) (an
//     eighth of the bound, at most 8 MiB).
//   - Redelivered is set on a record that the partition's previous holder
//     had already received, per its last commit's metadata
//     ("decryptd/1 received=<offset>"): processed again, its record
//     repeats an earlier record id (sinks drop it by id). Records that
//     holder received after its last commit come back unmarked.
//   - Shutdown stops fetching (what was polled but not handed out is not
//     committed), lets in-flight messages finish, commits, and leaves the
//     group, within one deadline; what is unfinished then is redelivered.
//
// # Replay window per partition
//
// The decryptor's replay window is per process; a partition moves between
// replicas. So when a partition is assigned, before any of its records is
// fetched (kgo.AdjustFetchOffsetsFn), its log is read back from
// max(committed - ReplayLookback, first offset not older than
// ReplayMaxAge) up to the committed offset by a separate reader, and
// every record is authenticated and remembered (Window.Remember, never
// delivered). Records are remembered by ReplayRebuildWorkers goroutines
// (default 64), each record going to the worker its device's hash picks:
// a device's records are remembered one at a time in offset order and its
// key is loaded once, while up to ReplayRebuildWorkers devices wait for
// cold keys (a KMS round trip each) at once; the rebuild ends when every
// read-back record is remembered. The key cache's MaxConcurrentUnwraps
// (16 by default) then bounds the KMS calls in flight, so the gain over
// one record at a time is at most about that. Measured
// (BenchmarkRebuildColdKeys, 200 devices whose keys take 5 ms each): 1.06
// s one record at a time, 41-48 ms with 64 workers, 75-81 ms with 64
// workers and at most 16 loads at once; the default lookback, 100,000
// records of 5,000 devices whose keys take 25 ms each, 16 loads at once
// (BenchmarkRebuildColdKeysLookback): 8.3 s, where one record at a time
// needs 125 s and is cut at the 30 s timeout. The time is about cold
// devices / MaxConcurrentUnwraps x the KMS round trip (5,000 devices at
// 100 ms: 31 s, cut again), so a larger fleet or slower KMS needs a
// larger replay_rebuild_timeout or more unwraps at once. While it runs, a
// rebuild holds at most 64 read-back values per worker and at most
// FetchMaxBytes(MaxInFlightBytes) of them in all (copied out of the
// responses, 256 bytes counted for each beside its value), and its reader
// at most ConcurrentFetches fetch responses of FetchMaxBytes
// (MaxInFlightBytes), beside the group client's; membudget counts both.
//
// Guarantee: an exact repeat (or a nonce reuse) of a message is caught,
// whichever replica accepted the original, when the original lies in the
// same partition (the bridge keys by device) and is either among the last
// ReplayLookback records before the committed offset of the assignment, or
// was processed by the current holder since; and in both cases is younger
// than ReplayMaxAge (by record timestamp for read back records) and still
// within the window's entry bound. The rebuild is bounded by
// ReplayRebuildTimeout (and ends when the group revokes again); a rebuild
// that stops early (a partition not read to its committed offset, or a
// record of it read but not remembered: a key fault retried until then) is
// logged and counted per partition
// (decryptd_kafka_replay_rebuild_truncated_total), and repeats of what it
// did not remember are then delivered again (same record id). Records past
// the committed offset are never remembered (they are not known to be
// delivered; remembering one would make its own delivery a duplicate): a
// redelivery after a crash is processed again and repeats its record id.
//
// Metrics: decryptd_kafka_* (records received, redelivered, without a
// topic; fetch errors; rebalances by event; commits by result; the
// rebuild), decryptd_kafka_partition_lag and
// decryptd_kafka_committed_offset by topic and partition number, and
// decryptd_inflight_messages as the MQTT input has it. Nothing logs or
// exports payloads; logs carry partition numbers, never device ids.
//
// The lag is the partition's high watermark less the first offset still
// to read: the committed offset, or the log start offset when the
// partition has no commit or that is higher (records expired). The high
// watermark comes from each fetch and, every 10 s, from a ListOffsets
// (latest and earliest) on the group client for every held partition, so
// a holder that fetches nothing (its in-flight bound full) still shows
// its lag rising while records are produced.
//
// Ready is true once the group is joined (a replica holding no partition
// is ready too; one rebuilding a partition's window is, as it consumes
// the others meanwhile) and while fetches do not fail and a broker answers
// a ping (every 5 s).
//
// An Input is safe for concurrent use: Run once, Ready and Shutdown from
// any goroutine.
package kafkainput
