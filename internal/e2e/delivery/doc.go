// Package delivery holds the end-to-end tests of decryptd's delivery promise
// under failure: whole daemons (in process through daemon.New and Run, or
// the built cmd/decryptd binary run with a configuration file of its own)
// consuming from a real Mosquitto that each test starts with its own
// configuration, certificates and free port (mutual TLS), fed by a test
// publisher with messages sealed under keys provisioned through keyops.
//
// It owns no production code. Its tests are the evidence that, together,
// the consumer, the pipeline and the sinks keep "nothing lost":
//
//   - two replicas on one shared subscription take 20,000 messages between
//     them, every record delivered once by id, the load split;
//   - a replica killed without warning (SIGKILL) mid-stream and started
//     again under the same client id loses nothing; what it had written but
//     not acknowledged comes back as duplicates with the same record id,
//     counted;
//   - an HTTP sink down for 10 s loses nothing and, while it is down,
//     intake stops at mqtt.max_in_flight with the rest queued at the broker;
//     nothing is dead-lettered;
//   - a daemon writing to PostgreSQL, SIGKILLed mid-stream and restarted,
//     leaves the table holding exactly the unique record ids, none missing
//     (redeliveries meet ON CONFLICT DO NOTHING);
//   - two daemons sharing the registry give equal pseudonyms under a field
//     policy, and new (equal) ones once the pseudonymization key is
//     rotated; each audit log records the policy in force and every load
//     of the key;
//   - a device's QoS 1 retransmission (a TCP proxy in the test drops its
//     first PUBACK and the link; paho resends with DUP, Mosquitto forwards
//     the resend as a new message) ends as one record and one duplicate
//     counted under cause repeat, nothing dead-lettered (envelope
//     amendment 1).
//
// The daemons are observed from the outside: their sinks (records by id)
// and their decryptd_* metrics scraped from /metrics.
package delivery
