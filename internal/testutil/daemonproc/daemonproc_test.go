package daemonproc

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func start(t *testing.T, script string) (*Proc, string) {
	t.Helper()
	log := filepath.Join(t.TempDir(), "d.log")
	p, err := Start(context.Background(), "/bin/sh", Options{Args: []string{"-c", script}, Log: log, Env: []string{"DECRYPTD_X=1", "DP_EXTRA=1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p, log
}

func TestServingAndTerminate(t *testing.T) {
	p, log := start(t, `echo "env=$DP_EXTRA"; echo 'noise' >&2; printf '{"msg":"other"}\n{"msg":"serving",' >&2; echo '"http":"127.0.0.1:9"}' >&2; exec sleep 30`)
	addr, err := p.WaitServing(context.Background(), 10*time.Second)
	if err != nil || addr != "127.0.0.1:9" {
		t.Fatalf("WaitServing = %q, %v", addr, err)
	}
	if p.Exited() {
		t.Fatal("exited early")
	}
	if err := p.Terminate(5 * time.Second); err == nil {
		t.Fatal("Terminate: want the SIGTERM exit error")
	}
	if !p.Exited() || p.Err() == nil {
		t.Fatal("not exited after Terminate")
	}
	data, _ := os.ReadFile(log)
	if !strings.Contains(string(data), "noise") || !strings.Contains(string(data), "env=1") {
		t.Fatalf("log = %q", data)
	}
}

func TestExitDuringStartup(t *testing.T) {
	p, _ := start(t, `exit 3`)
	_, err := p.WaitServing(context.Background(), 10*time.Second)
	if !errors.Is(err, ErrExited) {
		t.Fatalf("WaitServing err = %v, want ErrExited", err)
	}
	if err := WaitReady(context.Background(), "127.0.0.1:1", time.Second, 10*time.Millisecond, p.Exited); !errors.Is(err, ErrExited) {
		t.Fatalf("WaitReady err = %v, want ErrExited", err)
	}
}

func TestNoServingLine(t *testing.T) {
	p, _ := start(t, `exec sleep 30`)
	if _, err := p.WaitServing(context.Background(), 100*time.Millisecond); err == nil || errors.Is(err, ErrExited) {
		t.Fatalf("WaitServing err = %v, want a timeout", err)
	}
	p.Kill()
	if !p.Exited() {
		t.Fatal("not exited after Kill")
	}
}

func TestWaitReady(t *testing.T) {
	ready := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-ready:
		default:
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	err := WaitReady(context.Background(), addr, 100*time.Millisecond, 10*time.Millisecond, nil)
	if err == nil || !strings.Contains(err.Error(), "503 starting") {
		t.Fatalf("WaitReady err = %v, want the last 503", err)
	}
	close(ready)
	if err := WaitReady(context.Background(), addr, time.Second, 10*time.Millisecond, nil); err != nil {
		t.Fatal(err)
	}
}

func TestCleanEnvAndPeakRSS(t *testing.T) {
	t.Setenv("DECRYPTD_SOMETHING", "x")
	for _, kv := range CleanEnv() {
		if strings.HasPrefix(kv, "DECRYPTD_") {
			t.Fatalf("CleanEnv kept %s", kv)
		}
	}
	rss, err := PeakRSS(os.Getpid())
	if err != nil || rss <= 0 {
		t.Fatalf("PeakRSS = %d, %v", rss, err)
	}
	if _, err := PeakRSS(-1); err == nil {
		t.Fatal("PeakRSS(-1): want an error")
	}
}
