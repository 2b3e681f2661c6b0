// Package local is a kms.Provider whose root key lives in a file on the
// decryptd host. It is for development and the demo, not production: the
// root key material sits on the same disk as the daemon, so whoever can read
// that file can unwrap every DEK. Production deployments use Key Protect.
//
// The file is JSON holding the root key id and a list of versions, each a
// 32-byte AES-256 key in base64; the newest version wraps, every version
// unwraps. It must be mode 0600 (no group or other bits), and Open refuses it
// otherwise. Create and Rotate replace it atomically (temporary file, fsync,
// rename, fsync of the directory), so a crash leaves the old or the new file,
// never a torn one. A Provider notices a rotation made by another process
// (dekctl) by checking the file's identity before each Wrap, Rewrap and
// Unwrap, so a version removed from the file (RetireRootVersion, dekctl
// root retire) stops unwrapping in every process at once.
//
// Wrapping is AES-256-GCM with a random 96-bit nonce; the ciphertext is
// nonce || sealed || tag, and the GCM additional data binds the root key id,
// the root version and the caller's AAD strings (each length-prefixed, so no
// two lists encode alike). A Provider is safe for concurrent use.
package local
