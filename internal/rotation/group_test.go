package rotation_test

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/rekey"
	"github.com/decryptd/decryptd/internal/rotation"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// groupMember is a device holding its own key (device/<id>@v1) and the
// group key's versions it has installed.
type groupMember struct {
	id  string
	own cipher.AEAD
	mu  sync.Mutex
	grp map[string]cipher.AEAD
}

func (m *groupMember) groupKey(v string) cipher.AEAD {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.grp[v]
}

// install opens a group rekey with the member's own device DEK, as
// docs/rekey-v1.md says a member with a key of its own receives it.
func (m *groupMember) install(msg rekey.Message) error {
	if msg.DeviceID != m.id || msg.WrapKeyID != dek.DeviceKeyID(m.id) || msg.WrapKeyVersion != "v1" {
		return fmt.Errorf("rekey for %s sealed under %s@%s, want %s@v1", msg.DeviceID, msg.WrapKeyID, msg.WrapKeyVersion, dek.DeviceKeyID(m.id))
	}
	k, err := msg.Open(m.own)
	if err != nil {
		return err
	}
	a, err := seal.NewAEAD(k)
	clear(k)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.grp[msg.NewVersion] = a
	m.mu.Unlock()
	return nil
}

// TestGroupKeyRotation rotates a group key (group/icu, five members that
// each also hold a device key of their own, v1 past the policy's max age)
// with the controller, through the real Mosquitto and PostgreSQL. Each
// member receives the new group version as a rekey sealed under its own
// device DEK (wrap_key_id device/<member>): it opens with that key and with
// no other member's nor with the group's old version; a device outside the
// group receives nothing. Members' messages under the new version decrypt.
// Adoption follows keyops.Adopt's rule for a group key: the version stays
// pending, and the old one active, until every member has sent a message
// under it; then the old version turns decrypt_only (a late message under
// it still decrypts) and is revoked after the grace period. No message
// fails to decrypt, and no device key is rotated along.
func TestGroupKeyRotation(t *testing.T) {
	const (
		group = "group/icu"
		grace = 5 * time.Second
	)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e := newEnv(t, nil)
	now := time.Now()

	members := make([]*groupMember, 5)
	var memberIDs []string
	for i := range members {
		id := fmt.Sprintf("icu-%d", i)
		memberIDs = append(memberIDs, id)
		members[i] = &groupMember{id: id, own: createKey(ctx, t, e, dek.DeviceKeyID(id), nil, now), grp: map[string]cipher.AEAD{}}
	}
	const outsider = "ward-7"
	outsiderKey := createKey(ctx, t, e, dek.DeviceKeyID(outsider), nil, now)
	groupV1 := createKey(ctx, t, e, group, memberIDs, now.Add(-2*time.Hour))
	for _, m := range members {
		m.grp["v1"] = groupV1
	}

	b := mosquittotest.Start(t, mosquittotest.Options{})

	runCtx, stop := context.WithCancel(ctx)
	var bg sync.WaitGroup
	defer func() { stop(); bg.Wait() }()
	opener, metrics := startBackend(runCtx, t, &bg, e.store, e.kms, e.ops, grace)

	tl := connectBackend(runCtx, t, b, opener)
	decrypted := func(ref string) int {
		tl.mu.Lock()
		defer tl.mu.Unlock()
		return tl.byRef[ref]
	}

	// Devices: one connection carries every command topic; each rekey is
	// kept, by the device id in its topic, and installed by its member.
	var (
		rkMu   sync.Mutex
		rekeys = map[string][][]byte{}
	)
	byID := map[string]*groupMember{}
	for _, m := range members {
		byID[m.id] = m
	}
	connectClient(t, b, "fleet-cmd", func(c mqtt.Client) {
		c.Subscribe("iot-2/type/+/id/+/cmd/rekey/fmt/json", 2, func(_ mqtt.Client, msg mqtt.Message) {
			id := strings.Split(msg.Topic(), "/")[4]
			rkMu.Lock()
			rekeys[id] = append(rekeys[id], msg.Payload())
			rkMu.Unlock()
			m := byID[id]
			if m == nil {
				return
			}
			p, err := rekey.Parse(msg.Payload())
			if err == nil {
				err = m.install(p)
			}
			if err != nil {
				t.Errorf("rekey for %s: %v", id, err)
			}
		}).Wait()
	})

	pubc := connectClient(t, b, "fleet-pub", nil)
	sealer := seal.New(rand.Reader)
	published := 0
	publish := func(deviceID, keyID, version string, a cipher.AEAD) {
		t.Helper()
		msg, err := sealer.AppendShapeA(nil, a, seal.Envelope{DeviceID: deviceID, Timestamp: time.Now().Unix(), KeyID: keyID, KeyVersion: version},
			[]byte(fmt.Sprintf(`{"seq":%d}`, published)), nil)
		if err != nil {
			t.Fatal(err)
		}
		if tok := pubc.Publish(topicOf(deviceID), 1, false, msg); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish for %s: %v", deviceID, tok.Error())
		}
		published++
	}

	pub, err := rotation.NewMQTTPublisher(ctx, rotation.MQTTOptions{Brokers: []string{b.SSLURL}, ClientID: "rotation", TLS: b.ClientTLS("rotation")})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	ctl, err := rotation.NewController(rotation.ControllerOptions{
		Policy: rotation.Policy{MaxAge: time.Hour, GracePeriod: grace, SharePerWindow: 0.5, ShareWindow: time.Hour,
			RetryInterval: time.Second, Tick: 200 * time.Millisecond, RootRotationOff: true},
		Ops: e.ops, Lease: &rotation.PGLease{DSN: e.dsn}, Publisher: pub, DeviceType: "monitor", Metrics: metrics,
	})
	if err != nil {
		t.Fatal(err)
	}
	bg.Add(1)
	go func() { defer bg.Done(); ctl.Run(runCtx) }()

	versionOf := func(keyID, version string) registry.Entry {
		t.Helper()
		x, err := e.store.Get(ctx, keyID, version)
		if err != nil {
			t.Fatalf("%s@%s: %v", keyID, version, err)
		}
		return x
	}

	// 1. The controller rotates the group key; every member installs v2
	// from a rekey sealed under its own device key.
	wait.Detail(t, 20*time.Second, "every member to install group v2", func() (bool, string) {
		n := 0
		for _, m := range members {
			if m.groupKey("v2") != nil {
				n++
			}
		}
		return n == len(members), fmt.Sprintf("%d of %d installed", n, len(members))
	})
	v2 := versionOf(group, "v2")
	if !v2.Rotation.Pending || v2.Rotation.Supersedes != "v1" || v2.State != dek.StateActive {
		t.Fatalf("group v2: pending %v supersedes %q state %s", v2.Rotation.Pending, v2.Rotation.Supersedes, v2.State)
	}
	if !slices.Equal(v2.Devices, memberIDs) {
		t.Fatalf("group v2 allows %v, want the members %v", v2.Devices, memberIDs)
	}
	rkMu.Lock()
	for _, m := range members {
		if len(rekeys[m.id]) == 0 {
			t.Fatalf("%s: no rekey", m.id)
		}
		for _, payload := range rekeys[m.id] {
			p, err := rekey.Parse(payload)
			if err != nil {
				t.Fatal(err)
			}
			if p.KeyID != group || p.NewVersion != "v2" || p.WrapKeyID != dek.DeviceKeyID(m.id) || p.WrapKeyVersion != "v1" {
				t.Fatalf("%s: rekey %+v, want %s@v2 sealed under %s@v1", m.id, p.Header, group, dek.DeviceKeyID(m.id))
			}
			k, err := p.Open(m.own)
			if err != nil {
				t.Fatalf("%s: own device key does not open its rekey: %v", m.id, err)
			}
			clear(k)
			// No other key opens it: not another member's device key, not
			// the outsider's, not the group's old version.
			for _, o := range members {
				if o != m {
					if _, err := p.Open(o.own); !errors.Is(err, rekey.ErrAuth) {
						t.Fatalf("%s's rekey opened with %s's device key (err %v)", m.id, o.id, err)
					}
				}
			}
			for name, a := range map[string]cipher.AEAD{"the outsider's key": outsiderKey, "group v1": groupV1} {
				if _, err := p.Open(a); !errors.Is(err, rekey.ErrAuth) {
					t.Fatalf("%s's rekey opened with %s (err %v)", m.id, name, err)
				}
			}
		}
	}
	rkMu.Unlock()

	// 2. Four members send under v2: it decrypts, and they are recorded
	// as adopters, but the version stays pending and v1 active while one
	// member has not used it. The outsider keeps sending under its key.
	for _, m := range members[:4] {
		publish(m.id, group, "v2", m.groupKey("v2"))
	}
	publish(outsider, "", "v1", outsiderKey)
	wait.Detail(t, 15*time.Second, "four members recorded as adopters", func() (bool, string) {
		x := versionOf(group, "v2")
		return len(x.Rotation.AdoptedBy) == 4, fmt.Sprintf("adopted by %v", x.Rotation.AdoptedBy)
	})
	if d := decrypted(group + "@v2"); d != 4 {
		t.Fatalf("%d messages decrypted under %s@v2, want 4", d, group)
	}
	if x := versionOf(group, "v2"); !x.Rotation.Pending || !x.Rotation.AdoptedAt.IsZero() {
		t.Fatalf("group v2 adopted with one member left: pending %v adopted at %v by %v", x.Rotation.Pending, x.Rotation.AdoptedAt, x.Rotation.AdoptedBy)
	}
	if x := versionOf(group, "v1"); x.State != dek.StateActive {
		t.Fatalf("group v1 is %s before every member adopted v2", x.State)
	}

	// 3. The last member first sends a reading buffered under v1, then
	// one under v2: the adoption completes and v1 turns decrypt_only.
	last := members[4]
	publish(last.id, group, "v1", groupV1)
	publish(last.id, group, "v2", last.groupKey("v2"))
	// keyops.Adopt records the adoption and then demotes v1: two registry
	// updates, so wait for both before reading either.
	wait.Detail(t, 15*time.Second, "group v2 adopted and v1 demoted", func() (bool, string) {
		x := versionOf(group, "v2")
		old := versionOf(group, "v1")
		return !x.Rotation.Pending && !x.Rotation.AdoptedAt.IsZero() && old.State != dek.StateActive,
			fmt.Sprintf("pending %v adopted by %v, v1 %s", x.Rotation.Pending, x.Rotation.AdoptedBy, old.State)
	})
	v2 = versionOf(group, "v2")
	v1 := versionOf(group, "v1")
	if v1.State != dek.StateDecryptOnly && v1.State != dek.StateRevoked {
		t.Fatalf("group v1 is %s after the adoption, want decrypt_only", v1.State)
	}
	if v1.State == dek.StateDecryptOnly {
		if !v1.Rotation.RevokeAfter.Equal(v2.Rotation.AdoptedAt.Add(grace)) {
			t.Fatalf("group v1 revoke after %v, want adoption %v + grace %s", v1.Rotation.RevokeAfter, v2.Rotation.AdoptedAt, grace)
		}
		// Within the grace period a late reading under v1 still decrypts.
		publish(members[0].id, group, "v1", groupV1)
	}

	// 4. After the grace period the controller revokes v1.
	wait.Detail(t, 20*time.Second, "group v1 revoked", func() (bool, string) {
		x := versionOf(group, "v1")
		return x.State == dek.StateRevoked, string(x.State)
	})

	// 5. Nothing failed; the outsider got no rekey and no device key
	// was rotated along with the group's.
	wait.Detail(t, 15*time.Second, "every published message opened", func() (bool, string) {
		tl.mu.Lock()
		defer tl.mu.Unlock()
		return len(tl.records)+sumMap(tl.failures) >= published, fmt.Sprintf("%d of %d", len(tl.records)+sumMap(tl.failures), published)
	})
	stop()
	bg.Wait()
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if len(tl.failures) > 0 {
		t.Fatalf("messages failed to decrypt: %v", tl.failures)
	}
	if len(tl.records) != published {
		t.Fatalf("%d records for %d messages", len(tl.records), published)
	}
	if tl.byRef[group+"@v2"] != len(members) || tl.byRef[group+"@v1"] == 0 {
		t.Fatalf("records by key: %v", tl.byRef)
	}
	rkMu.Lock()
	defer rkMu.Unlock()
	if n := len(rekeys[outsider]); n != 0 {
		t.Fatalf("the outsider received %d rekeys", n)
	}
	for id := range rekeys {
		if byID[id] == nil {
			t.Fatalf("a rekey went to %s, not a member", id)
		}
	}
	es, err := e.store.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range es {
		if x.KeyID != group && x.Version != "v1" {
			t.Fatalf("%s@%s exists: a device key was rotated along", x.KeyID, x.Version)
		}
	}
	t.Logf("records by key %v; rekeys per member %d", tl.byRef, len(rekeys[members[0].id]))
}
