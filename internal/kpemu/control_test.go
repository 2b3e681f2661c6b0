package kpemu

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
)

func TestRateLimit(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { return now }
	s := start(t, Options{RateLimit: 2, RateBurst: 3, Now: clock})
	id, err := s.CreateRootKey("root")
	if err != nil {
		t.Fatal(err)
	}
	c := client(t, s, testAPIKey)
	get := func() int {
		var k keysEnvelope
		return raw(t, c, s, http.MethodGet, APIPrefix+"keys/"+id+"/metadata", nil, &k)
	}
	for i := range 3 {
		if st := get(); st != http.StatusOK {
			t.Fatalf("request %d within the burst: %d", i+1, st)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, s.URL+APIPrefix+"keys/"+id+"/metadata", nil)
	req.Header.Set("Authorization", token(t, s))
	req.Header.Set("Bluemix-Instance", s.InstanceID())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("fourth request: %d Retry-After %q, want 429 and 1", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	now = now.Add(500 * time.Millisecond) // one more token at 2/s
	if st := get(); st != http.StatusOK {
		t.Fatalf("after half a second: %d", st)
	}
	if st := get(); st != http.StatusTooManyRequests {
		t.Fatalf("then: %d, want 429", st)
	}
}

func control(t *testing.T, s *Server, method, path, body string) (int, FaultsJSON) {
	t.Helper()
	ts := httptest.NewServer(s.ControlHandler())
	defer ts.Close()
	req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var f FaultsJSON
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&f); err != nil && path != "/calls" {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, f
}

func TestControlHandler(t *testing.T) {
	ctx := context.Background()
	s := start(t, Options{})
	id, err := s.CreateRootKey("root")
	if err != nil {
		t.Fatal(err)
	}
	c := client(t, s, testAPIKey)
	if _, err := c.GetKeyMetadata(ctx, id); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		preset string
		want   FaultsJSON
	}{
		{"hang", FaultsJSON{Outage: "hang", IAMOutage: "hang"}},
		{"503", FaultsJSON{Outage: "none", IAMOutage: "none", FailStatus: 503, FailRate: 1}},
		{"429", FaultsJSON{Outage: "none", IAMOutage: "none", FailStatus: 429, FailRate: 1, RetryAfter: "1"}},
		{"refuse", FaultsJSON{Outage: "none", IAMOutage: "none", Refuse: true}},
		{"none", FaultsJSON{Outage: "none", IAMOutage: "none"}},
	} {
		st, got := control(t, s, http.MethodPost, "/faults/"+tc.preset, "")
		if st != http.StatusOK || got != tc.want {
			t.Fatalf("POST /faults/%s = %d %+v, want %+v", tc.preset, st, got, tc.want)
		}
	}

	if st, _ := control(t, s, http.MethodPost, "/faults/503", ""); st != http.StatusOK {
		t.Fatal(st)
	}
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = c.GetKeyMetadata(cctx, id)
	cancel()
	if err == nil {
		t.Fatal("503 preset: the call succeeded")
	}
	if st, _ := control(t, s, http.MethodPost, "/faults/refuse", ""); st != http.StatusOK {
		t.Fatal(st)
	}
	if _, err := http.Get(s.URL + APIPrefix + "keys"); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("refuse preset: %v, want connection refused", err)
	}
	if st, got := control(t, s, http.MethodDelete, "/faults", ""); st != http.StatusOK || got.Refuse || got.FailRate != 0 {
		t.Fatalf("DELETE /faults = %d %+v", st, got)
	}
	if _, err := c.GetKeyMetadata(ctx, id); err != nil {
		t.Fatalf("after DELETE /faults: %v", err)
	}

	st, got := control(t, s, http.MethodPut, "/faults", `{"latency":"20ms","fail_next":1,"fail_status":500,"iam_status":503}`)
	if st != http.StatusOK || got.Latency != "20ms" || got.FailNext != 1 || got.FailStatus != 500 || got.IAMStatus != 503 {
		t.Fatalf("PUT /faults = %d %+v", st, got)
	}
	if f := s.Faults(); f.Latency != 20*time.Millisecond || f.FailNext != 1 || f.IAMStatus != 503 {
		t.Fatalf("faults in force: %+v", f)
	}
	for _, bad := range []string{`{"outage":"melt"}`, `{"latency":"soon"}`, `{"fail_status":200}`, `{"fail_rate":2}`, `{"unknown":1}`, `not json`} {
		if st, _ := control(t, s, http.MethodPut, "/faults", bad); st != http.StatusBadRequest {
			t.Fatalf("PUT /faults %s = %d, want 400", bad, st)
		}
	}
	if st, _ := control(t, s, http.MethodPost, "/faults/melt", ""); st != http.StatusNotFound {
		t.Fatalf("unknown preset = %d, want 404", st)
	}
	if st, _ := control(t, s, http.MethodGet, "/calls", ""); st != http.StatusOK {
		t.Fatalf("GET /calls = %d", st)
	}
}

