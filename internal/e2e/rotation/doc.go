// Package rotation holds the cross-package tests of fleet key rotation's
// edges, over the real PostgreSQL registry (pgstore) and the local root
// key: a crypto-shred made by the operator (dekctl shred, keyops.Shred)
// during a rotation is refused by every replica's cache within 2 s,
// measured, with the audit chain intact; and a root key rotation with its
// rewrap, run by the rotation controller on its schedule, keeps the whole
// fleet decrypting, while rewrap failures (forced through a KMS wrapper)
// are counted (decryptd_rotation_rewrap_failures_total), flagged
// (decryptd_rotation_rewrap_incomplete) and retried until done.
//
// It owns no production code. The lease handover of two replicas, and the
// 1,000-device rollout over Mosquitto, are tested in package rotation
// itself; a rotation through a running daemon in package daemon.
//
// The tests need the PostgreSQL named by DECRYPTD_TEST_PG_DSN (a fresh
// database per test) and fail, never skip, when it is missing.
package rotation
