package mosquittoproc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// ErrAddrInUse is wrapped by Start's error when the broker exited during
// start-up because a listener's port was taken.
var ErrAddrInUse = errors.New("address already in use")

// StartLimit is how long Start waits for the listeners.
const StartLimit = 15 * time.Second

// Process is a started broker.
type Process struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start runs argv (the broker, or a wrapper such as taskset in front of
// it) with stdout and stderr appended to logFile, and waits up to
// StartLimit until every address in addrs (host:port) accepts a TCP
// connection. Past the limit it kills the process.
func Start(argv []string, logFile string, addrs ...string) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("mosquittoproc: no command")
	}
	logf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	startOffset, _ := logf.Seek(0, 2)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	p := &Process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	deadline := time.Now().Add(StartLimit)
	for _, addr := range addrs {
		for {
			select {
			case <-p.exited:
				if strings.Contains(tailFrom(logFile, startOffset), "Address already in use") {
					return nil, fmt.Errorf("%s: %w", addr, ErrAddrInUse)
				}
				return nil, fmt.Errorf("mosquitto exited during start-up (%s); log %s", cmd.ProcessState, logFile)
			default:
			}
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				p.Stop(syscall.SIGKILL, 5*time.Second)
				return nil, fmt.Errorf("mosquitto not listening on %s after %s: %w", addr, StartLimit, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return p, nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Running reports whether the process is alive; false for a nil Process.
func (p *Process) Running() bool {
	if p == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Stop sends sig and waits up to wait for the exit, then kills the
// process and waits for that. A nil or exited Process is left alone.
func (p *Process) Stop(sig syscall.Signal, wait time.Duration) {
	if !p.Running() {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(wait):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago
// (another process may take it before the broker binds it: Start then
// fails with ErrAddrInUse).
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func tailFrom(path string, offset int64) string {
	data, err := os.ReadFile(path)
	if err != nil || int64(len(data)) < offset {
		return ""
	}
	return string(data[offset:])
}
