// Package fleet simulates a fleet of devices sending envelope v1 telemetry
// (docs/envelope-v1.md) over MQTT: the engine of telemsim and of the
// one-command demo.
//
// It owns four things:
//
//   - Keys: Provision makes the fleet's credentials through a
//     KeyProvisioner, the code behind dekctl provision (*keyops.Ops), or
//     through Bulk, which has the same semantics and audit trail but lists
//     the registry once and stores new versions in one call where the
//     registry can (BulkCreator), so 100,000 devices take seconds, not
//     hours. Credentials can be kept in memory or written to a 0600 file
//     (WriteCredentials / LoadCredentials). NewFleet turns them into
//     Devices holding ready ciphers and wipes the DEKs; a Fleet resolves its
//     own keys (decrypt.KeyResolver) for tests.
//   - Messages: a Generator makes shape A (whole payload sealed: the
//     readings temperature, heart_rate, spo2, patient_id) and shape B
//     (five fields, patient_id and medical_record sealed) messages of
//     about 300 bytes, timestamps in seconds, and a seeded share of bad
//     ones, each meant to fail with one reason of the spec (Kind.Reason).
//   - Transport: a Publisher multiplexes the fleet over a small pool of
//     mutual-TLS MQTT connections (devices are not one connection each),
//     QoS 1, each device on its Watson IoT topic
//     iot-2/type/<type>/id/<id>/evt/telemetry/fmt/json and always on the
//     same connection, so its messages stay in order, with a bound on the
//     publishes awaiting PUBACK per connection.
//   - Rekeys: devices implement docs/rekey-v1.md with amendment 1's
//     anti-rollback. Fleet.Rekey installs a rekey on its device through
//     rekey.Take (opened with the version it is sealed under, the old
//     versions kept, new messages sealed under the new one, the device's
//     generation floor raised; repeats are no-ops; a generation not above
//     the floor, or none after one, is refused as ErrRekeyRollback, and so
//     is anything else that fails a check), and Publisher.SubscribeRekeys
//     takes them at QoS 2 on every device's command topic over the first
//     connection, so a simulated fleet follows decryptd's key rotation.
//   - Load: Run paces the fleet with a token bucket on the monotonic clock
//     (total rate = devices × per-device rate, or unlimited for a backlog),
//     holds the messages of a share of devices while they are offline and
//     sends them in a burst, reports progress and returns a Summary of what
//     the broker acknowledged, by kind and shape.
//
// Promises: nonces always come from crypto/rand (a seed fixes choices and
// readings, never nonces, so a re-run never looks like a replay); DEKs are
// wiped once their cipher is built and never logged or printed
// (keyops.Credential hides them from fmt); every key version provisioning
// touches gets one audit event. Fleet and Publisher are safe for concurrent
// use; a Generator is not (Run gives each connection its own).
package fleet
