package keyprotect_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"go.yaml.in/yaml/v3"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/keyprotect"
	"github.com/decryptd/decryptd/internal/kpemu"
)

// apiKey is distinctive so a leak into an error text is found by Contains.
const apiKey = "kp-test-APIKEY-9d2f71c4e0"

var aad = kms.DEKAAD(dek.Ref{KeyID: "device/infusion-12", Version: "2"})

type env struct {
	srv  *kpemu.Server
	p    *keyprotect.Provider
	root string
	kp   *kp.Client // an operator's client, for disable/enable/delete
}

func setup(t *testing.T, eopts kpemu.Options, opts ...keyprotect.Option) *env {
	t.Helper()
	eopts.APIKeys = []string{apiKey}
	srv, err := kpemu.Start(context.Background(), eopts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	root, err := srv.CreateRootKey("decryptd-root")
	if err != nil {
		t.Fatal(err)
	}
	return &env{srv: srv, root: root, p: newProvider(t, srv, root, opts...), kp: operator(t, srv)}
}

func newProvider(t *testing.T, srv *kpemu.Server, root string, opts ...keyprotect.Option) *keyprotect.Provider {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "apikey")
	if err := os.WriteFile(keyFile, []byte(apiKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := keyprotect.New(context.Background(), keyprotect.Config{
		BaseURL:    srv.URL + "/",
		TokenURL:   srv.TokenURL,
		InstanceID: srv.InstanceID(),
		RootKeyID:  root,
		APIKeyFile: keyFile,
		Timeout:    5 * time.Second,
	}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func operator(t *testing.T, srv *kpemu.Server) *kp.Client {
	t.Helper()
	c, err := kp.NewWithLogger(kp.ClientConfig{
		BaseURL: srv.URL, TokenURL: srv.TokenURL, APIKey: apiKey, InstanceID: srv.InstanceID(),
	}, &http.Transport{}, kp.NewLogger(func(...any) {}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newDEK(t testing.TB) []byte {
	d := make([]byte, 32)
	if _, err := rand.Read(d); err != nil {
		t.Fatal(err)
	}
	return d
}

// kindOf names the classification of err, for table tests.
func kindOf(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, kms.ErrTransient):
		return "transient"
	case errors.Is(err, kms.ErrRootRevoked):
		return "revoked"
	}
	return "permanent"
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	e := setup(t, kpemu.Options{})
	d := newDEK(t)
	w, err := e.p.Wrap(ctx, d, aad)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := e.p.DescribeRoot(ctx, e.root)
	if err != nil {
		t.Fatal(err)
	}
	if w.RootKeyID != e.root || w.RootKeyVersion != vs.Versions[len(vs.Versions)-1] {
		t.Fatalf("wrapped under %s/%s, want %s/%v", w.RootKeyID, w.RootKeyVersion, e.root, vs.Versions)
	}
	e.srv.ResetCalls()
	got, err := e.p.Unwrap(ctx, w, aad)
	if err != nil || !bytes.Equal(got, d) {
		t.Fatalf("unwrap: %v", err)
	}
	if n := e.srv.Calls(kpemu.OpUnwrap); n != 1 {
		t.Fatalf("%d unwrap calls, want exactly 1", n)
	}
}

func TestAADMismatchIsPermanent(t *testing.T) {
	ctx := context.Background()
	e := setup(t, kpemu.Options{})
	w, err := e.p.Wrap(ctx, newDEK(t), aad)
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(w.Ciphertext)
	flipped[len(flipped)/2] ^= 1
	for _, tc := range []struct {
		name string
		w    kms.Wrapped
		aad  []string
		is   error
	}{
		{"no aad", w, nil, keyprotect.ErrInvalid},
		{"other version", w, kms.DEKAAD(dek.Ref{KeyID: "device/infusion-12", Version: "3"}), keyprotect.ErrInvalid},
		{"other key", w, kms.DEKAAD(dek.Ref{KeyID: "device/infusion-13", Version: "2"}), keyprotect.ErrInvalid},
		{"tampered ciphertext", kms.Wrapped{RootKeyID: w.RootKeyID, RootKeyVersion: w.RootKeyVersion, Ciphertext: flipped}, aad, keyprotect.ErrInvalid},
		{"unknown root key", kms.Wrapped{RootKeyID: "no-such-key", Ciphertext: w.Ciphertext}, aad, keyprotect.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.srv.ResetCalls()
			_, err := e.p.Unwrap(ctx, tc.w, tc.aad)
			if kindOf(err) != "permanent" || !errors.Is(err, tc.is) {
				t.Fatalf("err = %v, want permanent %v", err, tc.is)
			}
			if n := e.srv.Calls(kpemu.OpUnwrap); n != 1 {
				t.Fatalf("%d unwrap calls: a permanent error must not be retried", n)
			}
		})
	}
}

func TestRotateAndRewrap(t *testing.T) {
	ctx := context.Background()
	e := setup(t, kpemu.Options{})
	d := newDEK(t)
	old, err := e.p.Wrap(ctx, d, aad)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := e.p.RotateRoot(ctx, e.root)
	if err != nil {
		t.Fatal(err)
	}
	if len(rk.Versions) != 2 || rk.Versions[0] != old.RootKeyVersion || rk.State != "active" {
		t.Fatalf("after rotate: %+v (old wrap under %s)", rk, old.RootKeyVersion)
	}
	newest := rk.Versions[1]

	if got, err := e.p.Unwrap(ctx, old, aad); err != nil || !bytes.Equal(got, d) {
		t.Fatalf("old ciphertext after rotate: %v", err)
	}
	fresh, err := e.p.Wrap(ctx, d, aad)
	if err != nil || fresh.RootKeyVersion != newest {
		t.Fatalf("wrap after rotate under %s, want %s (%v)", fresh.RootKeyVersion, newest, err)
	}

	t.Run("old moves to newest", func(t *testing.T) {
		r, err := e.p.Rewrap(ctx, old, aad)
		if err != nil {
			t.Fatal(err)
		}
		if r.RootKeyVersion != newest || bytes.Equal(r.Ciphertext, old.Ciphertext) {
			t.Fatalf("rewrap gave version %s, want %s", r.RootKeyVersion, newest)
		}
		if got, err := e.p.Unwrap(ctx, r, aad); err != nil || !bytes.Equal(got, d) {
			t.Fatalf("unwrap rewrapped: %v", err)
		}
	})
	t.Run("newest is left alone", func(t *testing.T) {
		e.srv.ResetCalls()
		r, err := e.p.Rewrap(ctx, fresh, aad)
		if err != nil {
			t.Fatal(err)
		}
		if r.RootKeyVersion != newest || !bytes.Equal(r.Ciphertext, fresh.Ciphertext) {
			t.Fatal("rewrap of a newest-version DEK changed it")
		}
		if e.srv.Calls(kpemu.OpUnwrap) != 1 || e.srv.Calls(kpemu.OpWrap) != 0 {
			t.Fatalf("calls %v, want one unwrap and no wrap", e.srv.AllCalls())
		}
	})
	t.Run("rewrap with wrong aad", func(t *testing.T) {
		if _, err := e.p.Rewrap(ctx, old, nil); !errors.Is(err, keyprotect.ErrInvalid) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestRevocation(t *testing.T) {
	ctx := context.Background()
	e := setup(t, kpemu.Options{})
	d := newDEK(t)
	w, err := e.p.Wrap(ctx, d, aad)
	if err != nil {
		t.Fatal(err)
	}
	wrap := func() error { _, err := e.p.Wrap(ctx, d, aad); return err }
	unwrap := func() error { _, err := e.p.Unwrap(ctx, w, aad); return err }
	rewrap := func() error { _, err := e.p.Rewrap(ctx, w, aad); return err }
	for _, step := range []struct {
		name   string
		action func() error
		want   string
	}{
		{"disable", func() error { return e.kp.DisableKey(ctx, e.root) }, "revoked"},
		{"enable", func() error { return e.kp.EnableKey(ctx, e.root) }, "ok"},
		{"delete", func() error { _, err := e.kp.DeleteKey(ctx, e.root, kp.ReturnMinimal); return err }, "revoked"},
		{"restore", func() error { _, err := e.kp.RestoreKey(ctx, e.root); return err }, "ok"},
	} {
		t.Run(step.name, func(t *testing.T) {
			if err := step.action(); err != nil {
				t.Fatal(err)
			}
			for name, op := range map[string]func() error{"wrap": wrap, "unwrap": unwrap, "rewrap": rewrap} {
				if got := kindOf(op()); got != step.want {
					t.Errorf("%s after %s: %s, want %s", name, step.name, got, step.want)
				}
			}
		})
	}
	t.Run("error names status and reason", func(t *testing.T) {
		if err := e.kp.DisableKey(ctx, e.root); err != nil {
			t.Fatal(err)
		}
		err := unwrap()
		var ke *keyprotect.Error
		if !errors.As(err, &ke) || ke.Status != 409 || ke.Reason != "KEY_ACTION_INVALID_STATE_ERR" {
			t.Fatalf("err = %#v", err)
		}
		if !strings.Contains(err.Error(), "409") || !strings.Contains(err.Error(), "KEY_ACTION_INVALID_STATE_ERR") {
			t.Fatalf("error text %q lacks status or reason", err)
		}
	})
}

func TestTransientBursts(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		faults kpemu.Faults
		want   string
		calls  int64
	}{
		{"503 burst ridden out", kpemu.Faults{FailNext: 3, FailStatus: 503, RetryAfter: "0"}, "ok", 4},
		{"429 burst ridden out", kpemu.Faults{FailNext: 2, FailStatus: 429, RetryAfter: "0"}, "ok", 3},
		{"503 beyond the client's retries", kpemu.Faults{FailNext: 10, FailStatus: 503, RetryAfter: "0"}, "transient", 5},
		{"429 beyond the client's retries", kpemu.Faults{FailNext: 10, FailStatus: 429, RetryAfter: "0"}, "transient", 5},
		{"501 is permanent", kpemu.Faults{FailNext: 1, FailStatus: 501}, "permanent", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, kpemu.Options{})
			w, err := e.p.Wrap(ctx, newDEK(t), aad)
			if err != nil {
				t.Fatal(err)
			}
			e.srv.ResetCalls()
			e.srv.SetFaults(tc.faults)
			_, err = e.p.Unwrap(ctx, w, aad)
			if got := kindOf(err); got != tc.want {
				t.Fatalf("%s (%v), want %s", got, err, tc.want)
			}
			if n := e.srv.Calls(kpemu.OpUnwrap); n != tc.calls {
				t.Fatalf("%d unwrap attempts, want %d", n, tc.calls)
			}
		})
	}
}

// TestDeadlineDuringOutage: the property under test is that a call returns
// by its deadline whatever Key Protect or IAM does, including an IAM token
// fetch that ignores the context and would block for minutes.
func TestDeadlineDuringOutage(t *testing.T) {
	const (
		deadline = 300 * time.Millisecond
		slack    = 400 * time.Millisecond // scheduling under -race on 2 cores
	)
	for _, tc := range []struct {
		name     string
		faults   kpemu.Faults
		refuse   bool
		warmedUp bool // token already cached, so only the API is down
	}{
		{"api hangs", kpemu.Faults{Outage: kpemu.OutageHang}, false, true},
		{"api resets", kpemu.Faults{Outage: kpemu.OutageReset}, false, true},
		{"api slow", kpemu.Faults{Latency: time.Minute}, false, true},
		{"api refuses", kpemu.Faults{}, true, true},
		{"api 503 with back-off", kpemu.Faults{FailNext: 100, FailStatus: 503}, false, true},
		{"iam hangs", kpemu.Faults{IAMOutage: kpemu.OutageHang}, false, false},
		{"iam 503 with back-off", kpemu.Faults{IAMStatus: 503}, false, false},
		{"everything refused", kpemu.Faults{}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, kpemu.Options{})
			var w kms.Wrapped
			if tc.warmedUp {
				var err error
				if w, err = e.p.Wrap(context.Background(), newDEK(t), aad); err != nil {
					t.Fatal(err)
				}
			} else {
				w = kms.Wrapped{RootKeyID: e.root, Ciphertext: []byte("never-reaches-the-server")}
			}
			e.srv.SetFaults(tc.faults)
			if tc.refuse {
				if err := e.srv.SetRefuse(true); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			start := time.Now()
			_, err := e.p.Unwrap(ctx, w, aad)
			took := time.Since(start)
			if !errors.Is(err, kms.ErrTransient) {
				t.Fatalf("err = %v, want ErrTransient", err)
			}
			if took > deadline+slack {
				t.Fatalf("returned after %v, deadline %v", took, deadline)
			}
			if strings.Contains(err.Error(), apiKey) {
				t.Fatal("error contains the API key")
			}
		})
	}
}

// TestStuckCallsAreBounded: with IAM hanging, calls beyond the in-flight
// bound wait for a slot and still return by their deadline.
func TestStuckCallsAreBounded(t *testing.T) {
	const (
		deadline = 300 * time.Millisecond
		slack    = 400 * time.Millisecond
		callers  = 6
	)
	e := setup(t, kpemu.Options{}, keyprotect.WithMaxInFlight(2))
	e.srv.SetFaults(kpemu.Faults{IAMOutage: kpemu.OutageHang})
	w := kms.Wrapped{RootKeyID: e.root, Ciphertext: []byte("x")}
	type result struct {
		took time.Duration
		err  error
	}
	results := make(chan result, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			start := time.Now()
			_, err := e.p.Unwrap(ctx, w, aad)
			results <- result{time.Since(start), err}
		})
	}
	wg.Wait()
	close(results)
	for r := range results {
		if !errors.Is(r.err, kms.ErrTransient) || r.took > deadline+slack {
			t.Fatalf("call returned %v after %v", r.err, r.took)
		}
	}
	// Both slots are still held by the stuck token fetch (and the call
	// queued behind its mutex), so a new call never starts one more.
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	_, err := e.p.Unwrap(ctx, w, aad)
	if !errors.Is(err, kms.ErrTransient) || !strings.Contains(err.Error(), "no free call slot") {
		t.Fatalf("err = %v, want a transient no-free-slot error", err)
	}
	if n := e.srv.Calls(kpemu.OpToken); n != 1 {
		t.Fatalf("%d token requests reached IAM, want 1", n)
	}
}

func TestTokenCachedAndConnectionsReused(t *testing.T) {
	ctx := context.Background()
	e := setup(t, kpemu.Options{})
	d := newDEK(t)
	const calls = 30
	for range calls {
		w, err := e.p.Wrap(ctx, d, aad)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.p.Unwrap(ctx, w, aad); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.srv.Calls(kpemu.OpToken); n != 1 {
		t.Errorf("%d IAM token fetches for %d calls, want 1", n, 2*calls)
	}
	// One connection for the IAM fetch (the client uses http.DefaultTransport
	// there), one kept alive for all API calls. net/http may dial a spare
	// when a call starts before the previous connection is back in the idle
	// pool, so allow a couple; without keep-alives this would be 61.
	if n := e.srv.Connections(); n > 4 {
		t.Errorf("%d TCP connections for %d calls: keep-alive not in effect", n, 2*calls)
	}
}

func TestConcurrentUse(t *testing.T) {
	ctx := context.Background()
	e := setup(t, kpemu.Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for range 5 {
				d := newDEK(t)
				w, err := e.p.Wrap(ctx, d, aad)
				if err != nil {
					errs <- err
					return
				}
				got, err := e.p.Unwrap(ctx, w, aad)
				if err != nil || !bytes.Equal(got, d) {
					errs <- fmt.Errorf("unwrap: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := e.srv.Calls(kpemu.OpToken); n != 1 {
		t.Errorf("%d token fetches under concurrency, want 1", n)
	}
}

func TestRootManager(t *testing.T) {
	ctx := context.Background()
	e := setup(t, kpemu.Options{})
	rk, err := e.p.CreateRoot(ctx, "second-root")
	if err != nil {
		t.Fatal(err)
	}
	if rk.ID == "" || rk.Name != "second-root" || rk.State != "active" || len(rk.Versions) != 1 {
		t.Fatalf("CreateRoot = %+v", rk)
	}
	if _, err := e.p.RotateRoot(ctx, rk.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.kp.CreateStandardKey(ctx, "not-a-root", nil); err != nil {
		t.Fatal(err)
	}
	if err := e.kp.DisableKey(ctx, e.root); err != nil {
		t.Fatal(err)
	}
	roots, err := e.p.ListRoots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]kms.RootKey{}
	for _, r := range roots {
		got[r.ID] = r
	}
	if len(roots) != 2 || got[e.root].State != "suspended" || len(got[rk.ID].Versions) != 2 || got[rk.ID].Versions[0] != rk.Versions[0] {
		t.Fatalf("ListRoots = %+v", roots)
	}
	if _, err := e.p.RotateRoot(ctx, "no-such-key"); !errors.Is(err, keyprotect.ErrNotFound) {
		t.Fatalf("rotate unknown: %v", err)
	}
}

func TestAliasAsRootKey(t *testing.T) {
	ctx := context.Background()
	e := setup(t, kpemu.Options{})
	k, err := e.kp.CreateKeyWithOptions(ctx, "aliased", false, kp.WithAliases([]string{"decryptd-root"}))
	if err != nil {
		t.Fatal(err)
	}
	p := newProvider(t, e.srv, "decryptd-root")
	d := newDEK(t)
	w, err := p.Wrap(ctx, d, aad)
	if err != nil {
		t.Fatal(err)
	}
	if w.RootKeyID != "decryptd-root" || w.RootKeyVersion != k.ID {
		t.Fatalf("wrapped = %s/%s", w.RootKeyID, w.RootKeyVersion)
	}
	if got, err := p.Unwrap(ctx, w, aad); err != nil || !bytes.Equal(got, d) {
		t.Fatalf("unwrap via alias: %v", err)
	}
}

// TestErrorsNeverContainAPIKey drives every failure class and checks the
// error text (all verbs) and the provider's own printing.
func TestErrorsNeverContainAPIKey(t *testing.T) {
	ctx := context.Background()
	e := setup(t, kpemu.Options{})
	w, err := e.p.Wrap(ctx, newDEK(t), aad)
	if err != nil {
		t.Fatal(err)
	}
	var errs []error
	collect := func(err error) {
		if err == nil {
			t.Fatal("expected an error")
		}
		errs = append(errs, err)
	}
	_, err = e.p.Unwrap(ctx, w, nil) // 400
	collect(err)
	_, err = e.p.Unwrap(ctx, kms.Wrapped{RootKeyID: "nope", Ciphertext: w.Ciphertext}, aad) // 404
	collect(err)
	e.srv.SetFaults(kpemu.Faults{FailNext: 5, FailStatus: 503, RetryAfter: "0"})
	_, err = e.p.Unwrap(ctx, w, aad)
	collect(err)
	e.srv.SetFaults(kpemu.Faults{Outage: kpemu.OutageReset})
	sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = e.p.Unwrap(sctx, w, aad)
	cancel()
	collect(err)
	e.srv.SetFaults(kpemu.Faults{})

	// A wrong API key (IAM refuses it) and a wrong instance (401).
	wrongKey := filepath.Join(t.TempDir(), "k")
	os.WriteFile(wrongKey, []byte(apiKey+"-revoked"), 0o600)
	for _, cfg := range []keyprotect.Config{
		{BaseURL: e.srv.URL, TokenURL: e.srv.TokenURL, InstanceID: e.srv.InstanceID(), RootKeyID: e.root, APIKeyFile: wrongKey},
		{BaseURL: e.srv.URL, TokenURL: e.srv.TokenURL, InstanceID: "other", RootKeyID: e.root, APIKeyEnv: "X", Timeout: time.Second},
	} {
		p, err := keyprotect.New(ctx, cfg, keyprotect.WithGetenv(func(string) string { return apiKey }))
		if err != nil {
			t.Fatal(err)
		}
		_, err = p.Wrap(ctx, newDEK(t), aad)
		if !errors.Is(err, keyprotect.ErrUnauthorized) {
			t.Fatalf("err = %v, want ErrUnauthorized", err)
		}
		collect(err)
		for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
			if s := fmt.Sprintf(verb, p); strings.Contains(s, apiKey) {
				t.Fatalf("provider printed with %s shows the API key: %s", verb, s)
			}
		}
	}
	for _, err := range errs {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
			if s := fmt.Sprintf(verb, err); strings.Contains(s, apiKey) {
				t.Fatalf("error printed with %s contains the API key: %s", verb, s)
			}
		}
	}
}

func TestConfig(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	os.WriteFile(keyFile, []byte("  \t"+apiKey+"\n\n"), 0o600)
	emptyFile := filepath.Join(dir, "empty")
	os.WriteFile(emptyFile, []byte(" \n"), 0o600)
	base := keyprotect.Config{BaseURL: "http://127.0.0.1:1", InstanceID: "i"}
	with := func(f func(*keyprotect.Config)) keyprotect.Config { c := base; f(&c); return c }
	envs := map[string]string{keyprotect.DefaultAPIKeyEnv: apiKey, "OTHER": "other-key"}
	getenv := keyprotect.WithGetenv(func(k string) string { return envs[k] })
	for _, tc := range []struct {
		name    string
		cfg     keyprotect.Config
		wantErr string
	}{
		{"default env", base, ""},
		{"named env", with(func(c *keyprotect.Config) { c.APIKeyEnv = "OTHER" }), ""},
		{"file trimmed", with(func(c *keyprotect.Config) { c.APIKeyFile = keyFile }), ""},
		{"empty file", with(func(c *keyprotect.Config) { c.APIKeyFile = emptyFile }), "is empty"},
		{"missing file", with(func(c *keyprotect.Config) { c.APIKeyFile = filepath.Join(dir, "nope") }), "api key file"},
		{"unset env", with(func(c *keyprotect.Config) { c.APIKeyEnv = "UNSET" }), "UNSET"},
		{"no base url", with(func(c *keyprotect.Config) { c.BaseURL = "" }), "base_url"},
		{"no instance", with(func(c *keyprotect.Config) { c.InstanceID = "" }), "instance_id"},
		{"negative timeout", with(func(c *keyprotect.Config) { c.Timeout = -time.Second }), "timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := keyprotect.New(ctx, tc.cfg, getenv)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				p.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}
	t.Run("no root key", func(t *testing.T) {
		p, err := keyprotect.New(ctx, base, getenv)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Wrap(ctx, make([]byte, 32), nil); err == nil || errors.Is(err, kms.ErrTransient) {
			t.Fatalf("wrap without a root key: %v", err)
		}
	})
}

func TestSecretNeverPrints(t *testing.T) {
	s := keyprotect.Secret(apiKey)
	cfg := struct {
		Key keyprotect.Secret `json:"key" yaml:"key"`
	}{s}
	j, _ := json.Marshal(cfg)
	y, _ := yaml.Marshal(cfg)
	outs := []string{string(j), string(y)}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10s"} {
		outs = append(outs, fmt.Sprintf(verb, s), fmt.Sprintf(verb, cfg), fmt.Sprintf(verb, &cfg))
	}
	for _, o := range outs {
		if strings.Contains(o, apiKey) || strings.Contains(o, fmt.Sprintf("%x", apiKey)) {
			t.Fatalf("secret leaked: %s", o)
		}
	}
	if s.Reveal() != apiKey {
		t.Fatal("Reveal lost the key")
	}
}

func BenchmarkUnwrap(b *testing.B) {
	for _, bc := range []struct {
		name string
		opts []keyprotect.Option
	}{
		{"keepalive", nil},
		{"client-default-transport", []keyprotect.Option{keyprotect.WithTransport(kp.DefaultTransport())}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			srv, err := kpemu.Start(context.Background(), kpemu.Options{APIKeys: []string{apiKey}})
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Close()
			root, _ := srv.CreateRootKey("bench-root")
			p, err := keyprotect.New(context.Background(), keyprotect.Config{
				BaseURL: srv.URL, TokenURL: srv.TokenURL, InstanceID: srv.InstanceID(), RootKeyID: root,
			}, append(bc.opts, keyprotect.WithGetenv(func(string) string { return apiKey }))...)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			ctx := context.Background()
			w, err := p.Wrap(ctx, newDEK(b), aad)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.Unwrap(ctx, w, aad); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
