// Package pgtest gives a test its own PostgreSQL database: New creates a
// fresh, uniquely named database on the server named by DECRYPTD_TEST_PG_DSN
// (default postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable) and
// drops it, with any sessions still connected, when the test ends.
//
// The registry's promises are about a real server (locks, LISTEN/NOTIFY,
// transactions), so there is no fallback: if PostgreSQL is unreachable the
// test fails with a message saying how to start it, never skips.
package pgtest
