// Command telemsim simulates a fleet of devices sending encrypted telemetry
// to decryptd: 5,000 devices or 100,000, each with a DEK version of its own
// in the daemon's registry (or sharing group keys), multiplexed over a few
// mutual-TLS MQTT connections at QoS 1, at a per-device rate, with a mix of
// shape A and shape B messages, a chosen share of bad messages by reason,
// and devices that hold their messages while offline and send them in a
// burst. It can provision its fleet first (--provision, into the registry
// and KMS of the daemon's --config, audited), prints progress every second
// on stderr and a summary at the end (--json for machines). --backlog N
// publishes N messages as fast as the broker takes them, for the drain
// benchmark. With --config, the DECRYPTD_* overrides apply as for the
// daemon, and one that sets no key is refused as the daemon refuses it.
//
// This file set holds flags and wiring only; the simulator is package
// internal/fleet.
package main
