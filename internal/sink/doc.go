// Package sink owns the destinations of decrypted records and of dead
// letters: the Sink contract, its implementations (file, stdout, mqtt, http)
// and the contract test suite every implementation passes.
//
// Delivery promise: a Sink's Write returns nil only when the sink holds the
// whole batch; the daemon acknowledges an MQTT message only after that, so a
// crash duplicates (records carry a stable id) and never loses.
package sink
