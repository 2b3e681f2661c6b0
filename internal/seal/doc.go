// Package seal produces envelope v1 messages (docs/envelope-v1.md): the
// device side of the format, for the fleet simulator (telemsim) and for
// tests, including tests that need tampered variants.
//
// It owns sealing only: AES-256-GCM under a caller-built cipher.AEAD (see
// NewAEAD), a random 96-bit nonce per sealed value drawn from an injected
// io.Reader, the spec's associated data, and the JSON text of shape A
// (whole payload) and shape B (selected fields) messages, with SEALED
// written in standard padded base64 as the spec asks of writers.
//
// The Append* methods append to a caller's buffer so a simulator can reuse
// one buffer per message. A Sealer is safe for concurrent use if its reader
// is (crypto/rand.Reader is). Nothing here logs or keeps plaintext or keys.
package seal
