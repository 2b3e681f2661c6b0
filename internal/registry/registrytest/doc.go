// Package registrytest holds the contract suite every registry.Store backend
// runs (RunStoreContract), and helpers that build valid entries for other
// packages' tests. It talks only to the registry.Store interface, so a
// backend that passes it behaves like every other one: CRUD and its
// sentinels, the invariants, atomic Update under concurrency from two
// handles, List order, and a Watch that sees a change made through another
// handle within 2 seconds. For a store that implements
// registry.BulkCreator it also runs RunBulkContract (10,000 entries in one
// call, all or nothing, watchers told) and, for a registry.BulkUpdater,
// UpdateMany's; BenchmarkCreateMany measures the bulk path.
package registrytest
