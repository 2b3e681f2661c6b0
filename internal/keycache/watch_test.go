package keycache

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

func TestRevocationEventEvictsAtOnce(t *testing.T) {
	for _, state := range []dek.State{dek.StateRevoked, dek.StateShredded} {
		t.Run(string(state), func(t *testing.T) {
			e := newEnv(t, nil)
			e.addKey("group/a", "v1", dev)
			e.addKey("group/b", "v1", dev)
			for _, k := range []string{"group/a", "group/b"} {
				if _, err := resolve(e, k, "v1", dev); err != nil {
					t.Fatal(err)
				}
			}
			// Even with the KMS and the registry down, the event alone evicts.
			e.kms.setErr(kms.ErrTransient)
			e.reg.setErr(errors.New("registry down"))
			e.c.apply(registry.Change{Kind: registry.ChangeUpdated, KeyID: "group/a", Version: "v1", State: state})
			if _, err := resolve(e, "group/a", "v1", dev); !errors.Is(err, dek.ErrRevoked) {
				t.Fatalf("after %s event: err = %v, want ErrRevoked", state, err)
			}
			if _, err := resolve(e, "group/b", "v1", dev); err != nil {
				t.Errorf("other key: %v", err)
			}
			// Remembered: still revoked past the lifetime, without asking.
			e.clock.Advance(DefaultTTL / 2)
			gets := e.reg.gets.Load()
			if _, err := resolve(e, "group/a", "v1", dev); !errors.Is(err, dek.ErrRevoked) {
				t.Fatalf("later: err = %v, want ErrRevoked", err)
			}
			if e.reg.gets.Load() != gets {
				t.Error("cached revocation asked the registry")
			}
		})
	}
}

func TestRevocationThroughRun(t *testing.T) {
	e := newEnv(t, nil)
	e.startRun(t)
	e.addKey("group/a", "v1", dev)
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatal(err)
	}
	ref := dek.Ref{KeyID: "group/a", Version: "v1"}
	e.reg.update(ref, func(en *registry.Entry) { en.State = dek.StateRevoked })
	e.reg.emit(registry.Change{Kind: registry.ChangeUpdated, KeyID: "group/a", Version: "v1", State: dek.StateRevoked})
	wait.For(t, "the revocation", func() bool {
		_, err := resolve(e, "group/a", "v1", dev)
		return errors.Is(err, dek.ErrRevoked)
	})

	// Undoing a mistaken revoke takes effect with its event.
	e.reg.update(ref, func(en *registry.Entry) { en.State = dek.StateActive })
	e.reg.emit(registry.Change{Kind: registry.ChangeUpdated, KeyID: "group/a", Version: "v1", State: dek.StateActive})
	wait.For(t, "the un-revocation", func() bool {
		_, err := resolve(e, "group/a", "v1", dev)
		return err == nil
	})
}

func TestUpdateWithoutStateRechecks(t *testing.T) {
	e := newEnv(t, nil)
	e.startRun(t)
	e.addKey("group/a", "v1", dev)
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatal(err)
	}
	e.reg.update(dek.Ref{KeyID: "group/a", Version: "v1"}, func(en *registry.Entry) { en.State = dek.StateShredded })
	// An event that does not say the state: the registry is asked.
	e.reg.emit(registry.Change{Kind: registry.ChangeUpdated, KeyID: "group/a", Version: "v1"})
	wait.For(t, "the re-read to find the shred", func() bool {
		_, err := resolve(e, "group/a", "v1", dev)
		return errors.Is(err, dek.ErrRevoked)
	})
}

// A load whose registry read happened before a revocation must not publish
// the key after the revocation event.
func TestLoadRacingRevocation(t *testing.T) {
	e := newEnv(t, nil)
	e.addKey("group/a", "v1", dev)
	ref := dek.Ref{KeyID: "group/a", Version: "v1"}
	release := make(chan struct{})
	e.kms.setHook(func(context.Context) error { <-release; return nil })

	errc := make(chan error, 1)
	go func() {
		_, err := resolve(e, "group/a", "v1", dev)
		errc <- err
	}()
	wait.For(t, "the unwrap to start", func() bool { return e.kms.calls.Load() == 1 })
	// The registry read is done; now the key is revoked.
	e.reg.update(ref, func(en *registry.Entry) { en.State = dek.StateRevoked })
	e.c.apply(registry.Change{Kind: registry.ChangeUpdated, KeyID: "group/a", Version: "v1", State: dek.StateRevoked})
	close(release)
	if err := <-errc; !errors.Is(err, dek.ErrRevoked) {
		t.Fatalf("racing lookup: err = %v, want ErrRevoked", err)
	}
	if _, err := resolve(e, "group/a", "v1", dev); !errors.Is(err, dek.ErrRevoked) {
		t.Fatalf("next lookup: err = %v, want ErrRevoked", err)
	}
}

