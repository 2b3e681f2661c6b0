// Command kpemu runs the Key Protect emulator (internal/kpemu) on a local
// address so the Key Protect path of decryptd and dekctl can be tried
// without an IBM Cloud account. It prints the base URL, token URL and
// instance id to configure, and with -create-root the id of a fresh root
// key. It serves plain HTTP on 127.0.0.1 by default and keeps everything in
// memory: keys are gone when it stops. Not for production.
//
//	kpemu -addr 127.0.0.1:8200 -api-key my-dev-key -create-root decryptd-root
//
// As the real service:
//
//   - -tls serves HTTPS with a certificate from a CA made on the spot,
//     written to -tls-ca-out (trust it; the client's IAM token fetch trusts
//     only the system roots, so point SSL_CERT_FILE at it);
//     -tls-cert/-tls-key serve a given certificate instead.
//   - -rate-limit N answers 429 with Retry-After above N API requests per
//     second (-rate-burst at once).
//   - -real-timing applies the service's timing rules (one rotation per
//     hour, 30 s before enable/restore, 4 h before purge); each has its own
//     flag too. -rotation-policy M enables the instance rotation policy
//     every new root key inherits.
//
// -control-addr serves the runtime fault control (kpemu.Server's
// ControlHandler) on its own, plain, unauthenticated address, so it stays
// reachable while the emulator refuses connections:
//
//	curl -X POST http://127.0.0.1:8201/faults/hang     # also reset, refuse, 503, 429
//	curl -X POST http://127.0.0.1:8201/faults/none     # serve normally again
//	curl -X PUT -d '{"latency":"2s","fail_rate":0.1}' http://127.0.0.1:8201/faults
//
// Its tests run keyprotect-go-client v0.17.3's own integration tests
// against it (TestClientIntegrationSuite, as root).
package main
