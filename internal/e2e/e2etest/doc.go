// Package e2etest is the harness the end-to-end test packages under
// internal/e2e (delivery, faults, kafka) share, written once:
//
//   - Build builds a main package of this module with the go command
//     running the tests, so the process under test is the binary an
//     operator runs; BuildDecryptd builds cmd/decryptd for one test.
//   - OpenDekctl opens what dekctl opens to provision a fleet (a file
//     registry, an audit log as actor dekctl) in a folder; CreateLocalRoot
//     creates a local root key there; LocalKeys does both for a test.
//   - NewFiles names the files one daemon's configuration names, in a
//     folder of its own; WriteConfig writes that configuration as an
//     operator would (input, keys, registry, sinks, a file dead letter,
//     metrics on 127.0.0.1:0, an audit log, JSON logs), and MQTTInput and
//     LocalKMS write its usual sections. What the test packages do
//     differently (connections, keep-alive, sinks, extra sections) is an
//     option, not a copy.
//   - Scrape reads a daemon's /metrics (text format) into samples that Sum
//     and Has query by name and labels; Counts counts ids.
//
// It promises no more: it knows nothing of scenarios, publishers or
// assertions, which stay with the tests. Functions that take a testing.TB
// fail the test on a setup error; the others return wrapped errors. It
// keeps no package state.
package e2etest
