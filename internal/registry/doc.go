// Package registry owns the DEK registry's contract: Entry (one DEK version,
// only ever held wrapped), the Store interface its backends implement, the
// change feed (Change) that lets key caches drop what was revoked, and the
// invariants every stored entry holds (Entry.Validate).
//
// The invariants are checked by the backends on every write, through
// PrepareCreate and ApplyUpdate, so the file store and the PostgreSQL store
// agree on them exactly: key id and version in the spec's alphabets, a known
// state, a wrapped DEK present unless shredded and absent once shredded, and
// a shredded entry never changing again (ErrShredded). Timestamps are kept
// in UTC at microsecond precision.
//
// A backend whose storage keeps old row versions (PostgreSQL) is also a
// Purger, which rewrites them away after a shred (dekctl shred --complete).
//
// The backends live in subpackages (filestore, pgstore); registrytest holds
// the contract suite both run.
package registry
