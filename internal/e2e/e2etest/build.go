package e2etest

import (
	"context"
	"fmt"
	"os/exec"
	"path"
	"path/filepath"
	"testing"
	"time"
)

// Module is this module's path, the prefix of the packages Build builds.
const Module = "github.com/decryptd/decryptd"

// Build builds the main package pkg of this module (e.g. "cmd/decryptd")
// into dir, with the go command first in PATH (go test puts its own
// toolchain's there), and returns the binary's path, named after pkg's
// last element. It builds without the race detector whatever the test
// runs with.
func Build(ctx context.Context, pkg, dir string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("build %s: no go command in PATH: %w", pkg, err)
	}
	bin := filepath.Join(dir, path.Base(pkg))
	out, err := exec.CommandContext(ctx, goBin, "build", "-o", bin, Module+"/"+pkg).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build %s: %w\n%s", pkg, err, out)
	}
	return bin, nil
}

// BuildDecryptd builds cmd/decryptd into a folder of the test's, within 3
// minutes, and returns the binary's path; it fails the test if the build
// does.
func BuildDecryptd(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin, err := Build(ctx, "cmd/decryptd", tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	return bin
}
