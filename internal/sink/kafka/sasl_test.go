package kafka

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The OAUTHBEARER token is read from its file at each authentication (a
// rotated token needs no restart) and sent as RFC 7628's bearer; kfake has
// no OAUTHBEARER, so the client's first message is checked here.
func TestOAuthBearerTokenFromFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	m := mechanism(SASL{Mechanism: MechOAuthBearer, SecretFile: path}, os.LookupEnv)
	for _, tok := range []string{"tok-one", "tok-two"} {
		if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, first, err := m.Authenticate(t.Context(), "broker:9093")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(first), "auth=Bearer "+tok+"\x01") {
			t.Fatalf("first message %q lacks the token %s", first, tok)
		}
	}
	if m.Name() != "OAUTHBEARER" {
		t.Fatalf("mechanism %s", m.Name())
	}
	os.Remove(path)
	if _, _, err := m.Authenticate(t.Context(), "broker:9093"); err == nil || strings.Contains(err.Error(), "tok-") {
		t.Fatalf("missing token file: %v", err)
	}
}
