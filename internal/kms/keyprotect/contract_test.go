package keyprotect_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/kms/keyprotect"
	"github.com/decryptd/decryptd/internal/kms/kmstest"
	"github.com/decryptd/decryptd/internal/kpemu"
)

// TestProviderContract runs the kms contract against the provider and the
// real client over HTTPS to the emulator: the API's certificate comes from
// a CA made on the spot that only Config.CAFile makes trusted (the IAM
// token endpoint, which the client fetches through http.DefaultTransport,
// is the same emulator on a second, plain listener). Revocation disables
// the root key with an operator's client; the outages are a hang, refused
// connections, and 503 and 429 on every request.
func TestProviderContract(t *testing.T) {
	ca, err := kpemu.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := ca.WriteCAFile(caFile); err != nil {
		t.Fatal(err)
	}
	kmstest.RunProviderContract(t, func(t *testing.T) kmstest.Harness {
		api, tokens := startTLS(t, ca)
		root, err := api.CreateRootKey("contract-root")
		if err != nil {
			t.Fatal(err)
		}
		p := newTLSProvider(t, api, tokens, root, caFile)
		op := operatorTLS(t, api, tokens, ca)
		fail := func(f kpemu.Faults) func() func() {
			return func() func() {
				api.SetFaults(f)
				return func() { api.SetFaults(kpemu.Faults{}) }
			}
		}
		return kmstest.Harness{
			Provider: p,
			Revoke:   func(ctx context.Context) error { return op.DisableKey(ctx, root) },
			Outages: map[string]func() func(){
				"hang": fail(kpemu.Faults{Outage: kpemu.OutageHang}),
				"503":  fail(kpemu.Faults{FailRate: 1, FailStatus: 503}),
				"429":  fail(kpemu.Faults{FailRate: 1, FailStatus: 429, RetryAfter: "1"}),
				"refuse": func() func() {
					if err := api.SetRefuse(true); err != nil {
						t.Fatal(err)
					}
					return func() {
						if err := api.SetRefuse(false); err != nil {
							t.Error(err)
						}
					}
				},
			},
		}
	})
}

// TestCAFileIsTheTrust shows the HTTPS path is real: without Config.CAFile
// the same provider gets a token but no request through to the API (the
// client retries the failed handshakes until the deadline), and its error
// is transient, not a refusal of the ciphertext.
func TestCAFileIsTheTrust(t *testing.T) {
	ca, err := kpemu.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	api, tokens := startTLS(t, ca)
	root, err := api.CreateRootKey("contract-root")
	if err != nil {
		t.Fatal(err)
	}
	p := newTLSProvider(t, api, tokens, root, "")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = p.Wrap(ctx, make([]byte, 32), aad)
	if !errors.Is(err, kms.ErrTransient) {
		t.Fatalf("Wrap without the CA: %v, want kms.ErrTransient", err)
	}
	if api.Calls(kpemu.OpToken) == 0 {
		t.Fatal("no token was fetched: the test did not get as far as the API")
	}
	if api.Calls(kpemu.OpWrap) != 0 {
		t.Fatalf("%d wraps reached the emulator without a trusted certificate", api.Calls(kpemu.OpWrap))
	}
}

// startTLS serves one emulator's API over HTTPS and its token endpoint on
// a plain listener.
func startTLS(t *testing.T, ca *kpemu.CA) (api, tokens *kpemu.Server) {
	t.Helper()
	api, err := kpemu.ListenTLS(context.Background(), "127.0.0.1:0", kpemu.Options{APIKeys: []string{apiKey}}, ca.ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { api.Close() })
	tokens, err = kpemu.Serve(context.Background(), api.Emulator, "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tokens.Close() })
	return api, tokens
}

func newTLSProvider(t *testing.T, api, tokens *kpemu.Server, root, caFile string) *keyprotect.Provider {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "apikey")
	if err := os.WriteFile(keyFile, []byte(apiKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := keyprotect.New(context.Background(), keyprotect.Config{
		BaseURL: api.URL, TokenURL: tokens.TokenURL, InstanceID: api.InstanceID(), RootKeyID: root,
		APIKeyFile: keyFile, CAFile: caFile, Timeout: kmstest.OutageDeadline,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func operatorTLS(t *testing.T, api, tokens *kpemu.Server, ca *kpemu.CA) *kp.Client {
	t.Helper()
	c, err := kp.NewWithLogger(kp.ClientConfig{
		BaseURL: api.URL, TokenURL: tokens.TokenURL, APIKey: apiKey, InstanceID: api.InstanceID(),
	}, &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}}, kp.NewLogger(func(...any) {}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}
