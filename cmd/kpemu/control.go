package main

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/decryptd/decryptd/internal/kpemu"
)

// serveControl serves srv's runtime fault control on addr until ctx ends
// and returns its base URL.
func serveControl(ctx context.Context, addr string, srv *kpemu.Server) (string, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	hs := &http.Server{Handler: srv.ControlHandler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go hs.Serve(ln)
	context.AfterFunc(ctx, func() { hs.Close() })
	return "http://" + ln.Addr().String(), nil
}
