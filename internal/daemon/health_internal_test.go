package daemon

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/health"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// TestReadinessWhileDegraded: what /readyz answers for each degraded
// state (the decision documented in health.go): a KMS or registry outage
// leaves the replica ready, every record sink down does not, the
// dead-letter sink alone does not count.
func TestReadinessWhileDegraded(t *testing.T) {
	h, err := health.New(health.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{Sinks: []config.Sink{{Name: "records"}, {Name: "archive"}}}
	d := &Daemon{o: Options{Config: cfg}, health: h}
	if got := d.notReadyReason(); got != "starting" {
		t.Fatalf("before built: %q", got)
	}
	h.Set(health.Registry, "", true, "unreachable at start")
	if got := d.notReadyReason(); got != "starting: waiting for registry" {
		t.Fatalf("waiting: %q", got)
	}
	h.Set(health.Registry, "", false, "")
	d.built.Store(true)

	for _, c := range []struct {
		name  string
		set   func()
		ready bool
	}{
		{"healthy", func() {}, true},
		{"kms unreachable", func() { h.Set(health.KMS, "", true, "unreachable") }, true},
		{"registry unreachable", func() { h.Set(health.Registry, "lookup", true, "unreachable") }, true},
		{"dead-letter sink down", func() { h.Set(health.Sink, DeadLetterSinkName, true, "down") }, true},
		{"one of two sinks down", func() { h.Set(health.Sink, "records", true, "down") }, true},
		{"every sink down", func() { h.Set(health.Sink, "archive", true, "down") }, false},
		{"a sink back", func() { h.Set(health.Sink, "records", false, "") }, true},
	} {
		c.set()
		if got := d.notReadyReason(); (got == "") != c.ready {
			t.Errorf("%s: not-ready reason %q, want ready %v", c.name, got, c.ready)
		}
	}
	d.stopping.Store(true)
	if got := d.notReadyReason(); got != "shutting down" {
		t.Errorf("stopping: %q", got)
	}
	if deg, _ := d.brokerProbe(); deg {
		t.Error("the broker probe blames the broker while stopping")
	}
}

type fakeKP struct {
	kms.Provider
	err error
}

func (f fakeKP) NewestRootVersion(context.Context) (string, string, time.Time, error) {
	return "root", "v1", time.Time{}, f.err
}

type fakeStore struct {
	registry.Store
	err error
}

func (f fakeStore) Get(context.Context, string, string) (registry.Entry, error) {
	return registry.Entry{}, f.err
}

// TestRecheckClears: a degraded KMS or registry with no traffic is asked
// again; an answer clears the cause, a failure leaves it.
func TestRecheckClears(t *testing.T) {
	h, err := health.New(health.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{KMS: config.KMS{Provider: config.ProviderKeyProtect}}
	down := fmt.Errorf("keyprotect describe: %w", kms.ErrTransient)
	d := &Daemon{o: Options{Config: cfg}, health: h, parts: &parts{
		kms: fakeKP{err: down}, store: fakeStore{err: errors.New("registry postgres: connect: refused")},
	}}
	h.Set(health.KMS, "", true, "unreachable")
	h.Set(health.Registry, "lookup", true, "unreachable")
	d.recheckOnce(t.Context())
	if !h.Degraded(health.KMS) || !h.Degraded(health.Registry) {
		t.Fatal("cleared while still failing")
	}
	d.parts.kms = fakeKP{}
	d.parts.store = fakeStore{err: fmt.Errorf("x: %w", registry.ErrNotFound)}
	d.recheckOnce(t.Context())
	if h.Degraded(health.KMS) || h.Degraded(health.Registry) {
		t.Fatalf("still degraded once answering: %+v", h.Report())
	}
}

// TestWhyUnfinished: a shutdown error names what was degraded.
func TestWhyUnfinished(t *testing.T) {
	h, _ := health.New(health.Options{})
	d := &Daemon{health: h}
	base := errors.New("consumer: 3 messages unfinished at the shutdown deadline")
	if got := d.whyUnfinished(base); got != base {
		t.Fatalf("healthy: %v", got)
	}
	h.Set(health.KMS, "", true, "unreachable")
	got := d.whyUnfinished(base)
	if !errors.Is(got, base) || got.Error() != base.Error()+" (degraded meanwhile: kms unreachable)" {
		t.Fatalf("got %v", got)
	}
}
