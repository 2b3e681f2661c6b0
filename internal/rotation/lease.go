package rotation

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Lease is the controller's leadership: at most one holder at a time.
type Lease interface {
	// TryAcquire takes the lease if free. lost is closed when the lease is
	// lost (connection gone) or released.
	TryAcquire(ctx context.Context) (lost <-chan struct{}, ok bool, err error)
	// Release gives the lease up (no-op when not held).
	Release()
}

// LeaseKey is the advisory lock key of the rotation lease ("rotatio" +
// "n" in ASCII, distinct from the registry's migration lock).
const LeaseKey int64 = 0x726f746174696f6e

// PGLease is a PostgreSQL advisory lock held on a dedicated connection.
// The connection is pinged every second; a failed ping closes it (which
// releases the lock server-side) and closes lost.
type PGLease struct {
	DSN string
	Key int64 // default LeaseKey

	mu   sync.Mutex
	conn *pgx.Conn
	stop chan struct{}
	lost chan struct{}
	done chan struct{}
}

// TryAcquire implements Lease.
func (l *PGLease) TryAcquire(ctx context.Context) (<-chan struct{}, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		return l.lost, true, nil
	}
	key := l.Key
	if key == 0 {
		key = LeaseKey
	}
	cfg, err := pgx.ParseConfig(l.DSN)
	if err != nil {
		return nil, false, errors.New("rotation lease: cannot parse the DSN")
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, false, fmt.Errorf("rotation lease: connect: %w", err)
	}
	var ok bool
	if err := conn.QueryRow(cctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&ok); err != nil {
		conn.Close(context.Background())
		return nil, false, fmt.Errorf("rotation lease: lock: %w", err)
	}
	if !ok {
		conn.Close(context.Background())
		return nil, false, nil
	}
	l.conn, l.stop, l.lost, l.done = conn, make(chan struct{}), make(chan struct{}), make(chan struct{})
	go l.keep(conn, l.stop, l.lost, l.done)
	return l.lost, true, nil
}

func (l *PGLease) keep(conn *pgx.Conn, stop, lost, done chan struct{}) {
	defer close(done)
	defer close(lost)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, _ = conn.Exec(ctx, "SELECT pg_advisory_unlock_all()")
			conn.Close(ctx)
			cancel()
			return
		case <-tick.C:
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := conn.Ping(ctx)
			cancel()
			if err != nil {
				conn.Close(context.Background())
				l.mu.Lock()
				if l.conn == conn {
					l.conn = nil
				}
				l.mu.Unlock()
				return
			}
		}
	}
}

// Release implements Lease.
func (l *PGLease) Release() {
	l.mu.Lock()
	conn, stop, done := l.conn, l.stop, l.done
	l.conn = nil
	l.mu.Unlock()
	if conn != nil {
		close(stop)
		<-done
	}
}

// FileLease is an exclusive flock on a lease file (single host, file
// registry).
type FileLease struct {
	Path string

	mu   sync.Mutex
	f    *os.File
	lost chan struct{}
}

// TryAcquire implements Lease.
func (l *FileLease) TryAcquire(ctx context.Context) (<-chan struct{}, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		return l.lost, true, nil
	}
	f, err := os.OpenFile(l.Path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("rotation lease: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("rotation lease: flock %s: %w", l.Path, err)
	}
	l.f, l.lost = f, make(chan struct{})
	return l.lost, true, nil
}

// Release implements Lease.
func (l *FileLease) Release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
		l.f.Close()
		l.f = nil
		close(l.lost)
	}
}
