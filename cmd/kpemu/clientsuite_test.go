package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// keyprotect-go-client v0.17.3 ships integration tests (build tag
// integration, integration_test.go) written against the real service: its
// base and token URLs are the constants https://us-south.kms.cloud.ibm.com
// and https://iam.cloud.ibm.com/oidc/token, and they read KP_INSTANCE_ID
// and IBMCLOUD_API_KEY. TestClientIntegrationSuite runs them, unchanged,
// against this command: in a new mount and network namespace (root only)
// those two names resolve to 127.0.0.1 (a bind mount over /etc/hosts),
// kpemu serves HTTPS on 127.0.0.1:443 with a CA made on the spot, and the
// test binary trusts that CA through SSL_CERT_FILE. Nothing leaves the
// namespace. Every one of the suite's tests must pass.
var clientSuite = []string{
	"TestWrapUnwrap", "TestWrapDEKV2UnWrap", "TestWrapV2Unwrap", "TestWrapUnwrapWithAlias",
	"TestRotatedKeyHasLastUpdatedAndRotated", "TestExtractableKey", "TestRotationInstancePolicy",
	"TestKeyRotationPolicy", "TestCreateKeyWithPolicyOverrides", "TestListKeysWithFilter",
}

const (
	clientModule       = "github.com/IBM/keyprotect-go-client"
	suiteHelperEnv     = "KPEMU_CLIENT_SUITE_HELPER" // set in the re-executed helper: the kp.test binary to run
	suiteInstanceID    = "6f1b8f3e-2d3c-4b7a-9e0f-1a2b3c4d5e6f"
	suiteAPIKey        = "kpemu-client-suite-key"
	suiteBaseHost      = "us-south.kms.cloud.ibm.com"
	suiteTokenHost     = "iam.cloud.ibm.com"
	suiteHelperTimeout = 3 * time.Minute
)

func TestClientIntegrationSuite(t *testing.T) {
	if os.Geteuid() != 0 {
		needsRoot(t, "the client's suite runs in its own mount and network namespace, which needs root")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		needsRoot(t, "the go command builds the client's suite: "+err.Error())
	}
	dir := t.TempDir()
	kpTest := filepath.Join(dir, "kp.test")
	build := exec.Command(goBin, "test", "-c", "-tags", "integration", "-o", kpTest, clientModule)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building %s's integration tests: %v\n%s", clientModule, err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), suiteHelperTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), suiteHelperEnv+"="+kpTest, "KPEMU_CLIENT_SUITE_DIR="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWNET}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	if runErr != nil && strings.Contains(runErr.Error(), "operation not permitted") {
		needsRoot(t, "creating the namespaces: "+runErr.Error())
	}

	passed := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^--- PASS: (\w+)`).FindAllStringSubmatch(out.String(), -1) {
		passed[m[1]] = true
	}
	var missing []string
	for _, name := range clientSuite {
		if !passed[name] {
			missing = append(missing, name)
		}
	}
	t.Logf("keyprotect-go-client integration tests against kpemu: %d of %d pass", len(clientSuite)-len(missing), len(clientSuite))
	if runErr != nil || len(missing) > 0 {
		sort.Strings(missing)
		t.Fatalf("client suite: %v; not passing: %v\n%s", runErr, missing, out.String())
	}
}

// needsRoot skips outside CI and fails in CI (CI=true), where the suite
// must run.
func needsRoot(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why + " (fails when CI=true)")
}

// TestMain runs the helper instead of the tests in the process that
// TestClientIntegrationSuite starts inside its namespaces.
func TestMain(m *testing.M) {
	if kpTest := os.Getenv(suiteHelperEnv); kpTest != "" {
		if err := clientSuiteHelper(kpTest, os.Getenv("KPEMU_CLIENT_SUITE_DIR")); err != nil {
			fmt.Fprintln(os.Stderr, "client suite helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// clientSuiteHelper runs inside the namespaces: it points the service's
// names at loopback, starts the command on 127.0.0.1:443 over HTTPS and
// runs the client's suite binary.
func clientSuiteHelper(kpTest, dir string) error {
	// Keep the bind mount in this namespace: make every mount private first.
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	hosts := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost "+suiteBaseHost+" "+suiteTokenHost+"\n"), 0o644); err != nil {
		return err
	}
	if err := syscall.Mount(hosts, "/etc/hosts", "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount over /etc/hosts: %w", err)
	}
	if err := loopbackUp(); err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	caFile := filepath.Join(dir, "ca.pem")
	args := []string{"-addr", "127.0.0.1:443", "-tls", "-tls-hosts", suiteBaseHost + "," + suiteTokenHost,
		"-tls-ca-out", caFile, "-api-key", suiteAPIKey, "-instance-id", suiteInstanceID}
	ready, err := startCommand(ctx, args)
	if err != nil {
		return err
	}
	if got := ready["base_url"]; got != "https://127.0.0.1:443" {
		return fmt.Errorf("base_url %q, want https on 127.0.0.1:443", got)
	}

	cmd := exec.CommandContext(ctx, kpTest, "-test.v", "-test.count=1", "-test.run=^("+strings.Join(clientSuite, "|")+")$")
	cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+caFile, "KP_INSTANCE_ID="+suiteInstanceID, "IBMCLOUD_API_KEY="+suiteAPIKey)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}

// startCommand runs the command with args until ctx ends and returns what
// it printed up to its ready line.
func startCommand(ctx context.Context, args []string) (map[string]string, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	go func() {
		run(ctx, args, w, &stderr)
		w.Close()
	}()
	var buf []byte
	r.SetReadDeadline(time.Now().Add(20 * time.Second))
	for !strings.Contains(string(buf), "\nready") {
		chunk := make([]byte, 1024)
		n, err := r.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if err != nil && !strings.Contains(string(buf), "\nready") {
			return nil, fmt.Errorf("kpemu did not become ready: %w\n%s%s", err, buf, stderr.String())
		}
	}
	r.SetReadDeadline(time.Time{})
	go func() { // keep draining so the command never blocks on its output
		b := make([]byte, 1024)
		for {
			if _, err := r.Read(b); err != nil {
				return
			}
		}
	}()
	got := map[string]string{}
	for _, l := range strings.Split(string(buf), "\n") {
		if k, v, ok := strings.Cut(l, ": "); ok {
			got[k] = v
		}
	}
	return got, nil
}

// loopbackUp sets IFF_UP on lo (a new network namespace starts with it
// down), without needing the ip command.
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var ifr struct {
		name  [syscall.IFNAMSIZ]byte
		flags uint16
		_     [24 - 2]byte
	}
	copy(ifr.name[:], "lo")
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCGIFFLAGS, uintptr(unsafe.Pointer(&ifr))); e != 0 {
		return fmt.Errorf("SIOCGIFFLAGS: %w", e)
	}
	ifr.flags |= syscall.IFF_UP | syscall.IFF_RUNNING
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCSIFFLAGS, uintptr(unsafe.Pointer(&ifr))); e != 0 {
		return fmt.Errorf("SIOCSIFFLAGS: %w", e)
	}
	return nil
}
