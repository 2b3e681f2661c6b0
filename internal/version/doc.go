// Package version owns the one answer every command gives to --version:
// the module version the binary was built from (dev for a build from a
// work tree), with the VCS revision when the build recorded one, and the
// Go release.
package version
