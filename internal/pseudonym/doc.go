// Package pseudonym owns pseudonymization keys: the HMAC-SHA-256 keys that
// field policies (package fieldpolicy) use to replace a value by a token
// that is the same on every replica, so analytics can still join on it.
//
// A pseudonymization key is held exactly like a DEK: a registry entry under
// the reserved key id pseudonym/<name> (KeyID), its 32 random bytes wrapped
// by the KMS root key (bound to its name by kms.DEKAAD), versioned v1, v2,
// … and rotated by keyops.RotatePseudonymKey (dekctl pseudonym rotate), which
// makes the next version active and the others decrypt_only. No device may
// use it: it is never in the decryptor's key cache.
//
// Promises:
//
//   - Open loads the newest active version; every KMS unwrap, whatever its
//     result, is reported to the audit recorder (the daemon's audit log),
//     as the key cache does for DEKs.
//   - Run follows the registry's change feed: a new version, a revocation
//     or a shred of this key reloads it, so every replica moves to a
//     rotated key within the feed's delay (2 s); a replica started later
//     loads the same newest active version. Tokens name their version
//     ("pn:<version>:<token>"), so tokens of two versions are never taken
//     for one another.
//   - While no usable version is loaded (none active, KMS unreachable at a
//     reload after a revocation), Pseudonymize fails with ErrUnavailable:
//     the sink's Write fails and is retried, nothing unpseudonymized is
//     written.
//   - The key bytes never leave the package and are wiped when replaced
//     and on Close; errors name keys and versions, never values.
package pseudonym
