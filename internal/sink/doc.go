// Package sink owns the destinations of decrypted records and of dead
// letters: the Sink contract, the file, stdout and http implementations
// (the mqtt one is package mqttsink, so that this package imports no MQTT
// client), the contract test suite every implementation passes
// (sinktest.Run), and what makes a sink type: its typed configuration
// (Config: YAML keys, Defaults, Validate naming fields, New) and a Type
// listed in package sinktypes, the one registration. FileConfig,
// StdoutConfig and HTTPConfig are this package's; a new type (Kafka,
// PostgreSQL) is a package of its own with the same shape.
//
// Delivery promise: a Sink's Write returns nil only when the sink holds the
// whole batch; the daemon acknowledges an MQTT message only after that, so a
// crash duplicates (records carry a stable id) and never loses. A Write
// error means nothing of the batch counts as held; the caller retries the
// whole batch, so every sink tolerates repeated records. Write, Flush and
// Close are never called concurrently on one sink; a sink holds no package
// state, no metrics and no logger (the pipeline times and counts writes).
//
// What "holds" means per sink:
//
//   - File (NewFile): JSON lines appended to a 0600 file in a 0700
//     directory. With FsyncBatch (the default) Write returns after fsync:
//     the batch survives a power loss. FsyncInterval and FsyncNever return
//     once the kernel has the data (it survives a crash of the daemon, not of
//     the machine) and fsync in the background every interval, or on Flush
//     and Close. It is a GroupWriter: WriteUnsynced and Sync let the
//     pipeline make several batches durable with one fsync, answering
//     their records only after it. Size-based rotation keeps Path.1 … Path.<Keep>; Path never
//     goes missing during a rotation.
//   - Stdout (NewStdout): JSON lines (or the Pretty demo format) handed to
//     an io.Writer in one call. No durability: for demos, debugging and
//     pipes.
//   - MQTT (package mqttsink): each record published at QoS 1; Write returns
//     after the broker's PUBACK for every record of the batch (the broker
//     then owns them, to the durability of its own persistence settings).
//   - HTTP (NewHTTP): the batch POSTed as NDJSON; Write returns after a 2xx
//     answer. Retries with back-off happen inside Write up to a bound; a
//     refusal that retrying cannot fix is ErrRejected. HTTPConfig's New
//     wraps it in ChunkedBytes, so one request is at most batch_max
//     records and batch_max_bytes of body (a larger record alone); a
//     response body is never read past 64 KiB.
//
// Records that no sink can frame (empty JSON, JSON spanning lines, a device
// id unusable in an MQTT topic) fail the whole batch with ErrBadRecord
// before anything is written. Errors never carry record contents, response
// bodies or secrets.
//
// Dead letters are records too: DeadLetter.Record gives the JSON line
// (payload as received, base64; the input and, for the Kafka input, the
// record's topic, partition and offset) with the payload's SHA-256 as id,
// so a dead-letter stream is a File or MQTT sink; ReadDeadLetters decodes
// such a stream for replay.
package sink
