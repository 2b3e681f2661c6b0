// Package keyops owns the operator's key lifecycle, the logic behind
// dekctl: root key create/rotate/list/retire, provisioning a device's DEK
// version (and group membership), bulk import of existing DEKs, listing,
// revoking, crypto-shredding (plain, or complete: ShredComplete also retires
// the root versions the shredded DEKs were under, after moving every other
// DEK off them, so older registry copies cannot unwrap them;
// docs/crypto-shredding.md), rewrapping after a root rotation, and checking
// the audit log's hash chain.
//
// Promises:
//
//   - DEKs are made with the injected randomness (crypto/rand by default),
//     wrapped at once with kms.DEKAAD binding their name, and wiped once
//     wrapped. The one place a DEK leaves in the clear is the Credential that
//     Provision returns, for factory provisioning of a device; the caller
//     writes it (WriteCredential: a new file, mode 0600) and wipes it.
//   - Every key operation, successful or not, appends one audit event per
//     key version it touched (what, which key and root key version, result),
//     never key material. An operation whose audit append fails reports the
//     failure.
//   - Changes go through registry.Store.Update, one entry at a time and
//     atomically, so a daemon sharing the registry sees each change on its
//     change feed (and drops a revoked or shredded key from its cache), and
//     an interrupted rewrap resumes where it stopped: the registry itself is
//     the progress record.
//   - Fleets: ProvisionMany provisions many devices with Provision's rules
//     from one registry listing, wrapping in parallel, creating every new
//     version in one registry.BulkCreator.CreateMany (all or nothing) and
//     appending the audit events in batches (BatchAuditor); one event per
//     key version touched, as always.
//   - A root version is never retired while a DEK in the registry that is
//     not shredded is wrapped under a version the retirement destroys
//     (ErrInUse), nor while it wraps new DEKs (kms.ErrRetireWrapping).
//     ShredComplete is resumable: the tombstones keep the root version they
//     were under, so a rerun finds what is left.
//   - Errors: ErrInvalidArgument for a bad name or combination of arguments
//     (a usage error), ErrNotFound when nothing matches, anything else is an
//     operation failure. dekctl maps them to exit codes 2, 3 and 1.
//
// Ops is safe for concurrent use; Rewrap itself runs a few KMS calls at once.
package keyops
