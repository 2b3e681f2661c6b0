// Package kmstest is the contract every kms.Provider passes:
// RunProviderContract checks the round trip, AAD binding, error
// classification (kms.ErrTransient, kms.ErrRootRevoked, permanent), rewrap
// and root rotation through the declared capabilities, and root-version
// retirement for a provider that declares kms.RootRetirer. Each provider's
// tests call it with a Factory that makes a fresh provider per subtest.
//
// Promises: every subtest makes its own provider (a fresh root key), so
// subtests never see each other's keys; a provider that declares less
// (no revocation, no outages, no RootRetirer) has those cases logged as not
// applicable, never skipped silently; RootManager is required, since every
// provider decryptd runs rotates its root key. Calls during an outage are
// bounded by OutageDeadline and must end by it.
package kmstest
