// Package fsutil holds the two file-system primitives that decryptd's
// file-backed state shares (the audit log, the file registry): an advisory
// flock that a context can abandon, and an atomic whole-file replace.
//
// Promises:
//
//   - Lock waits for a conflicting flock(2) lock in short sleeps (200 µs,
//     doubling to 10 ms), never blocking in the kernel, so the caller's
//     context ends the wait; EINTR is retried. Locks belong to the open file
//     description, not to the goroutine: callers that share one *os.File
//     across goroutines serialise Lock themselves.
//   - WriteAtomic replaces a file so that a crash leaves the old content or
//     the new, never a torn file: a temporary file in the same directory
//     (named prefix + random, created with the given mode before any byte is
//     written), fsync, rename over the target, fsync of the directory. On
//     failure the temporary file is removed. The old content's blocks are
//     freed by the file system, not overwritten: see docs/crypto-shredding.md
//     for what that means for destroyed bytes.
package fsutil
