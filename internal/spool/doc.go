// Package spool owns decryptd's key-pending spool: a durable local queue,
// per device, of messages whose key cannot be resolved for now (the KMS or
// the registry unreachable, hanging or failing). The pipeline writes such a
// message here and only then lets the input acknowledge it, so one device's
// missing key never holds an in-flight slot (nor, with MQTT's in-order
// acknowledgements, the messages of the devices behind it); the replay loop
// (Run) hands the messages back once their key resolves.
//
// What is kept. The message as received: source, topic, device id, payload
// (ciphertext, never plaintext), the redelivered flag, the receive time.
// The in-memory index holds, per device, only where its messages are
// (segment, offset, length: 16 bytes a message) and its head's receive
// time, never payloads: they are read back from disk at replay.
//
// Memory: the index (16 bytes per spooled message, plus a map entry per
// device: a 1 GiB spool of 1 KiB messages indexes in about 16 MiB), and
// the replayed records handed over and not yet done (MaxInFlightBytes, 1
// MiB by default, plus one record), which the base slack of the memory
// budget in deploy/README.md covers.
//
// On disk. Dir (0700, refused when group or others can reach it; files
// 0600, an existing one readable by group or others refused, see
// fileperm) holds numbered segment files (<seq>.seg, a header then records
// of u32 length | u32 CRC-32C | body; record.go), each with an
// acknowledgement log (<seq>.ack) of the records already delivered, and a
// LOCK file (flock: one process per directory). A new segment is started
// past Options.SegmentBytes; a segment is deleted, with its
// acknowledgement log, once every record in it is acknowledged
// (compaction by segment); an empty spool has no segment file.
//
// Promises.
//
//   - Durability. Append writes the record and returns; its durable
//     callback runs once an fsync covers it (group commit: one fsync covers
//     every append made while the previous one ran). The pipeline
//     acknowledges the message to its source only then, so a message
//     acknowledged is on disk (a new segment's directory entry is fsynced
//     before anything in it is appended). A failed write or fsync disables
//     the spool until restart (appends return the error; the pipeline then
//     holds messages as without a spool).
//   - Crash safety. Everything survives SIGKILL. Open reads every segment
//     back; a torn or corrupt record (a crash during its write: it was
//     never acknowledged) ends its segment, which is truncated there,
//     logged and counted (decryptd_spool_torn_records_total); Open never
//     fails on one. Acknowledgement logs are written without fsync: they
//     survive a process crash (the page cache keeps them); a machine crash
//     may lose their tail, and those messages are replayed again.
//   - Delivery: at least once. A message is removed (acknowledged) only
//     once the pipeline's done for it is nil (every sink holds its record,
//     or the dead-letter sink holds it, or it is a known duplicate). A
//     message handed over but not done (shutdown) stays for the next
//     start. Replayed twice (an acknowledgement lost in a machine crash, or
//     the broker redelivering a message whose acknowledgement the crash
//     cut off), it is caught by the replay window (decrypt.ErrDuplicate:
//     acknowledged, never dead-lettered) when both copies reach one
//     process; across a restart the window is empty and the sinks get the
//     record twice, with the same record id (sinks keyed by id, such as
//     PostgreSQL's, keep one).
//   - Order. Per device (Key: the device id, or the topic when the input
//     could not tell), messages are replayed in the order they were
//     appended, one device's messages by one worker, each handed over only
//     after the previous one was. A device stays Pending until its last
//     message is handed over, so its later messages are appended behind
//     (the pipeline's rule) and none overtakes.
//   - Bound. The segment files' total size never exceeds MaxBytes: an
//     append that would is refused with ErrFull (counted in
//     decryptd_spool_full_total); the pipeline then holds the message
//     (backpressure). Nothing is dropped.
//   - Key fetches. The replay loop tries one message per device at a time
//     (one key fetch per device, not per message), backing off per device
//     from MinBackoff to MaxBackoff (default 1s) with jitter; while every
//     recent try failed (an outage), only two devices probe at a time, and
//     the first success retries every waiting device at once. So a key
//     that resolves again is found within about MaxBackoff.
//   - False positives: none. Pending answers from the exact device key
//     (a map), never a hash or filter: a device with nothing spooled is
//     never routed to the spool.
//
// Metrics: decryptd_spool_messages, decryptd_spool_bytes,
// decryptd_spool_max_bytes, decryptd_spool_oldest_age_seconds (gauges),
// decryptd_spool_appends_total, decryptd_spool_full_total,
// decryptd_spool_torn_records_total and decryptd_spool_replayed_total{outcome}
// (counters). No device id, key id or payload in any label or log line.
//
// A Spool is safe for concurrent use. Close (after Run has returned) waits
// for pending fsyncs and closes the files.
package spool
