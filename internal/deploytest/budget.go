package deploytest

import "github.com/decryptd/decryptd/internal/config"

// Memory budget terms (deploy/README.md, "Memory").
const (
	// BaseBytes is the process without load: Go runtime, TLS, the MQTT
	// client, metrics (the idle daemon is 30-40 MiB RSS in BENCHMARKS.md).
	BaseBytes = 64 << 20
	// InFlightCopies: a message in flight is held as received and as its
	// record (plaintext JSON) until its batch is written.
	InFlightCopies = 2
	// CachedDEKBytes bounds one cached DEK version (1,414 B RSS measured
	// in BENCHMARKS.md, bound 1,536 B).
	CachedDEKBytes = 1536
	// ReplayEntryBytes is one replay-window entry (config.example.yaml).
	ReplayEntryBytes = 64
	// LimitHeadroom: the container's memory limit is the budget times
	// this, so the garbage collector, working to GOMEMLIMIT, has room.
	LimitHeadroom = 1.25
	// LimitStep rounds the limit up.
	LimitStep = 64 << 20
)

// MemoryBudget is what the configuration lets decryptd hold, in bytes:
//
//	BaseBytes
//	+ mqtt.max_in_flight x decrypt.max_message_bytes x InFlightCopies
//	+ cache.max_entries x CachedDEKBytes
//	+ decrypt.replay_window_entries x ReplayEntryBytes
//
// The pod's GOMEMLIMIT is this budget rounded up to a MiB; its memory
// limit (and request) is MemoryLimit.
func MemoryBudget(c *config.Config) int64 {
	return BaseBytes +
		int64(c.MQTT.MaxInFlight)*int64(c.Decrypt.MaxMessageBytes)*InFlightCopies +
		int64(c.Cache.MaxEntries)*CachedDEKBytes +
		int64(c.Decrypt.ReplayWindowEntries)*ReplayEntryBytes
}

// GoMemLimitMiB is the budget rounded up to whole MiB (GOMEMLIMIT=<n>MiB).
func GoMemLimitMiB(c *config.Config) int64 {
	return (MemoryBudget(c) + (1<<20 - 1)) >> 20
}

// MemoryLimit is the container's memory limit in bytes: the budget times
// LimitHeadroom, rounded up to LimitStep.
func MemoryLimit(c *config.Config) int64 {
	l := int64(float64(MemoryBudget(c)) * LimitHeadroom)
	return (l + LimitStep - 1) / LimitStep * LimitStep
}
