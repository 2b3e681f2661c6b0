package consumer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

const brokerBlame = "broker sent more unacknowledged messages than MaxInFlight"

// TestOverflowBlamesBrokerOnlyWhenItIsAtFault: with the broker's window
// at MaxInFlight and a reconnect while a stalled processor holds every
// slot, the broker's redelivery on the new connection overflows, and the
// warning names the earlier connection's messages, not
// max_inflight_messages; with a wider window the broker is blamed.
func TestOverflowBlamesBrokerOnlyWhenItIsAtFault(t *testing.T) {
	for _, tc := range []struct {
		name   string
		window int
		blame  bool
	}{
		{"broker window at MaxInFlight", 10, false},
		{"broker window above MaxInFlight", 1000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, mosquittotest.Options{MaxInflight: tc.window})
			obs, logs := observer.New(zapcore.InfoLevel)
			release := make(chan struct{})
			p := &fakeProc{fn: func(ctx context.Context, m intake.Message) error {
				select {
				case <-release:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}}
			o := h.options("blame")
			o.Logger = zap.New(obs)
			o.MaxInFlight = 10
			o.Workers = 64
			c, err := New(o, p)
			if err != nil {
				t.Fatal(err)
			}
			c.overflowWait = 100 * time.Millisecond
			h.start(c)
			const n = 30
			for i := range n {
				h.publish(topic(i), fmt.Sprintf("m%02d", i))
			}
			wait.For(t, "10 messages held", func() bool { return c.slots.Held() == 10 })
			if tc.blame {
				wait.For(t, "the warning blaming the broker", func() bool {
					return logs.FilterMessageSnippet(brokerBlame).Len() > 0
				})
			} else {
				// The case: the connection drops while the slots
				// are held; the broker redelivers its window on the new
				// connection, into slots the old one's messages still
				// hold. The broker is not at fault.
				dropConnection(c)
				wait.For(t, "the warning naming the earlier connection", func() bool {
					return logs.FilterMessageSnippet("held, by messages of an earlier connection").Len() > 0
				})
			}
			close(release)
			wait.For(t, "all messages processed", func() bool { return len(p.count()) == n })
			if got := logs.FilterMessageSnippet(brokerBlame).Len() > 0; got != tc.blame {
				t.Fatalf("broker blamed: %v, want %v; log: %v", got, tc.blame, logs.All())
			}
		})
	}
}
