package kpemu

import (
	"context"
	"net/http"
	"net/url"
	"testing"

	kp "github.com/IBM/keyprotect-go-client"
)

func TestNewKeyHasNoLastUpdateDate(t *testing.T) {
	ctx := context.Background()
	s := start(t, Options{})
	c := client(t, s, testAPIKey)
	k := createKey(t, c, "root", false)
	if k.LastUpdateDate != nil || k.LastRotateDate != nil {
		t.Fatalf("new key: lastUpdateDate %v lastRotateDate %v, want neither", k.LastUpdateDate, k.LastRotateDate)
	}
	if err := c.Rotate(ctx, k.ID, ""); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetKey(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.LastUpdateDate == nil || got.LastRotateDate == nil {
		t.Fatalf("rotated key: lastUpdateDate %v lastRotateDate %v, want both", got.LastUpdateDate, got.LastRotateDate)
	}
}

func TestAliases(t *testing.T) {
	ctx := context.Background()
	s := start(t, Options{})
	c := client(t, s, testAPIKey)
	k1 := createKey(t, c, "root-1", false)
	k2 := createKey(t, c, "root-2", false)
	a, err := c.CreateKeyAlias(ctx, "my-root", k1.ID)
	if err != nil || a == nil || a.Alias != "my-root" || a.KeyID != k1.ID || a.CreationDate == nil {
		t.Fatalf("CreateKeyAlias = %+v, %v", a, err)
	}
	if got, err := c.GetKey(ctx, "my-root"); err != nil || got.ID != k1.ID || len(got.Aliases) != 1 {
		t.Fatalf("GetKey(alias) = %+v, %v", got, err)
	}
	if _, err := c.CreateKeyAlias(ctx, "my-root", k1.ID); err != nil {
		t.Fatalf("the same alias again on the same key: %v", err)
	}
	for _, tc := range []struct {
		name, alias, key string
		status           int
		reason           string
	}{
		{"taken by another key", "my-root", k2.ID, http.StatusConflict, "KEY_ALIAS_NOT_UNIQUE_ERR"},
		{"a UUID", k2.ID, k1.ID, http.StatusBadRequest, "INVALID_FIELD_ERR"},
		{"too short", "x", k1.ID, http.StatusBadRequest, "INVALID_FIELD_ERR"},
		{"unknown key", "fine-alias", "8f0c1d9e-0000-4000-8000-000000000000", http.StatusNotFound, "KEY_NOT_FOUND_ERR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.CreateKeyAlias(ctx, tc.alias, tc.key)
			ke := kpErr(t, err)
			if ke.StatusCode != tc.status || reasonCode(ke) != tc.reason {
				t.Fatalf("got %d %s, want %d %s", ke.StatusCode, reasonCode(ke), tc.status, tc.reason)
			}
		})
	}
	for i := range 4 {
		if _, err := c.CreateKeyAlias(ctx, "extra-"+string(rune('a'+i)), k1.ID); err != nil {
			t.Fatal(err)
		}
	}
	if ke := kpErr(t, func() error { _, err := c.CreateKeyAlias(ctx, "sixth", k1.ID); return err }()); ke.StatusCode != http.StatusBadRequest || reasonCode(ke) != "KEY_ALIAS_QUOTA_ERR" {
		t.Fatalf("sixth alias: %d %s, want 400 KEY_ALIAS_QUOTA_ERR", ke.StatusCode, reasonCode(ke))
	}
	if err := c.DeleteKeyAlias(ctx, "my-root", k1.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetKey(ctx, "my-root"); kpErr(t, err).StatusCode != http.StatusNotFound {
		t.Fatalf("deleted alias still finds the key: %v", err)
	}
	if ke := kpErr(t, c.DeleteKeyAlias(ctx, "my-root", k1.ID)); ke.StatusCode != http.StatusNotFound {
		t.Fatalf("deleting it again: %d, want 404", ke.StatusCode)
	}
	if _, err := c.CreateKeyAlias(ctx, "my-root", k2.ID); err != nil {
		t.Fatalf("a freed alias is free for another key: %v", err)
	}
}

func TestKeyRotationPolicies(t *testing.T) {
	ctx := context.Background()
	s := start(t, Options{})
	c := client(t, s, testAPIKey)
	k := createKey(t, c, "root", false)
	if ps, err := c.GetPolicies(ctx, k.ID); err != nil || len(ps) != 0 {
		t.Fatalf("fresh key policies = %+v, %v; want none", ps, err)
	}
	if p, err := c.GetRotationPolicy(ctx, k.ID); err != nil || p != nil {
		t.Fatalf("fresh key rotation policy = %+v, %v; want nil", p, err)
	}
	if _, err := c.EnableRotationPolicy(ctx, k.ID); kpErr(t, err).StatusCode != http.StatusBadRequest {
		t.Fatalf("enabling a policy without an interval: %v, want 400", err)
	}
	for _, months := range []int{13, -1} {
		if _, err := c.SetRotationPolicy(ctx, k.ID, months); kpErr(t, err).StatusCode != http.StatusBadRequest {
			t.Fatalf("interval %d: %v, want 400", months, err)
		}
	}
	p, err := c.SetRotationPolicy(ctx, k.ID, 4, false)
	if err != nil || p == nil || p.Rotation == nil || *p.Rotation.Enabled || p.Rotation.Interval != 4 {
		t.Fatalf("SetRotationPolicy = %+v, %v", p, err)
	}
	if p, err = c.EnableRotationPolicy(ctx, k.ID); err != nil || !*p.Rotation.Enabled || p.Rotation.Interval != 4 {
		t.Fatalf("EnableRotationPolicy kept the interval? %+v, %v", p, err)
	}
	if p, err = c.DisableRotationPolicy(ctx, k.ID); err != nil || *p.Rotation.Enabled {
		t.Fatalf("DisableRotationPolicy = %+v, %v", p, err)
	}
	if _, err := c.SetDualAuthDeletePolicy(ctx, k.ID, true); err != nil {
		t.Fatal(err)
	}
	if ps, err := c.GetPolicies(ctx, k.ID); err != nil || len(ps) != 2 {
		t.Fatalf("policies = %+v, %v; want rotation and dualAuthDelete", ps, err)
	}
	std := createKey(t, c, "standard", true)
	if _, err := c.SetRotationPolicy(ctx, std.ID, 3); kpErr(t, err).StatusCode != http.StatusBadRequest {
		t.Fatalf("rotation policy on a standard key: %v, want 400", err)
	}
	if _, err := c.GetPolicies(ctx, "no-such-key"); kpErr(t, err).StatusCode != http.StatusNotFound {
		t.Fatalf("policies of an unknown key: %v, want 404", err)
	}
}

func TestInstanceRotationPolicy(t *testing.T) {
	ctx := context.Background()
	s := start(t, Options{})
	c := client(t, s, testAPIKey)
	p, err := c.GetRotationInstancePolicy(ctx)
	if err != nil || p == nil || p.PolicyData.Enabled == nil || *p.PolicyData.Enabled {
		t.Fatalf("fresh instance rotation policy = %+v, %v; want present and disabled", p, err)
	}
	months := 13
	if err := c.SetRotationInstancePolicy(ctx, true, &months); kpErr(t, err).StatusCode != http.StatusBadRequest {
		t.Fatalf("13 months: %v, want 400", err)
	}
	months = 2
	if err := c.SetRotationInstancePolicy(ctx, true, &months); err != nil {
		t.Fatal(err)
	}
	if p, err = c.GetRotationInstancePolicy(ctx); err != nil || !*p.PolicyData.Enabled || *p.PolicyData.Attributes.IntervalMonth != 2 {
		t.Fatalf("instance policy = %+v, %v", p, err)
	}
	root := createKey(t, c, "root", false)
	if rp, err := c.GetRotationPolicy(ctx, root.ID); err != nil || rp == nil || rp.Rotation.Interval != 2 || !*rp.Rotation.Enabled {
		t.Fatalf("a new root key inherits the instance policy: %+v, %v", rp, err)
	}
	std := createKey(t, c, "standard", true)
	if rp, err := c.GetRotationPolicy(ctx, std.ID); err != nil || rp != nil {
		t.Fatalf("a standard key inherits nothing: %+v, %v", rp, err)
	}
	_, err = c.CreateRootKeyWithPolicyOverrides(ctx, "over", nil, []string{"over-alias"}, kp.Policy{Rotation: &kp.Rotation{Interval: 7}})
	if err != nil {
		t.Fatal(err)
	}
	if rp, err := c.GetRotationPolicy(ctx, "over-alias"); err != nil || rp == nil || rp.Rotation.Interval != 7 {
		t.Fatalf("override: %+v, %v; want 7 months", rp, err)
	}
	none, err := c.CreateRootKeyWithPolicyOverrides(ctx, "none", nil, nil, kp.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if rp, err := c.GetRotationPolicy(ctx, none.ID); err != nil || rp != nil {
		t.Fatalf("override without policies: %+v, %v; want none", rp, err)
	}
	if _, err := c.CreateRootKeyWithPolicyOverrides(ctx, "bad", nil, nil, kp.Policy{Rotation: &kp.Rotation{Interval: 0}}); kpErr(t, err).StatusCode != http.StatusBadRequest {
		t.Fatalf("override with interval 0: %v, want 400", err)
	}
	if err := c.SetRotationInstancePolicy(ctx, false, nil); err != nil {
		t.Fatal(err)
	}
	later := createKey(t, c, "later", false)
	if rp, err := c.GetRotationPolicy(ctx, later.ID); err != nil || rp != nil {
		t.Fatalf("after disabling the instance policy: %+v, %v; want none", rp, err)
	}
	if ps, err := c.GetInstancePolicies(ctx); err != nil || len(ps) != 1 || ps[0].PolicyType != "rotation" {
		t.Fatalf("GetInstancePolicies = %+v, %v; want the one set", ps, err)
	}
	if err := s.SetInstanceRotationPolicy(3); err != nil {
		t.Fatal(err)
	}
	if p, err = c.GetRotationInstancePolicy(ctx); err != nil || *p.PolicyData.Attributes.IntervalMonth != 3 {
		t.Fatalf("after SetInstanceRotationPolicy(3): %+v, %v", p, err)
	}
}

// createKey creates a key through the client: a standard key when
// extractable, else a root key.
func createKey(t *testing.T, c *kp.Client, name string, extractable bool) *kp.Key {
	t.Helper()
	k, err := c.CreateKey(context.Background(), name, nil, extractable)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// FuzzServePolicies feeds arbitrary bodies and queries to the policy,
// alias and policy-override routes: a documented status, never a panic or
// a 5xx.
func FuzzServePolicies(f *testing.F) {
	ft := newFuzzTarget(f)
	id := ft.keyID
	f.Add(0, "rotation", `{"resources":[{"rotation":{"enabled":true,"interval_month":3}}]}`)
	f.Add(0, "", `{"resources":[{"dualAuthDelete":{"enabled":true}}]}`)
	f.Add(1, "rotation", `{"resources":[{"policy_type":"rotation","policy_data":{"enabled":true,"attributes":{"interval_month":2}}}]}`)
	f.Add(1, "rotation", `{"resources":[{"policy_type":"rotation","policy_data":{"enabled":true,"attributes":{"interval_month":1e300}}}]}`)
	f.Add(2, "", `{"resources":[{"name":"over","rotation":{"interval_month":-1}}]}`)
	f.Add(3, "my-alias", ``)
	f.Fuzz(func(t *testing.T, route int, query, body string) {
		var method, path string
		switch route % 4 {
		case 0:
			method, path = http.MethodPut, APIPrefix+"keys/"+id+"/policies?policy="+url.QueryEscape(query)
		case 1:
			method, path = http.MethodPut, APIPrefix+"instance/policies?policy="+url.QueryEscape(query)
		case 2:
			method, path = http.MethodPost, APIPrefix+"keys_with_policy_overrides"
		default:
			method, path = http.MethodPost, APIPrefix+"keys/"+id+"/aliases/"+url.PathEscape(query)
		}
		if rec := ft.serve(method, path, body); rec != nil && !documented(rec.status) {
			t.Fatalf("%s %s %q: status %d %s", method, path, body, rec.status, rec.body.Bytes())
		}
	})
}
