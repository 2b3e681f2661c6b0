package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/decryptd/decryptd/internal/health"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
	"github.com/decryptd/decryptd/internal/testutil/pgtest"
)

// TestRegistryRetriedAtStart: PostgreSQL unreachable when the daemon
// starts (nothing listens on its port) is retried with backoff, a warning
// each time, until it answers (a proxy to the real server opens on that
// port after a while); a DSN that does not parse is not retried; a start
// cancelled meanwhile ends with the last error.
func TestRegistryRetriedAtStart(t *testing.T) {
	real := pgtest.New(t)
	u, err := url.Parse(real)
	if err != nil {
		t.Fatal(err)
	}
	target := u.Host
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there: connections are refused
	u.Host = addr
	dsn := u.String()

	var wg sync.WaitGroup
	defer wg.Wait()
	stopProxy := make(chan struct{})
	defer close(stopProxy)
	wg.Add(1)
	go func() { // PostgreSQL "comes up" after 1.2 s
		defer wg.Done()
		select {
		case <-time.After(1200 * time.Millisecond):
		case <-stopProxy:
			return
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Error(err)
			return
		}
		go func() { <-stopProxy; l.Close() }()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go proxy(c, target)
		}
	}()

	core, logs := observer.New(zapcore.InfoLevel)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	open := func(ctx context.Context) (registry.Store, error) { return pgstore.Open(ctx, dsn) }
	start := time.Now()
	h, _ := health.New(health.Options{})
	degradedSeen := make(chan bool, 1)
	go func() { // while it waits, the registry is degraded
		for ctx.Err() == nil {
			if h.Degraded(health.Registry) {
				degradedSeen <- true
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		degradedSeen <- false
	}()
	st, err := retryStart(ctx, zap.New(core), h, health.Registry, "registry postgres", open, pgPermanent)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	st.Close()
	if !<-degradedSeen {
		t.Error("the registry was never degraded while the start waited")
	}
	if h.Degraded(health.Registry) {
		t.Error("the registry stays degraded once reachable")
	}
	if warned := logs.FilterMessage("registry postgres unreachable at start; retrying (not ready meanwhile)").Len(); warned < 2 {
		t.Fatalf("%d retry warnings before PostgreSQL came up (%s), want at least 2 (backoff 0.5s, 1s)", warned, time.Since(start))
	}
	if logs.FilterMessage("registry postgres reachable; starting").Len() != 1 {
		t.Fatal("no line saying the registry became reachable")
	}

	// A DSN that does not parse: at once, no retry.
	calls := 0
	_, err = retryStart(ctx, zap.NewNop(), h, health.Registry, "registry postgres", func(ctx context.Context) (registry.Store, error) {
		calls++
		return pgstore.Open(ctx, "postgres://%zz")
	}, pgPermanent)
	if err == nil || calls != 1 {
		t.Fatalf("unparsable DSN: %d calls, %v", calls, err)
	}

	// Cancelled while waiting: the last error and the cancellation.
	cctx, ccancel := context.WithTimeout(ctx, 700*time.Millisecond)
	defer ccancel()
	boom := errors.New("connection refused")
	_, err = retryStart(cctx, zap.NewNop(), h, health.Registry, "registry postgres", func(context.Context) (int, error) { return 0, boom }, pgPermanent)
	if !errors.Is(err, boom) || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrStartCanceled) {
		t.Fatalf("cancelled start: %v", err)
	}
}

func proxy(c net.Conn, target string) {
	defer c.Close()
	s, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer s.Close()
	go func() { _, _ = io.Copy(s, c); s.Close() }()
	_, _ = io.Copy(c, s)
}

// TestPermanentStartErrors: what ends a start at once instead of waiting.
func TestPermanentStartErrors(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{errors.New("registry postgres: cannot parse the DSN"), true},
		{errors.New("registry postgres: migrate: postgres 28P01: password authentication failed for user \"app\""), true},
		{errors.New("registry postgres: migrate: postgres 28000: no pg_hba.conf entry"), true},
		{errors.New("registry postgres: migrate: postgres 3D000: database \"reg\" does not exist"), true},
		{errors.New("registry postgres: migrate: dial tcp 127.0.0.1:5432: connect: connection refused"), false},
		{errors.New("registry postgres: migrate: postgres 57P03: the database system is starting up"), false},
	} {
		if got := pgPermanent(c.err); got != c.want {
			t.Errorf("pgPermanent(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
