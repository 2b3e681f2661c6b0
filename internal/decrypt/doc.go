// Package decrypt is the envelope v1 decryption core (docs/envelope-v1.md):
// it turns one MQTT message (topic, payload, DUP flag) into either one
// decrypted Record or one named failure reason.
//
// It owns:
//   - parsing both shapes of the spec (A: whole payload in encrypted_data;
//     B: ENC:AES256: fields at any depth, bound to their RFC 6901 pointer)
//     with a strict RFC 8259 scanner over the raw bytes: UTF-8 checked,
//     member names repeated in any object refused, numbers never converted
//     (a record's numbers keep the text they were sent with);
//   - the checks of the spec, in the spec's order (malformed,
//     topic_mismatch, stale, unknown_key, key_revoked, auth_failed,
//     bad_plaintext, replay), as sentinel errors for errors.Is and Reason;
//     everything that needs no key is checked before the key is looked up;
//   - the replay window of accepted (key id, key version, nonce) triples,
//     each with a digest of its message (a 64-bit keyed hash of topic and
//     payload, amendment 1; replay.go says why not the spec's example,
//     SHA-256, and why 64 bits suffice), in memory, bounded by entries and
//     age, consulted only once the tag has verified so forgeries cannot
//     poison it;
//   - the record: its stable id and its JSON form (Record.AppendJSON).
//
// Keys come through KeyResolver (the key cache implements it). A resolver
// error that is neither unknown nor revoked is transient: Open returns
// ErrTransient and the caller retries; it is never a reason.
//
// Promises:
//   - Open is safe for concurrent use. Accepting a message and recording its
//     triples in the replay window is one atomic step, so of two concurrent
//     copies of a message exactly one is accepted.
//   - Open returns a record or an error, never both, and never part of a
//     plaintext: a message with one field that fails is refused whole.
//   - Error texts carry offsets, member pointers, device and key names, never
//     plaintext or key material. Scratch buffers that held plaintext are
//     wiped before they are reused.
//   - An exact repeat of a message already accepted (same key id, version
//     and nonce, same topic, same payload bytes: a broker redelivery with
//     the DUP flag, or a QoS 1 device resending what it got no PUBACK for,
//     which the broker forwards as a new message) is ErrDuplicate, not a
//     reason, whatever its DUP flag: the caller acknowledges it and counts
//     it (by the DUP flag: redelivery or repeat). A different message
//     reusing an accepted nonce (other bytes, or the same bytes on another
//     topic) is ErrReplay. A caller that could not deliver a record calls
//     Forget, so a repeat of its message is decrypted again. Until the first
//     delivery's outcome is known the caller must not acknowledge a
//     duplicate of it (the window already holds it).
//
// The replay window (replay.go) and its false positives: accepted entries
// (the 128-bit triple key, the 64-bit message digest, the acceptance time:
// 32 bytes) are appended to the newest of 17 generations; when it is full
// the oldest generation is dropped whole, so the window holds at least the
// last ReplayEntries accepted entries (at most 1/16 more) and none older
// than ReplayMaxAge counts. A table of 64-byte lines is the filter in front
// of them: 15 slots per line, each a fingerprint of a key (10 bits at the
// default million entries; fewer for larger windows) with its entry's
// generation and index. A lookup reads one line in the common case (a new
// nonce: its home line, into which it is then inserted), and reads an entry
// only on a fingerprint match. Open asks the processor to prefetch that
// line as soon as the triple is known, before the key lookup and the tag
// check, so at production size (a table of megabytes) its memory access
// overlaps that work instead of being waited for under the window's lock;
// the window is still only read and written once the tag has verified. A fingerprint match is only a hint: "seen"
// is answered solely by comparing the full 128-bit triple key (and then the
// message digest) of the entry it points at, so a fingerprint collision
// (about one lookup in a hundred at the default size) costs one more
// memory read and never turns a new message into a replay or a duplicate:
// no false "seen" from the filter ever drops a message. What remains is a
// collision of the 128-bit triple key (the first 16 bytes of SHA-256 of
// the triple, which the record id computes anyway): out of reach; and a
// collision of the 64-bit keyed message digest between a replay and the
// message it replays, which can only turn that replay (not delivered) into
// a duplicate (not delivered either). Memory: 32 bytes per entry (17/16 of
// ReplayEntries at most) plus the table's 7 to 15 bytes per entry, grown
// on demand: 42.4 MB at the default bound, at most about 49 bytes per
// configured entry for any bound.
//
// Choices where the spec is silent: nesting deeper than 1000 levels, lone
// UTF-16 surrogate escapes and timestamps beyond int64 are malformed; the
// top-level device_id, timestamp, key_version and key_id of shape B are
// envelope members, never sealed fields; two sealed values of one message
// with the same nonce are a replay; a shape A record always has metadata
// ({} when nothing but device_id and timestamp was there); a shape B record
// without sealed values names no key and is not replay-checked (it has no
// nonce); extra top-level members of a shape A message are ignored; the
// unused low bits of a base64 text's last character are ignored, as
// encoding/base64 does. Replay-window ages count from Message.ReceivedAt.
package decrypt
