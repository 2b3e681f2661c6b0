package keys_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/seal"
)

// TestAuditLogOfRealOperations: the audit log written by real operations
// (keyops provisioning and shredding as dekctl does them, and the cache's
// KMS unwraps through an audit recorder, two writers on one file as two
// processes are) verifies untouched, and fails at the changed line when any
// single line is changed; a changed line whose own hash is recomputed fails
// at the next line, and at the anchor for the last line. No DEK appears in
// the log.
func TestAuditLogOfRealOperations(t *testing.T) {
	ctx := context.Background()
	p := newLocal(t)
	store := openPG(t, newPGDSN(t))
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	opsLog, err := audit.Open(ctx, path, audit.WithActor("dekctl"))
	if err != nil {
		t.Fatal(err)
	}
	defer opsLog.Close()
	daemonLog, err := audit.Open(ctx, path, audit.WithActor("decryptd"))
	if err != nil {
		t.Fatal(err)
	}
	defer daemonLog.Close()

	op := newOps(t, provider{name: "local", kms: p, roots: p, rootID: p.RootKeyID()}, store, opsLog)
	var deks [][]byte
	var msgs []message
	for _, dev := range []string{"mon-1", "mon-2"} {
		cred, err := op.Provision(ctx, keyops.ProvisionRequest{DeviceID: dev})
		if err != nil {
			t.Fatal(err)
		}
		deks = append(deks, bytes.Clone(cred.DEK))
		aead, err := seal.NewAEAD(cred.DEK)
		cred.Wipe()
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, sealA(t, aead, dev, "", cred.KeyVersion, 1767225600, readingsFor(len(msgs))))
	}
	cache, _ := newCache(t, store, p, keycache.Options{Audit: auditRecorder(t, daemonLog)})
	d := newDecryptor(t, cache)
	for _, m := range msgs {
		openOK(t, d, m)
	}
	if _, err := op.Shred(ctx, keyops.Selector{DeviceID: "mon-1"}); err != nil {
		t.Fatal(err)
	}
	head := daemonLog.Head() // an anchor kept elsewhere
	if h2 := opsLog.Head(); h2.Seq > head.Seq {
		head = h2
	}

	log, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(log), "\n")
	lines = lines[:len(lines)-1] // after the final newline
	wantActions := []string{"provision/dekctl", "provision/dekctl", "unwrap/decryptd", "unwrap/decryptd", "shred/dekctl"}
	if len(lines) != len(wantActions) {
		t.Fatalf("audit log has %d lines, want %d (%v):\n%s", len(lines), len(wantActions), wantActions, log)
	}
	for i, l := range lines {
		var ev struct{ Action, Actor, Result string }
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatal(err)
		}
		if got := ev.Action + "/" + ev.Actor; got != wantActions[i] || ev.Result != "ok" {
			t.Errorf("line %d: %s result %s, want %s ok", i+1, got, ev.Result, wantActions[i])
		}
	}
	for _, k := range deks {
		for _, enc := range []string{hex.EncodeToString(k), base64.StdEncoding.EncodeToString(k), base64.RawStdEncoding.EncodeToString(k)} {
			if strings.Contains(string(log), enc) {
				t.Fatal("a DEK appears in the audit log")
			}
		}
		clear(k)
	}

	t.Run("untouched verifies", func(t *testing.T) {
		n, err := audit.Verify(bytes.NewReader(log))
		if err != nil || n != len(lines) {
			t.Fatalf("Verify = %d, %v; want %d lines, nil", n, err, len(lines))
		}
		if n, err := keyops.VerifyAudit(bytes.NewReader(log)); err != nil || n != len(lines) {
			t.Fatalf("keyops.VerifyAudit = %d, %v", n, err)
		}
		if _, err := audit.VerifyAnchor(bytes.NewReader(log), head); err != nil {
			t.Fatalf("VerifyAnchor: %v", err)
		}
	})

	keyIDRE := regexp.MustCompile(`"key_id":"device/mon-(\d)"`)
	for i := range lines {
		t.Run("line "+strconv.Itoa(i+1)+" changed", func(t *testing.T) {
			// Attribute the line's key access to the other device.
			changed := keyIDRE.ReplaceAllStringFunc(lines[i], func(s string) string {
				if strings.Contains(s, "mon-1") {
					return strings.Replace(s, "mon-1", "mon-2", 1)
				}
				return strings.Replace(s, "mon-2", "mon-1", 1)
			})
			if changed == lines[i] {
				t.Fatalf("line %d has no key id to change: %s", i+1, lines[i])
			}
			expectBroken(t, withLine(lines, i, changed), i+1)

			// The same forgery with the line's own hash recomputed.
			rehashed := rehash(t, changed)
			if i+1 < len(lines) {
				expectBroken(t, withLine(lines, i, rehashed), i+2)
			} else {
				tampered := withLine(lines, i, rehashed)
				if _, err := audit.Verify(strings.NewReader(tampered)); err != nil {
					t.Fatalf("a rehashed last line is a valid chain by design, Verify said %v", err)
				}
				_, err := audit.VerifyAnchor(strings.NewReader(tampered), head)
				if !errors.Is(err, audit.ErrTruncated) {
					t.Fatalf("VerifyAnchor of a rewritten last line: %v, want ErrTruncated", err)
				}
			}
		})
	}
}

