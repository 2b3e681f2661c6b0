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
//     in memory, bounded by entries and age, consulted only once the tag
//     has verified so forgeries cannot poison it;
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
//   - A redelivery (DUP flag) of a message already accepted is ErrDuplicate,
//     not a reason: the caller acknowledges and counts it. A caller that
//     could not deliver a record calls Forget, so the broker's redelivery is
//     decrypted again. Until the first delivery's outcome is known the caller
//     must not acknowledge a duplicate of it (the window already holds it).
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
