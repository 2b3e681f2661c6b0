// Package mosquittotest starts a real Mosquitto broker (the Debian package's
// /usr/sbin/mosquitto, 2.0.11) for one test, configured like production:
// a TLS listener on 127.0.0.1 that requires a client certificate and takes
// the certificate's CN as the username, TLS 1.2 minimum, persistence on (so
// a restarted broker keeps durable sessions and their queued messages), a
// large max_queued_messages (so nothing is dropped silently) and a short
// autosave interval. A plain listener is optional.
//
// Everything lives in t.TempDir(): the config, the throwaway CA and
// certificates (internal/pki), the persistence file and the broker's log,
// which is printed when the test fails. The broker is stopped in
// t.Cleanup. Ports are ephemeral; a bind race with another process is
// retried with new ports.
//
// The harness never skips: a missing mosquitto binary fails the test with
// the command that installs it.
package mosquittotest
