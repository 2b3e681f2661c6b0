package fsutil

import (
	"context"
	"errors"
	"os"
	"syscall"
	"time"
)

// Lock kinds for Lock.
const (
	Exclusive = syscall.LOCK_EX
	Shared    = syscall.LOCK_SH
)

const (
	firstWait = 200 * time.Microsecond
	maxWait   = 10 * time.Millisecond
)

// Lock takes a flock of kind how (Exclusive or Shared) on f, waiting in
// short sleeps while another holder conflicts, until ctx ends.
func Lock(ctx context.Context, f *os.File, how int) error {
	delay := firstWait
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case !errors.Is(err, syscall.EWOULDBLOCK):
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(delay*2, maxWait)
	}
}

// Unlock releases f's flock. Closing f releases it too.
func Unlock(f *os.File) { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }
