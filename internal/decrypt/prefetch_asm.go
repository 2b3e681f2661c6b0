//go:build amd64 || arm64

package decrypt

import "unsafe"

// prefetch asks the processor to bring the cache line at p into its caches
// (PREFETCHT0 on amd64, PRFM PLDL1KEEP on arm64) and returns at once. A
// hint only: it reads nothing into Go's view of memory (so it is no data
// access for the race detector), never faults, and changes no result.
//
//go:noescape
func prefetch(p unsafe.Pointer)
