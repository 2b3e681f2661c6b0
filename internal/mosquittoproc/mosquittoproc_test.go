package mosquittoproc

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The process handling is checked with small shell stand-ins for the
// broker, so that the failure paths can be provoked; the real broker is
// started through this package by mosquittotest's tests.

func TestStartWaitsForListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	log := filepath.Join(t.TempDir(), "log")
	p, err := Start([]string{"sleep", "30"}, log, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if !p.Running() || p.Pid() <= 0 {
		t.Fatal("not running after Start")
	}
	p.Stop(syscall.SIGTERM, 5*time.Second)
	if p.Running() {
		t.Fatal("running after Stop")
	}
	p.Stop(syscall.SIGTERM, time.Second) // a second Stop is harmless
	var nilP *Process
	nilP.Stop(syscall.SIGTERM, time.Second)
}

func TestStartAddrInUse(t *testing.T) {
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(log, []byte("Address already in use (an earlier run)\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	// An earlier line saying so does not count: only what this run wrote.
	_, err = Start([]string{"sh", "-c", "exit 3"}, log, addr)
	if err == nil || errors.Is(err, ErrAddrInUse) || !strings.Contains(err.Error(), "exited during start-up") {
		t.Fatalf("a broker exiting for another reason: %v", err)
	}
	_, err = Start([]string{"sh", "-c", "echo 'Error: Address already in use'; exit 1"}, log, addr)
	if !errors.Is(err, ErrAddrInUse) {
		t.Fatalf("a broker whose port was taken: %v, want ErrAddrInUse", err)
	}
	if _, err := Start(nil, log); err == nil {
		t.Fatal("Start with no command: no error")
	}
}
