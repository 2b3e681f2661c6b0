package kpemu

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/IBM/keyprotect-go-client/iam"
)

const testAPIKey = "test-api-key-3f9c"

func start(t *testing.T, opts Options) *Server {
	t.Helper()
	if opts.APIKeys == nil {
		opts.APIKeys = []string{testAPIKey}
	}
	s, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// client is the real keyprotect-go-client with a keep-alive transport.
func client(t *testing.T, s *Server, apiKey string) *kp.Client {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	c, err := kp.NewWithLogger(kp.ClientConfig{
		BaseURL:    s.URL,
		TokenURL:   s.TokenURL,
		APIKey:     apiKey,
		InstanceID: s.InstanceID(),
		Timeout:    10,
	}, tr, kp.NewLogger(func(...any) {}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func kpErr(t *testing.T, err error) *kp.Error {
	t.Helper()
	var ke *kp.Error
	if !errors.As(err, &ke) {
		t.Fatalf("err = %v (%T), want *kp.Error", err, err)
	}
	return ke
}

func reasonCode(ke *kp.Error) string {
	if len(ke.Reasons) == 0 {
		return ""
	}
	return ke.Reasons[0].Code
}

func b64(b []byte) []byte { return []byte(base64.StdEncoding.EncodeToString(b)) }

func TestKeyLifecycleThroughClient(t *testing.T) {
	ctx := context.Background()
	s := start(t, Options{})
	c := client(t, s, testAPIKey)

	k, err := c.CreateKeyWithOptions(ctx, "root-1", false, kp.WithAliases([]string{"decryptd-root"}))
	if err != nil {
		t.Fatal(err)
	}
	if k.ID == "" || k.State != int(kp.Active) || k.Extractable || k.KeyVersion == nil || k.KeyVersion.ID != k.ID {
		t.Fatalf("created key %+v", k)
	}
	got, err := c.GetKey(ctx, "decryptd-root")
	if err != nil || got.ID != k.ID || got.Payload != "" {
		t.Fatalf("GetKey by alias = %+v, %v (root keys never return a payload)", got, err)
	}
	if _, err := c.GetKeyMetadata(ctx, k.ID); err != nil {
		t.Fatal(err)
	}

	dek := bytes.Repeat([]byte{7}, 32)
	aad := []string{"decryptd-dek-v1", "device/x", "1"}
	w1, err := c.WrapV2(ctx, k.ID, b64(dek), &aad)
	if err != nil {
		t.Fatal(err)
	}
	if w1.KeyVersion == nil || w1.KeyVersion.ID != k.ID || w1.PlainText != "" {
		t.Fatalf("WrapV2 = %+v", w1)
	}
	if strings.Contains(w1.CipherText, string(b64(dek))) {
		t.Fatal("ciphertext carries the DEK")
	}
	plain, rewrapped, err := c.UnwrapV2(ctx, k.ID, []byte(w1.CipherText), &aad)
	if err != nil || !bytes.Equal(plain, b64(dek)) || len(rewrapped) != 0 {
		t.Fatalf("UnwrapV2 = %q, %q, %v", plain, rewrapped, err)
	}

	t.Run("generated DEK", func(t *testing.T) {
		r, err := c.WrapCreateDEKV2(ctx, k.ID, &aad)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.PlainText) != 44 {
			t.Fatalf("generated DEK is %d base64 chars, want 44", len(r.PlainText))
		}
		p, err := c.Unwrap(ctx, k.ID, []byte(r.CipherText), &aad)
		if err != nil || string(p) != r.PlainText {
			t.Fatalf("unwrap generated: %v", err)
		}
	})

	t.Run("aad mismatch", func(t *testing.T) {
		for _, bad := range [][]string{nil, {"decryptd-dek-v1", "device/x", "2"}, {"decryptd-dek-v1", "device/x1", ""}} {
			_, err := c.Unwrap(ctx, k.ID, []byte(w1.CipherText), &bad)
			ke := kpErr(t, err)
			if ke.StatusCode != 400 || reasonCode(ke) != "INVALID_FIELD_ERR" {
				t.Fatalf("aad %q: %d %s", bad, ke.StatusCode, reasonCode(ke))
			}
		}
	})

	t.Run("rotate", func(t *testing.T) {
		if err := c.Rotate(ctx, k.ID, ""); err != nil {
			t.Fatal(err)
		}
		vs, err := c.ListKeyVersions(ctx, k.ID, nil)
		if err != nil || len(vs.KeyVersion) != 2 || vs.KeyVersion[1].ID != k.ID {
			t.Fatalf("versions = %+v, %v", vs, err)
		}
		newest := vs.KeyVersion[0].ID
		plain, rewrapped, err := c.UnwrapV2(ctx, k.ID, []byte(w1.CipherText), &aad)
		if err != nil || !bytes.Equal(plain, b64(dek)) || len(rewrapped) == 0 {
			t.Fatalf("UnwrapV2 of old ciphertext = %v, rewrapped %d bytes", err, len(rewrapped))
		}
		plain, again, err := c.UnwrapV2(ctx, k.ID, rewrapped, &aad)
		if err != nil || !bytes.Equal(plain, b64(dek)) || len(again) != 0 {
			t.Fatalf("UnwrapV2 of rewrapped = %v, rewrapped again %d bytes", err, len(again))
		}
		w2, err := c.WrapV2(ctx, k.ID, b64(dek), &aad)
		if err != nil || w2.KeyVersion.ID != newest {
			t.Fatalf("wrap after rotate under %v, want %s (%v)", w2.KeyVersion, newest, err)
		}
		// The rewrap endpoint has no client method; check it on the wire.
		var out struct {
			CipherText          string `json:"ciphertext"`
			PlainText           string `json:"plaintext"`
			KeyVersion          struct{ ID string }
			RewrappedKeyVersion struct{ ID string }
		}
		status := raw(t, c, s, http.MethodPost, "/api/v2/keys/"+k.ID+"/actions/rewrap", map[string]any{"ciphertext": w1.CipherText, "aad": aad}, &out)
		if status != 200 || out.PlainText != "" || out.KeyVersion.ID != k.ID || out.RewrappedKeyVersion.ID != newest {
			t.Fatalf("rewrap: %d %+v", status, out)
		}
		if p, err := c.Unwrap(ctx, k.ID, []byte(out.CipherText), &aad); err != nil || !bytes.Equal(p, b64(dek)) {
			t.Fatalf("unwrap of rewrap output: %v", err)
		}
	})

	t.Run("disable enable", func(t *testing.T) {
		if err := c.DisableKey(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
		for name, call := range map[string]func() error{
			"wrap":    func() error { _, err := c.Wrap(ctx, k.ID, b64(dek), &aad); return err },
			"unwrap":  func() error { _, err := c.Unwrap(ctx, k.ID, []byte(w1.CipherText), &aad); return err },
			"rotate":  func() error { return c.Rotate(ctx, k.ID, "") },
			"disable": func() error { return c.DisableKey(ctx, k.ID) },
		} {
			ke := kpErr(t, call())
			if ke.StatusCode != 409 || reasonCode(ke) != "KEY_ACTION_INVALID_STATE_ERR" {
				t.Fatalf("%s on suspended key: %d %s", name, ke.StatusCode, reasonCode(ke))
			}
		}
		if got, _ := c.GetKey(ctx, k.ID); got.State != int(kp.Suspended) {
			t.Fatalf("state %d after disable", got.State)
		}
		if _, err := c.ListKeyVersions(ctx, k.ID, nil); kpErr(t, err).StatusCode != 409 {
			t.Fatal("versions of a suspended key without allKeyStates must be 409")
		}
		all := true
		if _, err := c.ListKeyVersions(ctx, k.ID, &kp.ListKeyVersionsOptions{AllKeyStates: &all}); err != nil {
			t.Fatal(err)
		}
		if err := c.EnableKey(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
		if ke := kpErr(t, c.EnableKey(ctx, k.ID)); ke.StatusCode != 409 {
			t.Fatal("enable of an active key must be 409")
		}
		if _, err := c.Unwrap(ctx, k.ID, []byte(w1.CipherText), &aad); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("delete restore purge", func(t *testing.T) {
		if _, err := c.DeleteKey(ctx, k.ID, kp.ReturnMinimal); err != nil {
			t.Fatal(err)
		}
		_, err := c.Unwrap(ctx, k.ID, []byte(w1.CipherText), &aad)
		if ke := kpErr(t, err); ke.StatusCode != 410 || !strings.HasPrefix(ke.Message, "Gone:") {
			t.Fatalf("unwrap on deleted: %d %q", ke.StatusCode, ke.Message)
		}
		_, err = c.DeleteKey(ctx, k.ID, kp.ReturnMinimal)
		if ke := kpErr(t, err); ke.StatusCode != 410 || reasonCode(ke) != "KEY_DELETED_ERR" {
			t.Fatalf("second delete: %d %s", ke.StatusCode, reasonCode(ke))
		}
		got, err := c.GetKey(ctx, k.ID)
		if err != nil || got.State != int(kp.Destroyed) || got.Deleted == nil || !*got.Deleted {
			t.Fatalf("get deleted key = %+v, %v", got, err)
		}
		if keys, err := c.GetKeys(ctx, 0, 0); err != nil || len(keys.Keys) != 0 {
			t.Fatalf("deleted key listed: %+v, %v", keys, err)
		}
		restored, err := c.RestoreKey(ctx, k.ID)
		if err != nil || restored.State != int(kp.Active) {
			t.Fatalf("restore = %+v, %v", restored, err)
		}
		if _, err := c.Unwrap(ctx, k.ID, []byte(w1.CipherText), &aad); err != nil {
			t.Fatalf("unwrap after restore: %v", err)
		}
		if _, err := c.DeleteKey(ctx, k.ID, kp.ReturnRepresentation); err != nil {
			t.Fatal(err)
		}
		if _, err := c.PurgeKey(ctx, k.ID, kp.ReturnMinimal); err != nil {
			t.Fatal(err)
		}
		_, err = c.GetKey(ctx, k.ID)
		if ke := kpErr(t, err); ke.StatusCode != 404 || reasonCode(ke) != "KEY_NOT_FOUND_ERR" {
			t.Fatalf("get purged: %d %s", ke.StatusCode, reasonCode(ke))
		}
	})

	// One fetch by the client for every call above (expires_in caching),
	// one by raw's own token source.
	if n := s.Calls(OpToken); n != 2 {
		t.Errorf("token fetched %d times, want 2", n)
	}
}

// raw sends one request with the client's token, for endpoints the client lacks.
func raw(t *testing.T, c *kp.Client, s *Server, method, path string, body, out any) int {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, s.URL+path, bytes.NewReader(b))
	req.Header.Set("Authorization", token(t, s))
	req.Header.Set("Bluemix-Instance", s.InstanceID())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == 200 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s: %v", data, err)
		}
	}
	return resp.StatusCode
}

func token(t *testing.T, s *Server) string {
	t.Helper()
	ts := iam.CredentialFromAPIKey(testAPIKey)
	ts.TokenURL = s.TokenURL
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	return tok.TokenType + " " + tok.AccessToken
}

func TestTimingRules(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := start(t, Options{RotateInterval: time.Hour, ActionCooldown: 30 * time.Second, PurgeDelay: 4 * time.Hour, Now: clock, TokenTTL: 100 * time.Hour})
	c := client(t, s, testAPIKey)
	id, err := s.CreateRootKey("timed")
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name   string
		wait   time.Duration
		call   func() error
		status int
		code   string
	}{
		{"first rotate", 0, func() error { return c.Rotate(ctx, id, "") }, 0, ""},
		{"rotate within the hour", time.Minute, func() error { return c.Rotate(ctx, id, "") }, 409, "KEY_ROTATION_NOT_PERMITTED"},
		{"rotate after the hour", time.Hour, func() error { return c.Rotate(ctx, id, "") }, 0, ""},
		{"disable", 0, func() error { return c.DisableKey(ctx, id) }, 0, ""},
		{"enable too early", time.Second, func() error { return c.EnableKey(ctx, id) }, 409, "REQ_TOO_EARLY_ERR"},
		{"enable", 30 * time.Second, func() error { return c.EnableKey(ctx, id) }, 0, ""},
		{"delete", 0, func() error { _, err := c.DeleteKey(ctx, id, kp.ReturnMinimal); return err }, 0, ""},
		{"purge too early", time.Hour, func() error { _, err := c.PurgeKey(ctx, id, kp.ReturnMinimal); return err }, 409, "REQ_TOO_EARLY_ERR"},
		{"purge", 3 * time.Hour, func() error { _, err := c.PurgeKey(ctx, id, kp.ReturnMinimal); return err }, 0, ""},
	} {
		advance(step.wait)
		err := step.call()
		if step.status == 0 {
			if err != nil {
				t.Fatalf("%s: %v", step.name, err)
			}
			continue
		}
		ke := kpErr(t, err)
		if ke.StatusCode != step.status || reasonCode(ke) != step.code {
			t.Fatalf("%s: %d %s, want %d %s", step.name, ke.StatusCode, reasonCode(ke), step.status, step.code)
		}
	}

	t.Run("expiry deactivates", func(t *testing.T) {
		exp := clock().Add(time.Hour)
		k, err := c.CreateRootKey(ctx, "expiring", &exp)
		if err != nil {
			t.Fatal(err)
		}
		w, err := c.Wrap(ctx, k.ID, b64([]byte("0123456789abcdef")), nil)
		if err != nil {
			t.Fatal(err)
		}
		advance(2 * time.Hour)
		_, err = c.Wrap(ctx, k.ID, b64([]byte("x")), nil)
		if ke := kpErr(t, err); ke.StatusCode != 409 || reasonCode(ke) != "KEY_ACTION_INVALID_STATE_ERR" {
			t.Fatalf("wrap on deactivated: %d %s", ke.StatusCode, reasonCode(ke))
		}
		if _, err := c.Unwrap(ctx, k.ID, w, nil); err != nil {
			t.Fatalf("unwrap on deactivated must work: %v", err)
		}
	})
}

func TestAuth(t *testing.T) {
	ctx := context.Background()
	s := start(t, Options{})
	id, err := s.CreateRootKey("root")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("bad api key", func(t *testing.T) {
		_, err := client(t, s, "wrong-key").GetKey(ctx, id)
		var ie iam.Error
		if !errors.As(err, &ie) || ie.ErrorCode != "BXNIM0415E" || ie.HTTPResponse.StatusCode != 400 {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("wrong instance", func(t *testing.T) {
		c := client(t, s, testAPIKey)
		c.Config.InstanceID = "someone-else"
		_, err := c.GetKey(ctx, id)
		if ke := kpErr(t, err); ke.StatusCode != 401 {
			t.Fatalf("status %d", ke.StatusCode)
		}
	})
	for _, tc := range []struct{ name, auth, instance string }{
		{"no token", "", "inst"},
		{"unknown token", "Bearer 1234", "inst"},
		{"no bearer", "Basic abc", "inst"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, s.URL+"/api/v2/keys/"+id, nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			req.Header.Set("Bluemix-Instance", s.InstanceID())
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 401 || !strings.Contains(string(body), "Unauthorized: The user does not have access") {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
		})
	}
	t.Run("token expiry", func(t *testing.T) {
		now := time.Now()
		var mu sync.Mutex
		s := start(t, Options{TokenTTL: 61 * time.Second, Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }})
		id, _ := s.CreateRootKey("root")
		req, _ := http.NewRequest(http.MethodGet, s.URL+"/api/v2/keys/"+id, nil)
		req.Header.Set("Authorization", token(t, s))
		req.Header.Set("Bluemix-Instance", s.InstanceID())
		mu.Lock()
		now = now.Add(62 * time.Second)
		mu.Unlock()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("expired token: %d", resp.StatusCode)
		}
	})
}

func TestFaults(t *testing.T) {
	ctx := context.Background()
	s := start(t, Options{})
	c := client(t, s, testAPIKey)
	id, err := s.CreateRootKey("root")
	if err != nil {
		t.Fatal(err)
	}
	for _, status := range []int{503, 429, 500} {
		t.Run("burst "+http.StatusText(status), func(t *testing.T) {
			s.ResetCalls()
			s.SetFaults(Faults{FailNext: 2, FailStatus: status, RetryAfter: "0"})
			if status == 500 {
				s.SetFaults(Faults{FailNext: 1, FailStatus: status}) // 1 s client backoff
			}
			if _, err := c.GetKeyMetadata(ctx, id); err != nil {
				t.Fatalf("client did not ride out the burst: %v", err)
			}
			want := int64(3)
			if status == 500 {
				want = 2
			}
			if n := s.Calls(OpMetadata); n != want {
				t.Fatalf("%d calls, want %d", n, want)
			}
		})
	}
	s.SetFaults(Faults{})
	for _, tc := range []struct {
		name    string
		outage  Outage
		timeout time.Duration
	}{
		{"reset", OutageReset, 300 * time.Millisecond},
		{"hang released by deadline", OutageHang, 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.SetFaults(Faults{Outage: tc.outage})
			wantURLError(t, c, id, tc.timeout)
			s.SetFaults(Faults{})
		})
	}
	t.Run("iam 503 then recovers", func(t *testing.T) {
		s := start(t, Options{})
		id, _ := s.CreateRootKey("root")
		s.SetFaults(Faults{IAMFailNext: 1}) // client's IAM retry waits 1 s
		if _, err := client(t, s, testAPIKey).GetKeyMetadata(ctx, id); err != nil {
			t.Fatal(err)
		}
		if n := s.Calls(OpToken); n != 2 {
			t.Fatalf("%d token calls, want 2", n)
		}
	})
	t.Run("refuse", func(t *testing.T) {
		if err := s.SetRefuse(true); err != nil {
			t.Fatal(err)
		}
		wantURLError(t, c, id, 300*time.Millisecond)
		if err := s.SetRefuse(false); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetKeyMetadata(context.Background(), id); err != nil {
			t.Fatalf("after refuse lifted: %v", err)
		}
	})
}

// wantURLError fetches key id's metadata with a deadline of timeout and
// requires the client's transport error (*kp.URLError).
func wantURLError(t *testing.T, c *kp.Client, id string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := c.GetKeyMetadata(ctx, id)
	var ue *kp.URLError
	if !errors.As(err, &ue) {
		t.Fatalf("err = %v (%T), want *kp.URLError", err, err)
	}
}

func TestKeepAlive(t *testing.T) {
	ctx := context.Background()
	s := start(t, Options{})
	c := client(t, s, testAPIKey)
	id, _ := s.CreateRootKey("root")
	for range 20 {
		if _, err := c.GetKeyMetadata(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	// One connection for the IAM fetch (http.DefaultTransport), one for the
	// API, and maybe a spare net/http dialled while the previous connection
	// was on its way back to the idle pool.
	if n := s.Connections(); n > 4 {
		t.Fatalf("%d connections for 20 calls: keep-alive not working", n)
	}
}

func FuzzParseCiphertext(f *testing.F) {
	f.Add("eyJjaXBoZXJ0ZXh0IjoiQUFBQUFBQUFBQUFBQUFBQUFBQUFBQT09IiwiaXYiOiJBQUFBQUFBQUFBQUFBQUFBIiwidmVyc2lvbiI6ImtwZW11LTEiLCJoYW5kbGUiOiJ4In0=")
	f.Add("")
	f.Add("e30=")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseCiphertext(s)
		if err != nil {
			return
		}
		if len(c.IV) != nonceSize || c.Handle == "" || len(c.Ciphertext) < 16 {
			t.Fatalf("accepted %+v", c)
		}
	})
}

// FuzzServeAction feeds arbitrary bodies to every key route: the emulator
// must answer with a documented status, never panic or fail with a 5xx.
func FuzzServeAction(f *testing.F) {
	ft := newFuzzTarget(f)
	for _, s := range []string{"wrap", "unwrap", "rewrap", "rotate"} {
		f.Add(s, `{"plaintext":"AAAA","aad":["a"]}`)
		f.Add(s, `{"ciphertext":"e30=","aad":["a"]}`)
		f.Add(s, `null`)
	}
	f.Add("create", `{"resources":[{"name":"xy","aliases":["a1"]}]}`)
	f.Fuzz(func(t *testing.T, action, body string) {
		path := APIPrefix + "keys/" + ft.keyID + "/actions/" + action
		if action == "create" {
			path = APIPrefix + "keys"
		}
		if rec := ft.serve(http.MethodPost, path, body); rec != nil && !documented(rec.status) {
			t.Fatalf("%s %q: status %d %s", action, body, rec.status, rec.body.Bytes())
		}
	})
}

// fuzzTarget is an emulator with one root key and a token of its own, for
// the fuzz targets, which serve it requests directly.
type fuzzTarget struct {
	e            *Emulator
	keyID, token string
}

func newFuzzTarget(f *testing.F) *fuzzTarget {
	e := New(Options{APIKeys: []string{testAPIKey}})
	id, err := e.CreateRootKey("fuzz-root")
	if err != nil {
		f.Fatal(err)
	}
	rec := httptestRecorder()
	req, _ := http.NewRequest(http.MethodPost, TokenPath, strings.NewReader("grant_type=urn%3Aibm%3Aparams%3Aoauth%3Agrant-type%3Aapikey&apikey="+testAPIKey))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	e.ServeHTTP(rec, req)
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(rec.body.Bytes(), &tok); err != nil || tok.AccessToken == "" {
		f.Fatalf("token: %s", rec.body.Bytes())
	}
	return &fuzzTarget{e: e, keyID: id, token: tok.AccessToken}
}

// serve answers one authorized request; nil when method and path make no
// request.
func (ft *fuzzTarget) serve(method, path, body string) *recorder {
	req, err := http.NewRequest(method, path, strings.NewReader(body))
	if err != nil {
		return nil
	}
	req.Header.Set("Authorization", "Bearer "+ft.token)
	req.Header.Set("Bluemix-Instance", ft.e.InstanceID())
	rec := httptestRecorder()
	ft.e.ServeHTTP(rec, req)
	return rec
}

// documented reports whether status is one the emulator answers a request
// with (no 5xx without an injected fault).
func documented(status int) bool {
	switch status {
	case 200, 201, 204, 400, 404, 409, 410:
		return true
	}
	return false
}

// recorder is a minimal http.ResponseWriter (httptest would do as well,
// but this keeps the fuzz loop free of its extra work).
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func httptestRecorder() *recorder { return &recorder{header: http.Header{}} }

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = 200
	}
	return r.body.Write(b)
}
func (r *recorder) WriteHeader(s int) {
	if r.status == 0 {
		r.status = s
	}
}
