package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
)

// Watch streams changes made by any writer of the database. It starts the
// listener on first use and returns once LISTEN is in place (or fails after
// the listen wait), so every change committed after Watch returns reaches
// the channel, or a Reset covering it does.
func (s *Store) Watch(ctx context.Context) (<-chan registry.Change, error) {
	if s.closed.Load() {
		return nil, registry.ErrClosed
	}
	sctx, unsubscribe := context.WithCancel(ctx)
	ch, err := s.hub.Subscribe(sctx)
	if err != nil {
		unsubscribe()
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			unsubscribe()
		}
	}()
	// The subscription ends with ctx; sctx only lets a failed Watch end it early.
	context.AfterFunc(ctx, unsubscribe)
	s.mu.Lock()
	if !s.listening {
		s.listening = true
		s.wg.Add(1)
		go s.listen()
	}
	ready := s.ready
	s.mu.Unlock()
	t := time.NewTimer(s.opt.listenWait)
	defer t.Stop()
	select {
	case <-ready:
		ok = true
		return ch, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.lctx.Done():
		return nil, registry.ErrClosed
	case <-t.C:
		s.mu.Lock()
		err := s.listenErr
		s.mu.Unlock()
		return nil, fmt.Errorf("registry postgres: not listening after %v: %w", s.opt.listenWait, err)
	}
}

// listen keeps one LISTEN connection up until Close, reconnecting with
// exponential backoff, and emits a Reset after each reconnection.
func (s *Store) listen() {
	defer s.wg.Done()
	first := true
	backoff := s.opt.minBackoff
	for {
		conn, err := s.connectListen()
		if err != nil {
			if s.lctx.Err() != nil {
				return
			}
			s.mu.Lock()
			logIt := s.listenErr == nil
			s.listenErr = err
			s.mu.Unlock()
			if logIt {
				s.opt.log.Warn("registry postgres: listener cannot connect, retrying", zap.Error(err))
				s.listenerState(false)
			}
			t := time.NewTimer(backoff)
			select {
			case <-s.lctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(backoff*2, s.opt.maxBackoff)
			continue
		}
		backoff = s.opt.minBackoff
		s.mu.Lock()
		s.listenErr = nil
		s.mu.Unlock()
		s.listenerState(true)
		if first {
			first = false
			close(s.ready)
		} else {
			// Whatever was notified while we were away is lost.
			s.opt.log.Info("registry postgres: listener reconnected")
			s.hub.Publish(registry.Change{Kind: registry.ChangeReset})
		}
		err = s.receive(conn)
		_ = conn.Close(context.Background())
		if s.lctx.Err() != nil {
			return
		}
		s.opt.log.Warn("registry postgres: listener connection lost, reconnecting", zap.Error(err))
		s.listenerState(false)
	}
}

func (s *Store) listenerState(up bool) {
	if s.opt.listenerUp != nil {
		s.opt.listenerUp(up)
	}
}

func (s *Store) connectListen() (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(s.lctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, s.connCfg)
	if err != nil {
		return nil, dbErr("connect", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{Channel}.Sanitize()); err != nil {
		_ = conn.Close(context.Background())
		return nil, dbErr("listen", err)
	}
	return conn, nil
}

// receive publishes notifications until the connection fails or Close.
func (s *Store) receive(conn *pgx.Conn) error {
	for {
		ctx, cancel := context.WithTimeout(s.lctx, s.opt.keepalive)
		n, err := conn.WaitForNotification(ctx)
		cancel()
		switch {
		case err == nil:
			s.hub.Publish(parseNotification(n.Payload)...)
		case s.lctx.Err() != nil:
			return s.lctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			// Idle: make sure the connection is still there, since a dead
			// peer without a reset would otherwise leave us deaf forever.
			pctx, pcancel := context.WithTimeout(s.lctx, 5*time.Second)
			err := conn.Ping(pctx)
			pcancel()
			if err != nil {
				return dbErr("ping", err)
			}
		default:
			return dbErr("wait", err)
		}
	}
}

type payload struct {
	Op      string `json:"op"`
	KeyID   string `json:"key_id"`
	Version string `json:"key_version"`
	State   string `json:"state"`
}

// parsePayload turns a notification into a Change; anything it cannot read
// (a delete, a payload from a future version) becomes a Reset, which is
// always a correct, if coarse, answer.
func parsePayload(p string) registry.Change {
	var pl payload
	if err := json.Unmarshal([]byte(p), &pl); err != nil {
		return registry.Change{Kind: registry.ChangeReset}
	}
	st := dek.State(pl.State)
	if !registry.ValidKeyID(pl.KeyID) || !registry.ValidKeyVersion(pl.Version) || !st.Valid() {
		return registry.Change{Kind: registry.ChangeReset}
	}
	c := registry.Change{KeyID: pl.KeyID, Version: pl.Version, State: st}
	switch pl.Op {
	case "insert":
		c.Kind = registry.ChangeCreated
	case "update":
		c.Kind = registry.ChangeUpdated
	default:
		return registry.Change{Kind: registry.ChangeReset}
	}
	return c
}

// Close stops the listener, closes every Watch channel and the pool. Safe
// to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.lcancel()
		s.wg.Wait()
		s.hub.Close()
		s.pool.Close()
	})
	return nil
}
