// Package keys holds the cross-package tests of decryptd's key path: the DEK
// cache (keycache) over the real registry backends (PostgreSQL through
// pgstore, the file store) and the real KMS providers (Key Protect through
// keyprotect-go-client against the kpemu emulator, and the local root key),
// the decryption core on top, the key lifecycle operations (import, rewrap,
// shred) and the audit trail they write.
//
// It owns no production code. Its tests are the end-to-end evidence that the
// key path keeps its promises together: one KMS unwrap for a thousand
// concurrent lookups of a cold key, cached keys served through a KMS outage
// while an uncached one fails transiently, a revocation made by another
// registry handle seen within 2 s, messages still opening after a root
// rotation and rewrap, key_revoked after a shred, a tamper-evident audit
// log, and the spec's vectors decrypting after an import.
//
// The tests need the PostgreSQL named by DECRYPTD_TEST_PG_DSN (default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable; a fresh
// database per test) and fail, never skip, when it is missing. Those that
// drive dekctl build cmd/dekctl with the go command running the tests and
// run the binary with a configuration file of its own, as an operator does.
package keys
