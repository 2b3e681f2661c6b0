package daemon

import "runtime"

// MinProcs is the fewest Ps (GOMAXPROCS) the daemon runs with unless
// GOMAXPROCS is set explicitly.
//
// A sink's fsync and the audit log's are blocking system calls that keep
// their P until the runtime's monitor takes it back, up to 10 ms later when
// the process is otherwise quiet. With a single P (Go 1.25 and later set
// GOMAXPROCS from a container's CPU limit, so a pod limited to one CPU gets
// one) intake, decryption and acknowledgements all stop during each fsync,
// the broker's window drains, and a drain that does 150,000 messages/s on
// two Ps does 10,000 on one. A second P lets the rest run during the fsync;
// the operating system shares the CPU between them as usual.
const MinProcs = 2

// RaiseProcs sets GOMAXPROCS to MinProcs when it is lower and the
// environment (lookupEnv, os.LookupEnv in production) does not set
// GOMAXPROCS. It returns the values before and after.
func RaiseProcs(lookupEnv func(string) (string, bool)) (before, after int) {
	before = runtime.GOMAXPROCS(0)
	if _, set := lookupEnv("GOMAXPROCS"); set || before >= MinProcs {
		return before, before
	}
	runtime.GOMAXPROCS(MinProcs)
	return before, MinProcs
}
