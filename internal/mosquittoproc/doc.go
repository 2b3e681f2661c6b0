// Package mosquittoproc launches and stops a Mosquitto process, written
// once for the test broker (testutil/mosquittotest) and the benchmark's
// broker (bench): Start runs the command in its own process group (a ^C
// reaches the Go program, which then stops the broker rather than having
// it killed mid-write), appends its output to a log file and returns only
// when every listener accepts a TCP connection, or with an error wrapping
// ErrAddrInUse when the process exited because a port was taken, so that
// the caller can retry on fresh ports. Stop signals and waits, then kills.
// It writes no configuration: callers own their mosquitto.conf.
package mosquittoproc
