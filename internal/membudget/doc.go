// Package membudget computes decryptd's memory budget from its
// configuration: the bytes the configuration lets the process hold at
// most, and from it the GOMEMLIMIT and container memory limit a deployment
// gives it (deploy/README.md, "Memory"; the Kubernetes manifests follow it,
// and internal/deploytest checks that they do). The fault suite
// (internal/e2e/faults) compares a daemon's peak RSS against the same
// numbers.
//
// The budget counts every copy a message really has while it is held:
// what the MQTT client reads, the payload as received, the decryption's
// scratch or the record's plaintext, the record's JSON shared by the sinks,
// one more JSON per sink with a field policy, and each sink's own copy of
// the batch it writes. It holds as long as the MQTT broker refuses packets
// much larger than decrypt.max_message_bytes (Mosquitto's max_packet_size):
// the client has to read a whole packet before anything can refuse it.
//
// Nothing here reads the environment or the process; it is arithmetic on a
// validated *config.Config.
package membudget
