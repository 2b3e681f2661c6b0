// Package keycache owns the DEK cache: it turns a key id, key version and
// device id into a ready AES-256-GCM cipher (decrypt.KeyResolver), so that
// decrypting a message never costs a KMS call, and it keeps that cache honest
// against the registry's change feed.
//
// What it keeps. One entry per DEK version: the ready cipher.AEAD, the set of
// devices allowed to use it (a map for groups larger than a few devices), and
// its lifetime. The unwrapped key bytes are wiped as soon as the cipher is
// built. That is all we can wipe: Go's AES-GCM keeps its own expanded key
// schedule inside the cipher (about 770 bytes per entry, most of the cache's
// memory), and the intermediate cipher.Block built by crypto/aes is left to
// the garbage collector; neither can be zeroed through the public API.
// Negative answers are cached too: "no such version" for NegativeTTL, and
// "revoked" until a change event says otherwise (re-checked after TTL in case
// the change feed is not running).
//
// Promises.
//
//   - Concurrency: ResolveKey is safe for concurrent use. A hit takes a read
//     lock on one of 64 shards, does not allocate and never waits for the KMS.
//     Concurrent misses of one version share one load (one registry read, one
//     KMS unwrap); at most MaxConcurrentUnwraps KMS calls run at once across
//     all keys. A waiting lookup gives up when its own context ends; the load
//     goes on (bounded by UnwrapTimeout) for the others.
//   - Lifetime and refresh: an entry lives TTL ± Jitter from its load. A hit in
//     the last RefreshAhead of that lifetime starts one background refresh
//     (registry re-read and unwrap) per key, so a busy key is never reloaded
//     on the hot path. A key idle past its lifetime is reloaded by the next
//     lookup, like a miss.
//   - Staleness: if a refresh cannot reach the KMS (kms.ErrTransient, a
//     deadline) or the registry, the entry keeps serving past its lifetime, up
//     to StaleLimit beyond it, retrying every StaleRetry in the background;
//     decryptd_dek_cache_stale_serving counts such entries. A version never
//     loaded fails with dek.ErrUnavailable (transient: retry, never
//     dead-letter), as does one past its stale limit.
//   - Revocation: a version that is revoked or shredded in the registry, or
//     whose root key the KMS reports revoked, fails with dek.ErrRevoked. Run
//     applies the change feed: a revoke or shred event evicts the cached
//     cipher before the event is acknowledged, even while the KMS is down; a
//     load racing the event redoes its registry read instead of publishing. A
//     feed reset (or resubscription) drops negative answers and re-reads every
//     cached key from the registry, keys serving meanwhile. Without Run,
//     revocations are seen at the next reload only.
//   - Devices: every lookup, hit or miss, checks the device against the set
//     cached with the entry (registry.Entry.AllowsDevice); a device that may
//     not use the key gets dek.ErrUnknownKey. A change to a cached key's
//     device list takes effect once the background re-read triggered by its
//     change event completes.
//   - Size: at most MaxEntries entries, negative ones included. Eviction is an
//     approximate LRU: each entry keeps a last-used time (written at most once
//     a second per entry, so hot keys do not bounce a cache line between
//     cores), and an insert over the bound samples a few entries of a shard
//     (Go's map iteration starts at random) and evicts the least recently
//     used of them, as Redis does. A true LRU list would need a write lock on
//     every hit.
//   - Accounting: every KMS unwrap, whatever its result, produces one audit
//     event (key, version, root key, result, duration, never key material)
//     and the decryptd_kms_* metrics; lookups are counted by result in
//     decryptd_dek_cache_requests_total. Labels come from fixed sets only.
//
// Time and randomness are injected (Options.Now, Options.Rand) so tests drive
// lifetimes without sleeping. By default the hit path reads a coarse clock
// that a ticker advances every 50ms (reading the time costs 40-80ns on
// virtual machines, most of a hit's budget); Close stops it.
package keycache
