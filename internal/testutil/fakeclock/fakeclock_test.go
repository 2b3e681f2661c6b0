package fakeclock

import (
	"sync"
	"testing"
	"time"
)

func TestClock(t *testing.T) {
	c := New()
	if !c.Now().Equal(Start) {
		t.Fatalf("New: %v, want %v", c.Now(), Start)
	}
	c.Advance(90 * time.Second)
	if got, want := c.Now(), Start.Add(90*time.Second); !got.Equal(want) {
		t.Fatalf("after Advance: %v, want %v", got, want)
	}
	at := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	c.Set(at)
	if !c.Now().Equal(at) {
		t.Fatalf("after Set: %v, want %v", c.Now(), at)
	}
	if !At(at).Now().Equal(at) {
		t.Fatal("At does not start at its time")
	}
}

func TestClockConcurrent(t *testing.T) {
	c := New()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				c.Advance(time.Millisecond)
				_ = c.Now()
			}
		}()
	}
	wg.Wait()
	if got, want := c.Now().Sub(Start), 800*time.Millisecond; got != want {
		t.Fatalf("moved %v, want %v", got, want)
	}
}
