// Package rekey owns the rekey message of docs/rekey-v1.md: how the backend
// seals a new DEK version for one device under a DEK the device already
// holds (Seal), how a device parses and opens it (Parse, Message.Open), and
// every check a device makes before installing it, anti-rollback included
// (Take, over the device's Keyring).
//
// Promises: Seal and Open bind the sealed key to device id, key id, new
// version and wrapping key through the AAD; with amendment 1's generation,
// sealed_dek_gen binds the generation and issued_at too, and Take refuses
// a generation that is not above the highest the device accepted for that
// key (ErrRollback), a message without one once one was accepted, and
// never changes anything for a repeat of a held version. Parse checks
// every member's type and alphabet and every length before anything is
// sliced, refuses repeated member names, and never returns key material
// in an error. The new DEK leaves Open and Take in a slice the caller owns
// and wipes. Nothing here keeps state; every function is safe for
// concurrent use.
//
// docs/vectors/rekey-v1.json is made by this package's tests
// (TestPublishedVectors), which fail if the published copy drifts.
package rekey
