// Package daemontest runs a daemon in a test, written once for the tests
// that start one from a configuration: Start builds it (daemon.New), runs
// it (Daemon.Run) and waits until it reports ready; the stop function it
// returns cancels it and fails the test when Run returns an error or does
// not return within 30 seconds.
package daemontest
