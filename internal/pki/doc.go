// Package pki makes throwaway X.509 material for tests and the one-command
// demo: a certificate authority, server certificates for 127.0.0.1, ::1 and
// localhost (plus any names given), and client certificates whose common
// name is the MQTT identity (Mosquitto's use_identity_as_username). Keys are
// ECDSA P-256, written as PEM with mode 0600; certificates are 0644.
//
// It is not a production CA: there is no revocation, no key protection
// beyond file modes, and serial numbers are random. What it promises is that
// the files it writes load with crypto/tls and with Mosquitto (OpenSSL), and
// that the tls.Config helpers require TLS 1.2 or newer and, on the server
// side, a client certificate signed by the CA.
//
// A CA is safe for concurrent use; issuing is serialised by a mutex so two
// callers never write the same file at once.
package pki
