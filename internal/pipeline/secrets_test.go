package pipeline_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// TestHTTPSinkDownLogsNoToken: an HTTP sink whose URL carries a token in
// its query (check-config refuses it; a library caller may not) goes
// down: the "sink down" warning names the failure with the token
// redacted, and SinkState hears of it.
func TestHTTPSinkDownLogsNoToken(t *testing.T) {
	const token = "tok-9f8e7d6c5b4a"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: every POST fails to connect
	h, err := sink.NewHTTP(sink.HTTPOptions{
		Name: "web", URL: "http://" + addr + "/v1?token=" + token, AllowPlainHTTP: true,
		MaxAttempts: 1, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	obs, logs := observer.New(zapcore.DebugLevel)
	var mu sync.Mutex
	var states []string
	e := newEnv(t, func(o *pipeline.Options) {
		o.Sinks = []sink.Sink{h}
		o.Logger = zap.New(obs)
		o.SinkState = func(name string, up bool, err error) {
			mu.Lock()
			defer mu.Unlock()
			states = append(states, fmt.Sprintf("%s up=%v", name, up))
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- handle(e.p, ctx, msg("ok:r1")) }()
	wait.For(t, "the sink-down warning", func() bool {
		return logs.FilterMessageSnippet("sink down").Len() > 0
	})
	cancel()
	<-done

	mu.Lock()
	if len(states) == 0 || states[0] != "web up=false" {
		t.Errorf("SinkState calls %v, want web up=false first", states)
	}
	mu.Unlock()
	sawURL := false
	for _, en := range logs.All() {
		text := en.Message
		for k, v := range en.ContextMap() {
			text += fmt.Sprintf(" %s=%v", k, v)
		}
		if strings.Contains(text, token) {
			t.Errorf("token in log: %s", text)
		}
		sawURL = sawURL || strings.Contains(text, "token=REDACTED")
	}
	if !sawURL {
		t.Errorf("the warning should name the redacted URL: %v", logs.All())
	}
}