// A refresh racing a revocation must not bring the key back either.
func TestRefreshRacingRevocation(t *testing.T) {
	e := newEnv(t, nil)
	e.addKey("group/a", "v1", dev)
	ref := dek.Ref{KeyID: "group/a", Version: "v1"}
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	e.kms.setHook(func(context.Context) error { <-release; return nil })
	e.clock.Advance(DefaultTTL - time.Minute)
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the refresh to start", func() bool { return e.kms.calls.Load() == 2 })
	e.reg.update(ref, func(en *registry.Entry) { en.State = dek.StateRevoked })
	e.c.apply(registry.Change{Kind: registry.ChangeUpdated, KeyID: "group/a", Version: "v1", State: dek.StateRevoked})
	close(release)
	wait.For(t, "the refresh to end", func() bool { return inFlight(e.c) == 0 })
	if _, err := resolve(e, "group/a", "v1", dev); !errors.Is(err, dek.ErrRevoked) {
		t.Fatalf("after refresh: err = %v, want ErrRevoked", err)
	}
}

func TestResetRevalidatesEveryEntry(t *testing.T) {
	e := newEnv(t, nil)
	e.startRun(t)
	const n = 200
	for i := range n {
		e.addKey(fmt.Sprintf("group/%d", i), "v1", dev)
		if _, err := resolve(e, fmt.Sprintf("group/%d", i), "v1", dev); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := resolve(e, "group/missing", "v1", dev); !errors.Is(err, dek.ErrUnknownKey) {
		t.Fatal(err)
	}
	// Changes the feed lost: key 7 revoked, key 8 gone, key 9 lost dev-1,
	// key "missing" created.
	e.reg.update(dek.Ref{KeyID: "group/7", Version: "v1"}, func(en *registry.Entry) { en.State = dek.StateRevoked })
	e.reg.mu.Lock()
	delete(e.reg.entries, dek.Ref{KeyID: "group/8", Version: "v1"})
	e.reg.mu.Unlock()
	e.reg.update(dek.Ref{KeyID: "group/9", Version: "v1"}, func(en *registry.Entry) { en.Devices = []string{"dev-2"} })
	e.addKey("group/missing", "v1", dev)
	gets := e.reg.gets.Load()

	e.reg.emit(registry.Change{Kind: registry.ChangeReset})
	wait.For(t, "every entry re-read", func() bool { return e.reg.gets.Load() >= gets+n })
	wait.For(t, "the revalidation to apply", func() bool {
		_, err7 := resolve(e, "group/7", "v1", dev)
		_, err8 := resolve(e, "group/8", "v1", dev)
		_, err9 := resolve(e, "group/9", "v1", dev)
		return errors.Is(err7, dek.ErrRevoked) && errors.Is(err8, dek.ErrUnknownKey) && errors.Is(err9, dek.ErrUnknownKey)
	})
	if _, err := resolve(e, "group/missing", "v1", dev); err != nil {
		t.Errorf("key created during the gap: %v", err)
	}
	calls := e.kms.calls.Load()
	for i := 10; i < n; i++ {
		if _, err := resolve(e, fmt.Sprintf("group/%d", i), "v1", dev); err != nil {
			t.Fatalf("key %d after reset: %v", i, err)
		}
	}
	if e.kms.calls.Load() != calls {
		t.Error("unchanged keys were unwrapped again after a reset")
	}
}

func TestRunResubscribesAndRechecks(t *testing.T) {
	e := newEnv(t, nil)
	e.startRun(t)
	e.addKey("group/a", "v1", dev)
	if _, err := resolve(e, "group/a", "v1", dev); err != nil {
		t.Fatal(err)
	}
	// The key is revoked while the feed is down: no event will come.
	e.reg.update(dek.Ref{KeyID: "group/a", Version: "v1"}, func(en *registry.Entry) { en.State = dek.StateRevoked })
	e.reg.closeFeeds()
	wait.For(t, "a new subscription", func() bool { return e.reg.watches.Load() == 2 })
	wait.For(t, "the missed revocation", func() bool {
		_, err := resolve(e, "group/a", "v1", dev)
		return errors.Is(err, dek.ErrRevoked)
	})
}

func TestRunNeedsAFeed(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Changes = nil })
	if err := e.c.Run(context.Background()); err == nil {
		t.Fatal("Run without a change feed: no error")
	}
}

// failingFeed refuses the first subscriptions.
type failingFeed struct {
	*fakeRegistry
	fails int
}

func (f *failingFeed) Watch(ctx context.Context) (<-chan registry.Change, error) {
	if f.fails > 0 {
		f.fails--
		return nil, errors.New("listen: connection refused")
	}
	return f.fakeRegistry.Watch(ctx)
}

func TestRunRetriesWatch(t *testing.T) {
	reg := newFakeRegistry()
	feed := &failingFeed{fakeRegistry: reg, fails: 2}
	e := newEnv(t, func(o *Options) { o.Registry = reg; o.Changes = feed })
	e.reg = reg
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.c.Run(ctx) }()
	wait.For(t, "the third attempt to subscribe", func() bool { return reg.watches.Load() == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
