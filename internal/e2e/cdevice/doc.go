// Package cdevice builds the C reference device (device/c: C99, OpenSSL's
// libcrypto, libmosquitto) with gcc and make into the test's temporary
// folder and tests it: every envelope vector (testdata/envelope-v1.json;
// ok cases sealed again with the vectors' nonces give the same bytes),
// every rekey vector (docs/vectors/rekey-v1.json), its key state saved and
// a restore from backup detected; and an interop run where the C device
// publishes through a real Mosquitto (mutual TLS) to a running decryptd
// with rotation on, takes the rotation's rekey (anti-rollback generation
// checked), and decryptd delivers its v1 and v2 records, a message
// buffered under v1 included. A differential test feeds the published
// rekey vectors and thousands of mutations of them to the C device, built
// with AddressSanitizer and UndefinedBehaviorSanitizer, and to the Go
// implementation (rekey.Take): both decide the same, and the C parser
// trips no sanitizer.
//
// It owns no production code. The tests fail, never skip, when gcc, make,
// pkg-config or a library is missing (scripts/test-deps.sh installs them).
package cdevice
