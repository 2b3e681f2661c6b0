// Package daemonproc runs a built decryptd binary as a child process for
// end-to-end tests, and owns the mechanics every such test shares:
//
//   - Start launches the binary in its own process group (so a ^C to go
//     test reaches the test, whose cleanup stops the daemon) with CleanEnv
//     plus the caller's extra variables, appends its output to a log file,
//     and watches stderr (and stdout, if asked) for the first zap JSON
//     "serving" line, whose "http" field is the daemon's HTTP address.
//   - WaitServing waits for that address; WaitReady polls /readyz until
//     200; Kill (SIGKILL) and Terminate (SIGTERM, then SIGKILL after a
//     timeout) stop the process and wait for its exit.
//   - CleanEnv is the test's environment without DECRYPTD_* variables, so
//     only the configuration file configures the daemon; HTTPGet is a GET
//     bounded by 5 s, so a hung daemon cannot hang a test; PeakRSS reads a
//     process's VmHWM from /proc.
//
// It promises no more than that: it knows nothing of configurations,
// sinks or metrics, which stay with the tests. It reports failures as
// wrapped errors and never calls t.Fatal; the caller decides the message.
// It keeps no package state.
package daemonproc
