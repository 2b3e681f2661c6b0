package spool

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// TestSIGKILLKeepsAcknowledged: a process appending as fast as it can is
// killed with SIGKILL; every message whose durable callback ran before the
// kill is read back, in order, by the next Open, and the torn tail (if the
// kill cut a write) is truncated, not an error.
func TestSIGKILLKeepsAcknowledged(t *testing.T) {
	if os.Getenv("SPOOL_TEST_APPENDER") != "" {
		appender(os.Getenv("SPOOL_TEST_APPENDER"))
		return
	}
	dir := tempDir(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestSIGKILLKeepsAcknowledged$")
	cmd.Env = append(os.Environ(), "SPOOL_TEST_APPENDER="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	acked := -1
	for sc.Scan() {
		n, err := strconv.Atoi(sc.Text())
		if err != nil {
			continue
		}
		acked = max(acked, n)
		if acked >= 300 {
			break
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if acked < 300 {
		t.Fatalf("appender acknowledged only up to %d", acked)
	}

	s := open(t, dir, nil)
	defer s.Close()
	n := int(s.Stats().Messages)
	if n < acked+1 {
		t.Fatalf("%d messages after the kill, %d were acknowledged", n, acked+1)
	}
	c := &collector{want: n}
	stop := run(t, s, c)
	waitAll(t, c)
	stop()
	for i, m := range c.got {
		if w := msg("k", i); string(m.Payload) != string(w.Payload) {
			t.Fatalf("message %d: %s, want %s", i, m.Payload, w.Payload)
		}
	}
}

// appender appends msg("k", i) for i = 0, 1, ... from one goroutine (one
// device's order) and prints i once its fsync covers it, until killed.
func appender(dir string) {
	s, err := Open(Options{Dir: dir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	for i := 0; ; i++ {
		i := i
		if _, err := s.Append(msg("k", i), false, func(err error) {
			if err == nil {
				mu.Lock()
				fmt.Fprintln(w, i)
				w.Flush()
				mu.Unlock()
			}
		}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
}