func TestTLS(t *testing.T) {
	ctx := context.Background()
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	s, err := ListenTLS(ctx, "127.0.0.1:0", Options{APIKeys: []string{testAPIKey}}, ca.ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if !strings.HasPrefix(s.URL, "https://") {
		t.Fatalf("URL %s, want https", s.URL)
	}
	plain, err := Serve(ctx, s.Emulator, "127.0.0.1:0", nil) // the token endpoint, for the client's IAM fetch
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Close() })
	id, err := s.CreateRootKey("root")
	if err != nil {
		t.Fatal(err)
	}
	newClient := func(pool bool) *kp.Client {
		tr := &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}}
		if pool {
			tr.TLSClientConfig.RootCAs = ca.Pool()
		}
		t.Cleanup(tr.CloseIdleConnections)
		c, err := kp.NewWithLogger(kp.ClientConfig{BaseURL: s.URL, TokenURL: plain.TokenURL, APIKey: testAPIKey, InstanceID: s.InstanceID(), Timeout: 10}, tr, kp.NewLogger(func(...any) {}))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := newClient(true)
	if _, err := c.GetKeyMetadata(ctx, id); err != nil {
		t.Fatalf("trusting the CA: %v", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := newClient(false).GetKeyMetadata(cctx, id); err == nil {
		t.Fatal("a client that does not trust the CA got through")
	}

	// Faults behave over TLS as over plain HTTP: refuse, then reset.
	if err := s.SetRefuse(true); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRefuse(false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetKeyMetadata(ctx, id); err != nil {
		t.Fatalf("after refuse and reopen: %v", err)
	}
	s.SetFaults(Faults{Outage: OutageReset})
	rctx, rcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer rcancel()
	_, err = c.GetKeyMetadata(rctx, id)
	var ue *kp.URLError
	if !errors.As(err, &ue) {
		t.Fatalf("reset over TLS: %v (%T), want a transport error", err, err)
	}
}

// FuzzFaultsJSON: whatever the control endpoint is sent, Faults either
// refuses it or yields faults within their documented ranges.
func FuzzFaultsJSON(f *testing.F) {
	f.Add(`{"outage":"hang","latency":"2s","fail_rate":0.5,"fail_status":503}`)
	f.Add(`{"iam_outage":"reset","iam_fail_next":3}`)
	f.Add(`{"latency":"-1s"}`)
	f.Fuzz(func(t *testing.T, body string) {
		var j FaultsJSON
		if json.Unmarshal([]byte(body), &j) != nil {
			return
		}
		fs, err := j.Faults()
		if err != nil {
			return
		}
		if fs.Latency < 0 || fs.FailRate < 0 || fs.FailRate > 1 || fs.FailNext < 0 || fs.IAMFailNext < 0 ||
			(fs.FailStatus != 0 && (fs.FailStatus < 400 || fs.FailStatus > 599)) || fs.Outage > OutageReset || fs.IAMOutage > OutageReset {
			t.Fatalf("accepted %s as %+v", body, fs)
		}
	})
}
