// Package filestore is the embedded default registry.Store: the whole DEK
// registry in one JSON file, shared by the daemon and dekctl (separate
// processes) on one host.
//
// Durability: every write replaces the file atomically (a temporary file in
// the same directory, fsync, rename over the registry, fsync of the
// directory), so a crash leaves the old or the new registry, never a torn
// one. Leftover temporary files of a crashed writer are ignored by readers
// and removed by the next Open. The file and its lock are mode 0600; Open
// refuses a registry file that group or others may read.
//
// Concurrency: writers of every process take an exclusive flock on a sidecar
// "<file>.lock" (internal/fsutil, like the atomic replace) and re-read the
// file under it before applying their change, so an Update is atomic across
// processes; readers reload under a shared lock. Within one handle a mutex
// serialises the lock, because flock locks belong to the open file, not to
// the goroutine.
//
// Reads are served from an in-memory index. Each Get and List first compares
// the file's identity (device, inode, size, mtime, ctime: one stat) with the
// loaded one and reloads when it moved, so a write made by another process
// is visible as soon as that write returned. A directory watch (fsnotify,
// which sees the rename-replace as a create of the file's name) forces a
// re-read on every event for the file, and a poll (1 s by default) backs it
// up where inotify is unavailable or drops events; either way a watcher
// learns of another process's change within the 2 s the registry promises.
// A reload diffs the old and new index into precise Created and Updated
// changes; if an entry disappeared (a file restored from backup) it emits
// Reset. Writes through a handle notify its own watchers directly.
//
// Bulk: CreateMany (registry.BulkCreator) adds a whole batch, and UpdateMany
// (registry.BulkUpdater) changes one, in one locked rewrite of the file, all
// or nothing, where Create and Update rewrite the file once per entry;
// provisioning a fleet goes through them.
package filestore
