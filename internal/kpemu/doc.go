// Package kpemu is an in-process emulator of the IBM Key Protect REST API
// (api/v2) and of the IAM token endpoint, as the keyprotect-go-client
// v0.17.3 uses them. decryptd's tests run the real client against it, and
// cmd/kpemu serves it so a user can try the Key Protect path locally.
//
// It speaks the wire format of docs/keyprotect-api.md (shared reference),
// faithfully enough that the client's own integration tests pass against
// it (cmd/kpemu's TestClientIntegrationSuite, 10 of 10): the key and error
// envelopes, the flat action bodies, key states 1/2/3/5 with the
// documented refusals (409 KEY_ACTION_INVALID_STATE_ERR, 410 for a deleted
// key, 404 KEY_NOT_FOUND_ERR, 401, 400 INVALID_FIELD_ERR for a ciphertext
// or AAD that does not authenticate), rotation with old versions
// kept for unwrap, UnwrapV2's rewrapped ciphertext, key aliases, key and
// instance policies (rotation, dualAuthDelete: recorded and answered, a new
// root key inheriting the instance's, keys_with_policy_overrides setting
// its own; never enforced), and no lastUpdateDate until a key changes. It
// checks the Authorization bearer token (only tokens its own IAM endpoint
// issued, until they expire) and the Bluemix-Instance header; it requires
// no Content-Type. Not emulated: ListKeys' filter, search and sort
// (ignored, so a superset comes back), secure import, key rings beyond the
// header, registrations and KMIP. Timing rules of the real service (one rotation per hour, 30 s between a
// state change and enable/restore, 4 h before purge) are options, off by
// default so tests can rotate twice; so is the service's rate limiting
// (Options.RateLimit: 429 with Retry-After).
//
// It serves plain HTTP (Listen, Start) or HTTPS as the service does
// (ListenTLS with a CA made on the spot by NewCA, or any tls.Config);
// several Servers may serve one Emulator (Serve), e.g. the API over HTTPS
// and the token endpoint over plain HTTP for a client whose IAM fetch
// trusts only the system roots.
//
// Root key material never leaves the emulator: wrap answers with an opaque
// ciphertext (base64 of a small JSON object naming the key version, AES-GCM
// with the key id, version and AAD as additional data). Only standard
// (extractable) keys return their payload, as the real GET does.
//
// For tests it offers fault injection settable at runtime (latency, the
// next N requests failing with a status, a failure rate, 429 with
// Retry-After, a hanging or resetting outage, the same for IAM) and per
// operation call counters; Server adds a listener on 127.0.0.1:0 that counts
// new TCP connections (keep-alive reuse is observable) and can refuse
// connections outright; ControlHandler exposes those faults over HTTP
// (presets hang, reset, refuse, 503, 429) for a process that runs the
// emulator as a command. Everything is safe for concurrent use.
//
// Files by job: emulator.go (options, routing, IAM, authorization),
// model.go (keys, versions, states, aliases), ciphertext.go (the opaque
// wrap format), wire.go (JSON shapes, refusal envelopes), handlers.go (one
// function per key route, each stating in a keyCheck what keyLocked
// refuses for it), aliases.go (alias routes), policies.go (key and
// instance policies), ratelimit.go, faults.go, control.go (the fault
// control over HTTP), tls.go (the CA) and server.go.
package kpemu
