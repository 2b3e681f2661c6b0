// Package demo owns `decryptd demo`: the whole system in one process with
// nothing installed beyond Go. It starts an embedded MQTT broker
// (mochi-mqtt) on 127.0.0.1 with TLS that requires client certificates made
// at start (internal/pki), a local root key and file registry in a working
// folder, provisioned through internal/keyops as dekctl would (a few
// devices with keys of their own, a group key, a revoked device key), the
// daemon itself (internal/daemon, configured in code: a readable stdout
// sink, a file sink and a dead-letter file), and a simulated fleet that
// seals readings in both shapes with the device-side code (internal/seal)
// and, now and then, sends a bad message of each kind (tampered, unknown
// key version, revoked key, topic mismatch, malformed, replayed).
//
// It prints decrypted records as they arrive and the metrics URL, and on
// stop (context end) drains what is in flight, shuts the daemon down and
// prints a summary read from the daemon's metrics.
//
// The demo's keys exist only in its working folder (a temporary one,
// removed at the end, unless Options.Dir names one): nothing here is fit
// for real data.
package demo
