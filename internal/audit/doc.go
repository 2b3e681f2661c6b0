// Package audit owns the audit trail of key access: an append-only JSONL file
// in which every line is chained to the one before by SHA-256, so an edit,
// insertion, deletion or reordering of lines is detected by Verify.
//
// Line format. Each line is one JSON object, written by this package as
//
//	{"seq":1,"time":"2025-01-02T03:04:05.123456789Z","actor":"decryptd","action":"unwrap",
//	 "key_id":"device/s1","key_version":"v2","root_key_id":"...","root_key_version":"...",
//	 "result":"ok","duration_ms":1.25,"detail":"...","prev":"<64 hex>","hash":"<64 hex>"}
//
// (on one line; empty optional fields omitted). "hash" is always the last
// member: it is the lowercase hex SHA-256 of the line's bytes up to, not
// including, the `,"hash":` that introduces it. "prev" is the previous line's
// hash; the first line's prev is 64 zeros. "seq" counts lines from 1. So each
// line carries the hash of the previous line's content, and its own: an edited
// line fails at that line (its hash no longer matches), an edited line whose
// hash was recomputed fails at the next line (prev no longer matches), a
// deleted or reordered line fails where seq or prev stop matching. Times are
// RFC 3339 with nanoseconds, UTC. Key material never appears in an event:
// there is no field for it, and detail is for short operator text.
//
// What a chain cannot show: lines removed from the end. The shortened log is
// still a valid chain. To detect that, keep an anchor outside the file
// (Writer.Head after a batch of work, e.g. in the daemon's log or a metric)
// and check the log with VerifyAnchor, which fails with ErrTruncated if the
// anchored line is missing or differs. Likewise the chain is not a
// signature: whoever can rewrite the whole file can rewrite a whole valid
// chain; ship the file (or anchors) off the host for that.
//
// Writing. A Writer is safe for concurrent use, and several Writers (the
// daemon and dekctl, in separate processes) may append to one file: each
// Append takes an exclusive flock on the file, checks by its size that no one
// else appended since its last write (else re-reads the last line for seq and
// hash), writes the line with one write(2) and fsyncs before returning. An
// event is in the log once Append returned nil. Concurrent appends of one
// Writer are committed in groups: those that arrive while a group is being
// written and fsynced are written together next, under one lock, with one
// write(2) and one fsync, each caller still returning only once its own
// lines are durable. AppendMany does the same
// for a batch (a fleet's provisioning): one lock, one write, one fsync, the
// lines chained in order; a crash mid-write leaves a prefix of the batch. A line torn by a crash (no
// final newline) was never acknowledged; the next writer truncates it away
// before appending, so the chain continues from the last whole line.
// The file is created 0600; a file that group or others may write is refused.
package audit
