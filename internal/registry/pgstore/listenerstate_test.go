package pgstore

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/decryptd/decryptd/internal/testutil/pgtest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// TestListenerState: WithListenerState hears the change feed's connection
// come up, go down when its backend is terminated, and come up again.
func TestListenerState(t *testing.T) {
	dsn := pgtest.New(t)
	var mu sync.Mutex
	var states []bool
	a := openT(t, dsn, WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond), WithListenerState(func(up bool) {
		mu.Lock()
		states = append(states, up)
		mu.Unlock()
	}))
	seen := func() []bool {
		mu.Lock()
		defer mu.Unlock()
		return append([]bool(nil), states...)
	}
	ctx := t.Context()
	if _, err := a.Watch(ctx); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the listener up", func() bool { s := seen(); return len(s) == 1 && s[0] })
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "down, then up again", func() bool {
		s := seen()
		return len(s) >= 3 && !s[1] && s[len(s)-1]
	})
}