// withLine returns the log with line i replaced.
func withLine(lines []string, i int, line string) string {
	out := append([]string(nil), lines...)
	out[i] = line
	return strings.Join(out, "")
}

// rehash recomputes a line's own hash over its changed content, as a forger
// who knows the format would.
func rehash(t *testing.T, line string) string {
	t.Helper()
	const intro = `,"hash":"`
	i := strings.LastIndex(line, intro)
	if i < 0 {
		t.Fatalf("no hash member in %s", line)
	}
	sum := sha256.Sum256([]byte(line[:i]))
	return line[:i] + intro + hex.EncodeToString(sum[:]) + "\"}\n"
}

// expectBroken checks that Verify stops at line want.
func expectBroken(t *testing.T, log string, want int) {
	t.Helper()
	n, err := audit.Verify(strings.NewReader(log))
	var ce *audit.ChainError
	if !errors.As(err, &ce) || !errors.Is(err, audit.ErrChainBroken) {
		t.Fatalf("Verify of a log with a changed line: %d, %v; want a chain error", n, err)
	}
	if ce.Line != want || n != want-1 {
		t.Fatalf("Verify broke at line %d after %d good lines (%s), want line %d", ce.Line, n, ce.Reason, want)
	}
}

// credential is dekctl's credential file.
type credential struct {
	DeviceID   string `json:"device_id"`
	KeyID      string `json:"key_id"`
	KeyVersion string `json:"key_version"`
	DEK        []byte `json:"dek_b64"`
}

