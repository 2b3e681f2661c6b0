package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/kpemu"
)

// The Key Protect provider, against the emulator: a root key made with
// `dekctl root create` before any root_key_id is configured, then the key
// operations, a root rotation through the API and a rewrap.
func TestFlowKeyProtect(t *testing.T) {
	srv, err := kpemu.Start(context.Background(), kpemu.Options{APIKeys: []string{"test-api-key"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	text := strings.Replace(testConfig, "  provider: local\n  local: {root_key_file: var/root-key.json}\n",
		"  provider: keyprotect\n  keyprotect:\n    base_url: "+srv.URL+"\n    token_url: "+srv.TokenURL+
			"\n    instance_id: "+srv.InstanceID()+"\n    api_key_env: DEKCTL_TEST_KP_KEY\n    timeout: 5s\n", 1)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DECRYPTD_CONFIG": cfg, "DEKCTL_TEST_KP_KEY": "test-api-key"}

	// Without a root key id, key operations are refused by validation...
	if r := runT(t, env, "list"); r.code != exitFailed || !strings.Contains(r.stderr, "kms.keyprotect.root_key_id: required") {
		t.Fatalf("list without root id: %+v", r)
	}
	// ...but root create runs, and says where the id goes.
	r := runT(t, env, "root", "create", "--name", "decryptd-test")
	if r.code != 0 || !strings.Contains(r.stdout, "set kms.keyprotect.root_key_id") {
		t.Fatalf("root create: %+v", r)
	}
	id := regexp.MustCompile(`created root key (\S+)`).FindStringSubmatch(r.stdout)[1]
	env["DECRYPTD_KMS_KEYPROTECT_ROOT_KEY_ID"] = id

	for _, args := range [][]string{
		{"provision", "--device", "pump-1", "--out", filepath.Join(dir, "pump-1.json")},
		{"import", "--file", "../../testdata/envelope-v1.json"},
		{"root", "rotate"},
		{"rewrap"},
		{"audit", "verify"},
	} {
		if r := runT(t, env, args...); r.code != 0 {
			t.Fatalf("dekctl %v: %+v", args, r)
		}
	}
	r = runT(t, env, "root", "list", "--json")
	var roots []struct {
		ID       string   `json:"id"`
		Versions []string `json:"versions"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &roots); err != nil || len(roots) != 1 || roots[0].ID != id || len(roots[0].Versions) != 2 {
		t.Fatalf("root list: %v %s", err, r.stdout)
	}
	r = runT(t, env, "list", "--json")
	var infos []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &infos); err != nil || len(infos) != 5 {
		t.Fatalf("list: %v %s", err, r.stdout)
	}
	for _, in := range infos {
		if in["root_key_id"] != id || in["root_key_version"] != roots[0].Versions[1] {
			t.Fatalf("not under the newest root version: %v", in)
		}
	}
}
