package wait

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

func TestWithin(t *testing.T) {
	var n atomic.Int32
	Within(t, time.Second, "three calls", func() bool { return n.Add(1) >= 3 })
	if n.Load() != 3 {
		t.Fatalf("cond called %d times", n.Load())
	}
	ft := &fakeTB{TB: t}
	func() {
		defer func() { _ = recover() }()
		Within(ft, 10*time.Millisecond, "never", func() bool { return false })
	}()
	if ft.failed != "timed out after 10ms waiting for never" {
		t.Fatalf("failure %q", ft.failed)
	}
}

type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = sprintf(format, args...)
	panic("fatal")
}

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

func TestDetail(t *testing.T) {
	var n atomic.Int32
	Detail(t, time.Second, "three calls", func() (bool, string) { return n.Add(1) >= 3, "fewer" })
	if n.Load() != 3 {
		t.Fatalf("cond called %d times", n.Load())
	}
	ft := &fakeTB{TB: t}
	func() {
		defer func() { _ = recover() }()
		Detail(ft, 10*time.Millisecond, "never", func() (bool, string) { return false, "2 of 3" })
	}()
	if ft.failed != "timed out after 10ms waiting for never: 2 of 3" {
		t.Fatalf("failure %q", ft.failed)
	}
}
