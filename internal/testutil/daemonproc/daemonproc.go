package daemonproc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/decryptd/decryptd/internal/config"
)

// ErrExited is returned (wrapped) when the process exits while a caller
// waits for it to serve or to become ready.
var ErrExited = errors.New("process exited")

// Options configures Start.
type Options struct {
	// Args are the arguments after the binary's name.
	Args []string
	// Env is appended to CleanEnv().
	Env []string
	// Log is the file the process's output is appended to (created 0600).
	Log string
	// WatchStdout also scans stdout for the "serving" line; by default
	// only stderr (where zap logs) is scanned and stdout is copied as is.
	WatchStdout bool
}

// Proc is a started process.
type Proc struct {
	// Cmd is the started command; Cmd.Process.Pid is its pid.
	Cmd *exec.Cmd

	serving chan string
	done    chan struct{}
	err     error // of Wait, once done is closed
}

// Start runs bin as described by opts. The caller must stop the process
// (Kill or Terminate), typically in a test cleanup.
func Start(ctx context.Context, bin string, opts Options) (*Proc, error) {
	logf, err := os.OpenFile(opts.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("daemonproc: open log: %w", err)
	}
	lw := &logWatcher{w: logf, addr: make(chan string, 1)}
	cmd := exec.CommandContext(ctx, bin, opts.Args...)
	cmd.Env = append(CleanEnv(), opts.Env...)
	cmd.Stdout, cmd.Stderr = io.Writer(logf), lw
	if opts.WatchStdout {
		cmd.Stdout = lw
	}
	// Its own process group: a ^C to go test reaches the test, whose
	// cleanup stops the daemon.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("daemonproc: start %s: %w", bin, err)
	}
	p := &Proc{Cmd: cmd, serving: lw.addr, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the error of Wait; meaningful once Done is closed.
func (p *Proc) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Exited says whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// WaitServing returns the HTTP address of the process's first "serving"
// line, or an error if the process exits first (wrapping ErrExited), ctx
// ends, or timeout passes.
func (p *Proc) WaitServing(ctx context.Context, timeout time.Duration) (string, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case addr := <-p.serving:
		return addr, nil
	case <-p.done:
		return "", fmt.Errorf("exited during start-up (%v): %w", p.err, ErrExited)
	case <-timer.C:
		return "", fmt.Errorf("logged no \"serving\" line within %s", seconds(timeout))
	case <-ctx.Done():
		return "", fmt.Errorf("waiting for \"serving\" line: %w", ctx.Err())
	}
}

// Kill sends SIGKILL (no warning, no shutdown) and waits for the exit.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Terminate sends SIGTERM (graceful shutdown) and returns the exit error;
// if the process has not exited within timeout it is killed.
func (p *Proc) Terminate(timeout time.Duration) error {
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.err
	case <-timer.C:
		p.Kill()
		return fmt.Errorf("no exit within %s of SIGTERM; killed", timeout)
	}
}

// WaitReady polls http://addr/readyz every poll until it answers 200, for
// at most limit. exited (may be nil) is checked before each poll; when it
// says true the error wraps ErrExited.
func WaitReady(ctx context.Context, addr string, limit, poll time.Duration, exited func() bool) error {
	deadline := time.Now().Add(limit)
	last := ""
	for time.Now().Before(deadline) {
		if exited != nil && exited() {
			return fmt.Errorf("exited before it was ready: %w", ErrExited)
		}
		resp, err := HTTPGet(ctx, "http://"+addr+"/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for /readyz: %w", ctx.Err())
		case <-time.After(poll):
		}
	}
	return fmt.Errorf("not ready within %s (last /readyz: %s)", seconds(limit), last)
}

// seconds formats d as "30s" rather than "1m0s" when it is whole seconds.
func seconds(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return d.String()
}

// CleanEnv is the test's environment without DECRYPTD_* variables, so that
// only the configuration file configures the daemon.
func CleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, config.EnvPrefix) {
			out = append(out, kv)
		}
	}
	return out
}

// HTTPGet is a GET bounded by 5 s (a hung daemon must not hang the test).
func HTTPGet(ctx context.Context, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("daemonproc: %w", err)
	}
	return (&http.Client{Timeout: 5 * time.Second}).Do(req)
}

// PeakRSS is the process's peak resident set size (VmHWM), in bytes.
func PeakRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("daemonproc: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("daemonproc: VmHWM %q: %w", rest, err)
				}
				return kb * 1024, nil
			}
		}
	}
	return 0, fmt.Errorf("daemonproc: no VmHWM in /proc/%d/status", pid)
}

// logWatcher copies the daemon's log to w and reports the address of its
// first "serving" line (zap JSON: {"msg":"serving","http":"host:port"}).
type logWatcher struct {
	mu   sync.Mutex
	w    io.Writer
	buf  []byte
	addr chan string
	sent bool
}

func (l *logWatcher) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.w.Write(p); err != nil {
		return 0, err
	}
	if l.sent {
		return len(p), nil
	}
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		var line struct {
			Msg  string `json:"msg"`
			HTTP string `json:"http"`
		}
		if json.Unmarshal(l.buf[:i], &line) == nil && line.Msg == "serving" && line.HTTP != "" {
			l.addr <- line.HTTP
			l.sent, l.buf = true, nil
			break
		}
		l.buf = l.buf[i+1:]
	}
	return len(p), nil
}
