// Package faults is decryptd's process-level fault suite: the built
// decryptd binary (and the built kpemu for the Key Protect path) run as an
// operator runs them, consuming from a real Mosquitto with persistence and
// mutual TLS, fed by a simulated fleet (internal/fleet's generator, both
// message shapes, bad kinds by reason) through device gateways that resend
// what the broker did not acknowledge, as QoS 1 devices do. Faults are
// injected mid-stream:
//
//   - broker SIGKILL and restart;
//   - daemon SIGKILL and restart;
//   - SIGTERM mid-stream, then a restart;
//   - the KMS (kpemu through the real keyprotect-go-client) hung, refusing
//     connections, or answering 503, with half the devices' keys cached, and
//     once with the daemon SIGKILLed during the outage;
//   - the file sink on a full filesystem (a small tmpfs, when the test runs
//     as root and may mount; an HTTP sink answering 503 otherwise);
//   - a hostile-input flood (malformed, oversized, forged, unknown keys,
//     replays, topic mismatches);
//   - ~240 KiB messages while the sink is down.
//
// It owns no production code. Every scenario counts every record by its id
// (the spec's record id, computed from the nonce the generator drew) and
// every dead letter by its payload and reason, and asserts: every message
// the broker acknowledged is delivered or correctly dead-lettered, except
// what the broker itself lost (a Mosquitto SIGKILL can lose what it
// acknowledged inside its autosave window: counted apart, as "lost at
// broker", only where decryptd's own counters show the message never reached
// it); nothing dead-lettered for a transient cause; delivery resumes within
// a stated bound; decryptd's peak RSS (VmHWM) stays within the memory budget
// its configuration gives (internal/deploytest.MemoryBudget). Every log line
// of every process is scanned for the planted secrets (DEKs, the Key Protect
// API key, a token in a sink URL, reading values).
//
// Short form (go test, the README's test command): small streams, generous
// bounds for a loaded CI machine. Long form: DECRYPTD_FAULTS=full, larger
// streams, 60 s outages, strict bounds. DECRYPTD_FAULTS_TABLE=path writes
// the results as the markdown table of docs/faults.md.
package faults
