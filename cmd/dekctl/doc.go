// Command dekctl is the operator's key lifecycle tool for decryptd: root
// keys (create, rotate, list, retire), device provisioning, bulk import,
// listing, revocation, crypto-shredding (plain or --complete), rewrapping after a root rotation, fleet key rotation
// (rotate starts rotations that the daemon's controller delivers; rotation
// status shows the fleet's state as text, JSON or a PNG chart drawn with
// the standard library and a built-in bitmap font) and audit log
// verification. It reads the daemon's own configuration file, so both
// agree on the KMS, the registry and the audit log.
//
// This package only parses arguments and wires the parts; the logic is in
// internal/keyops. Run `dekctl help` for the commands and exit codes.
package main
