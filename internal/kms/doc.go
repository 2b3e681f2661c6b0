// Package kms defines what decryptd needs from a key management service:
// wrapping, unwrapping and rewrapping data encryption keys under a root key
// that never leaves the KMS (envelope encryption), and the operator's root
// key lifecycle. Providers live in sub-packages (local, keyprotect); error
// classification into transient, root-revoked and permanent is part of the
// contract, because the key cache retries the first and the decryption core
// reports the second as key_revoked.
package kms
