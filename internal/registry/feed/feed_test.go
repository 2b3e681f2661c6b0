package feed

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/registry"
)

func recv(t *testing.T, ch <-chan registry.Change) (registry.Change, bool) {
	t.Helper()
	select {
	case c, ok := <-ch:
		return c, ok
	case <-time.After(5 * time.Second):
		t.Fatal("no change within 5s")
		return registry.Change{}, false
	}
}

func TestHub(t *testing.T) {
	t.Run("delivers in order", func(t *testing.T) {
		h := New(0)
		defer h.Close()
		ch, err := h.Subscribe(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			h.Publish(registry.Change{Kind: registry.ChangeCreated, KeyID: "k", Version: fmt.Sprint(i)})
		}
		for i := range 10 {
			c, _ := recv(t, ch)
			if c.Version != fmt.Sprint(i) {
				t.Fatalf("change %d: got version %q", i, c.Version)
			}
		}
	})
	t.Run("overflow collapses into reset", func(t *testing.T) {
		h := New(4)
		defer h.Close()
		ch, _ := h.Subscribe(t.Context())
		// Nobody reads while 20 changes are published; the queue must not
		// grow past its bound nor block Publish.
		for i := range 20 {
			h.Publish(registry.Change{Kind: registry.ChangeUpdated, KeyID: "k", Version: fmt.Sprint(i)})
		}
		seenReset := false
		deadline := time.After(5 * time.Second)
		for !seenReset {
			select {
			case c := <-ch:
				seenReset = c.Kind == registry.ChangeReset
			case <-deadline:
				t.Fatal("no reset after overflow")
			}
		}
	})
	t.Run("ctx end closes channel", func(t *testing.T) {
		h := New(0)
		defer h.Close()
		ctx, cancel := context.WithCancel(t.Context())
		ch, _ := h.Subscribe(ctx)
		cancel()
		if _, ok := recv(t, ch); ok {
			t.Fatal("channel not closed")
		}
	})
	t.Run("close closes channels and refuses subscribers", func(t *testing.T) {
		h := New(0)
		ch, _ := h.Subscribe(t.Context())
		h.Publish(registry.Change{Kind: registry.ChangeReset})
		h.Close()
		h.Close()
		for {
			if _, ok := recv(t, ch); !ok {
				break
			}
		}
		if _, err := h.Subscribe(t.Context()); err != registry.ErrClosed {
			t.Fatalf("subscribe after close: %v", err)
		}
	})
}
