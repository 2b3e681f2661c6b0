package daemon

import "runtime"

// MinProcs is the fewest Ps (GOMAXPROCS) the daemon runs with unless
// GOMAXPROCS is set explicitly.
//
// A sink's fsync and the audit log's are blocking system calls that keep
// their P until the runtime's monitor takes it back, up to 10 ms later when
// the process is otherwise quiet. With a single P (what Go picks when the
// CPU affinity allows one CPU, e.g. taskset -c 0; a cgroup CPU limit below
// 2 is rounded up to 2 by the runtime itself) intake, decryption and
// acknowledgements all stop during each fsync,
// the broker's window drains, and a drain that does 150,000 messages/s on
// two Ps does 10,000 on one. A second P lets the rest run during the fsync;
// the operating system shares the CPU between them as usual.
//
// Nothing else tells the runtime its CPUs. Go 1.25 and later (go.mod's go
// directive is 1.26, which turns the behaviour on) set GOMAXPROCS from the
// cgroup CPU quota natively, the lower of the CPUs in the affinity mask and
// the quota rounded up, and follow later changes of the quota, so no
// automaxprocs dependency is needed. Without a CPU limit GOMAXPROCS is every
// CPU of the node; decryptd's per-message CPU grew with that (issue 17: 6.7
// µs/msg at 2 vCPUs, 30 µs at 16), since every P that idles between messages
// is one more to wake and to spin looking for work. On a large node give the
// runtime the CPUs the replica should use: a CPU limit, or GOMAXPROCS (at
// least 2) set to the CPU request. mqtt.connections' default follows
// GOMAXPROCS (consumer.DefaultConnections).
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
