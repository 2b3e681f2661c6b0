// Package kms defines what decryptd needs from a key management service:
// wrapping, unwrapping and rewrapping data encryption keys under a root key
// that never leaves the KMS (envelope encryption), and the operator's root
// key lifecycle. Providers live in sub-packages (local, keyprotect); error
// classification into transient, root-revoked and permanent is part of the
// contract, because the key cache retries the first and the decryption core
// reports the second as key_revoked.
//
// Capabilities. Beyond Provider, a provider may manage root keys
// (RootManager), describe one root key (RootDescriber), tell which root
// version wraps and when it was made (RootClock, the schedule of fleet root
// rotation), name its wrapping root key (RootNamer), destroy old root
// versions (RootRetirer, retire.go) and, where versions go only with their
// whole key, wrap under a replacement key (RootReplacer). Each is a small
// interface declared here, once; CapabilitiesOf is the only place that
// looks for them, and callers (keyops, rotation, the daemon) hold the
// resulting Capabilities. Small optional interfaces rather than a
// Capabilities() method on Provider: a provider declares a capability by
// having the method (checked at compile time with var _ lines), cannot
// claim one it lacks, and test fakes stay one-method types.
//
// Contract. Every provider passes kmstest.RunProviderContract: round trip,
// AAD binding, error classification, rewrap, root rotation and, for a
// RootRetirer, retirement.
package kms