// TestOperatorStoryThroughDekctl runs the operator's key lifecycle with the
// dekctl binary against a daemon-side cache sharing the PostgreSQL registry,
// the local root key file and the audit log: root create, provision (device
// and group keys, credentials read back as a device would), decrypt, root
// rotate + rewrap (every entry on the new root version, every message still
// opening through a fresh cache), shred --device (key_revoked through the
// running cache and a fresh one), then `dekctl audit verify` passes on the
// log both wrote and fails, exit 1 naming the line, once a line is changed.
func TestOperatorStoryThroughDekctl(t *testing.T) {
	ctx := context.Background()
	bin := buildDekctl(t)
	dir := t.TempDir()
	rootFile := filepath.Join(dir, "root-key.json")
	auditPath := filepath.Join(dir, "audit.log")
	dsn := newPGDSN(t)
	ctl := newDekctl(t, bin, kmsLocalYAML(rootFile), dsn, auditPath)

	ctl.must(t, "root", "create", "--name", "e2e-root")
	type device struct{ id, group string }
	var msgs []message
	for _, dv := range []device{{"mon-1", ""}, {"mon-2", ""}, {"bed-1", "ward-9"}, {"bed-2", "ward-9"}} {
		credPath := filepath.Join(dir, "cred-"+dv.id+".json")
		args := []string{"provision", "--device", dv.id, "--out", credPath}
		if dv.group != "" {
			args = append(args, "--group", dv.group)
		}
		ctl.must(t, args...)
		raw, err := os.ReadFile(credPath)
		if err != nil {
			t.Fatal(err)
		}
		var c credential
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatalf("credential file: %v", err)
		}
		clear(raw)
		aead, err := seal.NewAEAD(c.DEK)
		clear(c.DEK)
		if err != nil {
			t.Fatal(err)
		}
		s := &sealer{t: t, cred: keyops.Credential{DeviceID: c.DeviceID, KeyID: c.KeyID, KeyVersion: c.KeyVersion}, aead: aead}
		msgs = append(msgs, s.next(), s.next())
	}

	// The daemon's side: its own handles on the same files and database.
	p, err := local.Open(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	store := openPG(t, dsn)
	daemonLog, err := audit.Open(ctx, auditPath, audit.WithActor("decryptd"))
	if err != nil {
		t.Fatal(err)
	}
	defer daemonLog.Close()
	logger, logs := observedLogger()
	warm, _ := newCache(t, store, p, keycache.Options{Logger: logger, Audit: auditRecorder(t, daemonLog)})
	runCache(t, warm, logs)
	d := newDecryptor(t, warm)
	for _, m := range msgs {
		openOK(t, d, m)
	}

	ctl.must(t, "root", "rotate")
	out := ctl.must(t, "rewrap")
	if !strings.Contains(out, "3 entries, 3 under an older root version: 3 rewrapped") {
		t.Errorf("dekctl rewrap said %q, want 3 entries rewrapped", out)
	}
	entries, err := store.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Wrapped.RootKeyID != "e2e-root" || e.Wrapped.RootKeyVersion != "2" {
			t.Errorf("%s under root %s/%s after rewrap, want e2e-root/2", e.Ref(), e.Wrapped.RootKeyID, e.Wrapped.RootKeyVersion)
		}
	}
	fresh, _ := newCache(t, store, p, keycache.Options{Audit: auditRecorder(t, daemonLog)})
	d2 := newDecryptor(t, fresh)
	for _, m := range msgs {
		openOK(t, d2, m)
	}

	out = ctl.must(t, "shred", "--device", "mon-1")
	if !strings.Contains(out, "shredded device/mon-1@v1") {
		t.Errorf("dekctl shred said %q", out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := warm.ResolveKey(ctx, "device/mon-1", "v1", "mon-1")
		if errors.Is(err, dek.ErrRevoked) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("running cache still resolves device/mon-1@v1 10 s after dekctl shred: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	shredFresh, _ := newCache(t, store, p, keycache.Options{})
	for _, c := range []*keycache.Cache{warm, shredFresh} {
		dd := newDecryptor(t, c)
		for _, m := range msgs {
			if m.deviceID != "mon-1" {
				openOK(t, dd, m)
				continue
			}
			_, err := dd.Open(ctx, decrypt.Message{Topic: m.topic, Payload: m.payload})
			if got := decrypt.Reason(err); got != "key_revoked" {
				t.Errorf("mon-1 message after shred: reason %q (%v), want key_revoked", got, err)
			}
		}
	}

	daemonLog.Close()
	out = ctl.must(t, "audit", "verify", "--file", auditPath)
	log, err := os.ReadFile(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(log), "\n")
	lines = lines[:len(lines)-1]
	if want := "ok, " + strconv.Itoa(len(lines)) + " lines"; !strings.Contains(out, want) {
		t.Errorf("dekctl audit verify said %q, want %q", out, want)
	}
	counts := map[string]int{}
	for _, l := range lines {
		var ev struct{ Action, Actor string }
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatal(err)
		}
		counts[ev.Action+"/"+ev.Actor]++
	}
	// 3 key versions: 3 unwraps before the rotation, 3 after it; mon-1 has
	// one version to shred; the group's second device adds a devices event.
	for action, n := range map[string]int{
		"root_create/dekctl": 1, "provision/dekctl": 3, "devices/dekctl": 1, "unwrap/decryptd": 6,
		"root_rotate/dekctl": 1, "rewrap/dekctl": 3, "shred/dekctl": 1,
	} {
		if counts[action] != n {
			t.Errorf("audit log has %d %s lines, want %d (all: %v)", counts[action], action, n, counts)
		}
	}

	// One changed line: the shred attributed to another key.
	for i, l := range lines {
		if !strings.Contains(l, `"action":"shred"`) {
			continue
		}
		tampered := filepath.Join(t.TempDir(), "audit-tampered.log")
		if err := os.WriteFile(tampered, []byte(withLine(lines, i, strings.Replace(l, "device/mon-1", "device/mon-2", 1))), 0o600); err != nil {
			t.Fatal(err)
		}
		stdout, stderr, code := ctl.run(t, "audit", "verify", "--file", tampered)
		if code != 1 || !strings.Contains(stderr, "broken at line "+strconv.Itoa(i+1)) {
			t.Errorf("dekctl audit verify of a changed log: exit %d, stdout %q, stderr %q; want exit 1, broken at line %d", code, stdout, stderr, i+1)
		}
	}
}
