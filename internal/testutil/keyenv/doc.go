// Package keyenv sets up, in a test's directory, the key side that dekctl
// keeps there, written once for the daemon, replay and end-to-end tests: a
// local root key (root-key.json), a file registry (registry.json, without
// fsnotify), an audit log written as dekctl, and keyops over them.
// ImportVectors imports the published vectors' keys as `dekctl import
// --file testdata/envelope-v1.json` does. The registry and the audit log
// are closed when the test ends (closing them earlier is harmless).
package keyenv
