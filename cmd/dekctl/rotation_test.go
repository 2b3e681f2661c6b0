package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/rotation"
)

func TestRotateAndStatus(t *testing.T) {
	dir, cfg := setup(t, "")
	must(t, cfg, "root", "create", "--name", "main")
	for _, d := range []string{"d1", "d2"} {
		must(t, cfg, "provision", "--device", d, "--out", filepath.Join(dir, d+".json"))
	}
	must(t, cfg, "provision", "--device", "d3", "--group", "ward", "--out", filepath.Join(dir, "d3.json"))

	usage := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"rotate nothing", []string{"rotate"}, exitUsage, "rotate: give exactly one of --device ID, --group NAME or --all"},
		{"rotate two selectors", []string{"rotate", "--device", "d1", "--all"}, exitUsage, "give exactly one"},
		{"rotate bad device", []string{"rotate", "--device", "a b"}, exitUsage, `rotate: device id "a b"`},
		{"rotate bad group", []string{"rotate", "--group", "a b"}, exitUsage, `rotate: group "a b"`},
		{"rotate unknown device", []string{"rotate", "--device", "none"}, exitNotFound, "no active key version for device none"},
		{"rotate unknown group", []string{"rotate", "--group", "none"}, exitNotFound, "no active key version for group none"},
		{"rotate argument", []string{"rotate", "--all", "now"}, exitUsage, `rotate: unexpected argument "now"`},
		{"rotation without status", []string{"rotation"}, exitUsage, "rotation: want status"},
		{"rotation other", []string{"rotation", "start"}, exitUsage, "rotation: want status"},
		{"rotation status argument", []string{"rotation", "status", "x"}, exitUsage, `rotation status: unexpected argument "x"`},
		{"rotation status bad flag", []string{"rotation", "status", "--png"}, exitUsage, "flag provided but not defined: -png"},
	}
	for _, tc := range usage {
		t.Run(tc.name, func(t *testing.T) {
			r := runT(t, nil, append([]string{"--config", cfg}, tc.args...)...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("exit %d (want %d), stderr %q (want %q)", r.code, tc.code, r.stderr, tc.stderr)
			}
		})
	}

	r := runT(t, nil, "--config", cfg, "rotate", "--device", "d1")
	if r.code != exitOK || !strings.Contains(r.stdout, "rotating device/d1: v2 created, pending delivery") ||
		!strings.Contains(r.stdout, "1 rotations started, 0 already pending, 0 failed") ||
		!strings.Contains(r.stderr, "rotation.enabled is false") {
		t.Fatalf("rotate --device d1: %+v", r)
	}
	out := must(t, cfg, "rotate", "--device", "d1")
	if !strings.Contains(out, "device/d1: v2 already pending (0 deliveries so far)") {
		t.Fatal(out)
	}
	out = must(t, cfg, "rotate", "--group", "ward")
	if !strings.Contains(out, "rotating group/ward: v2 created") {
		t.Fatal(out)
	}

	out = must(t, cfg, "rotation", "status")
	for _, want := range []string{
		"Policy: max DEK age 30d, grace 3d, retry 6h, message limit 2147483648 (rotation enabled: no)",
		"Keys               3", "  current          1  (0 due for rotation)", "  pending          2", "  stragglers       0",
		"Versions: active 5, decrypt_only 0, revoked 0, shredded 0",
		"  0-3d      |########################################| 3",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}

	chart := filepath.Join(dir, "age.png")
	out = must(t, cfg, "rotation", "status", "--json", "--chart", chart)
	var st struct {
		Keys, Current, Pending, Stragglers int
		Versions                           map[string]int
		Ages                               []rotation.AgeBucket
		MaxAge                             float64 `json:"max_dek_age_seconds"`
		Enabled                            bool    `json:"rotation_enabled"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("json: %v\n%s", err, out)
	}
	if st.Keys != 3 || st.Current != 1 || st.Pending != 2 || st.Versions["active"] != 5 || len(st.Ages) != rotation.AgeBuckets ||
		st.Ages[0].Count != 3 || st.MaxAge != (720*time.Hour).Seconds() || st.Enabled {
		t.Fatalf("json status: %+v", st)
	}
	f, err := os.Open(chart)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(f)
	f.Close()
	if err != nil || img.Bounds().Dx() != chartW || img.Bounds().Dy() != chartH {
		t.Fatalf("chart: %v %v", err, img)
	}

	out = must(t, cfg, "rotate", "--all")
	if !strings.Contains(out, "rotating device/d2: v2 created") || !strings.Contains(out, "1 rotations started, 2 already pending, 0 failed") {
		t.Fatal(out)
	}
}

// statusFixture is a fleet of 120 device keys under a 30-day policy at a
// fixed time: most keys young, some overdue, 20 pending of which 13 are
// stragglers, 40 superseded versions revoked and 2 shredded.
func statusFixture(now time.Time) []registry.Entry {
	var es []registry.Entry
	w := kms.Wrapped{RootKeyID: "main", RootKeyVersion: "1", Ciphertext: []byte{1}}
	for i := range 120 {
		id := dek.DeviceKeyID(fmt.Sprintf("dev-%03d", i))
		age := time.Duration(i*i/16) * time.Hour // 0 .. 885h, most keys young
		if i < 40 {
			es = append(es, registry.Entry{KeyID: id, Version: "v1", State: dek.StateRevoked, Wrapped: w, CreatedAt: now.Add(-age - 800*time.Hour)})
		}
		es = append(es, registry.Entry{KeyID: id, Version: "v2", State: dek.StateActive, Wrapped: w, CreatedAt: now.Add(-age)})
		if i >= 60 && i < 80 {
			p := registry.Entry{KeyID: id, Version: "v3", State: dek.StateActive, Wrapped: w, CreatedAt: now.Add(-time.Hour),
				Rotation: registry.Rotation{Pending: true, Supersedes: "v2", Trigger: keyops.TriggerAge, RekeyAttempts: 1}}
			if i < 73 {
				p.CreatedAt = now.Add(-8 * time.Hour)
				p.Rotation.RekeyAttempts = 3
			}
			es = append(es, p)
		}
	}
	es = append(es, registry.Entry{KeyID: "device/gone", Version: "v1", State: dek.StateShredded, CreatedAt: now.Add(-100 * time.Hour)},
		registry.Entry{KeyID: "device/gone", Version: "v2", State: dek.StateShredded, CreatedAt: now.Add(-10 * time.Hour)})
	return es
}

// TestStatusTextGolden compares the status text of a fixed fleet with
// testdata/rotation-status.golden (DECRYPTD_UPDATE_GOLDEN=1 rewrites it),
// and draws the same fleet's chart to testdata/rotation-status.png for a
// look.
func TestStatusTextGolden(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	c := config.Default()
	r := c.Rotation
	r.Enabled = true
	st, err := rotation.Summarize(statusFixture(now), now, policyOf(r))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := writeStatusText(&b, st, r); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "rotation-status.golden")
	if os.Getenv("DECRYPTD_UPDATE_GOLDEN") == "1" {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		var img bytes.Buffer
		if err := writeChart(&img, st); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("testdata", "rotation-status.png"), img.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with DECRYPTD_UPDATE_GOLDEN=1 to create it)", err)
	}
	if got := b.String(); got != string(want) {
		t.Fatalf("status text differs from %s:\n--- got\n%s--- want\n%s", golden, got, want)
	}
	// The counts the fixture was built with.
	if st.Keys != 120 || st.Current != 100 || st.Pending != 7 || st.Stragglers != 13 || st.Versions["revoked"] != 40 ||
		st.Versions["shredded"] != 2 || len(st.StragglerKeys) != 13 {
		t.Fatalf("status %+v", st)
	}
}

// TestStatusSaysWhyDueKeysWait: ten keys, all due by age, under a share
// of 0.1 per day (one a day): once one rotation started two hours ago, the
// status says the share is spent and that the next may start 24 hours
// after it; an operator's rotation does not count against the share; a
// pause is named as the reason over the budget.
func TestStatusSaysWhyDueKeysWait(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	w := kms.Wrapped{RootKeyID: "main", RootKeyVersion: "1", Ciphertext: []byte{1}}
	fleet := func(trigger string) []registry.Entry {
		var es []registry.Entry
		for i := range 10 {
			id := dek.DeviceKeyID(fmt.Sprintf("dev-%d", i))
			es = append(es, registry.Entry{KeyID: id, Version: "v1", State: dek.StateActive, Wrapped: w, CreatedAt: now.Add(-40 * 24 * time.Hour)})
		}
		// dev-0's v1 was rotated two hours ago; v2 was adopted since.
		es[0].State = dek.StateDecryptOnly
		es = append(es, registry.Entry{KeyID: "device/dev-0", Version: "v2", State: dek.StateActive, Wrapped: w, CreatedAt: now.Add(-2 * time.Hour),
			Rotation: registry.Rotation{Supersedes: "v1", Trigger: trigger, AdoptedAt: now.Add(-time.Hour)}})
		return es
	}
	c := config.Default()
	r := c.Rotation
	r.Enabled = true
	for _, tc := range []struct {
		name, trigger string
		waiting       string
		until         time.Time
	}{
		{"share spent", keyops.TriggerAge, "the share per window is spent (share_per_day): 1 of 1", now.Add(22 * time.Hour)},
		{"operator rotations do not count", keyops.TriggerOperator, "", time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := rotation.Summarize(fleet(tc.trigger), now, policyOf(r))
			if err != nil {
				t.Fatal(err)
			}
			if st.DueByAge != 9 || st.Due != 9 {
				t.Fatalf("due %d by age %d, want 9", st.Due, st.DueByAge)
			}
			if tc.waiting == "" {
				// One may start: the other eight wait for the next day.
				if !strings.Contains(st.Waiting, "1 of the 9 due start at the leader's next scan") || !st.WaitUntil.Equal(now.Add(24*time.Hour)) {
					t.Fatalf("waiting %q until %s", st.Waiting, st.WaitUntil)
				}
				return
			}
			if !strings.HasPrefix(st.Waiting, tc.waiting) || !st.WaitUntil.Equal(tc.until) {
				t.Fatalf("waiting %q until %s, want %q until %s", st.Waiting, st.WaitUntil, tc.waiting, tc.until)
			}
			var b bytes.Buffer
			if err := writeStatusText(&b, st, r); err != nil {
				t.Fatal(err)
			}
			if want := "next start at 2026-03-02T10:00:00Z (in 22h)"; !strings.Contains(b.String(), want) {
				t.Fatalf("status text lacks %q:\n%s", want, b.String())
			}
			js, err := json.Marshal(statusJSON{FleetStatus: st})
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{`"waiting":"the share per window is spent`, `"wait_until":"2026-03-02T10:00:00Z"`, `"budget":{"limit":1,"used":1,"next_at":"2026-03-02T10:00:00Z"}`} {
				if !strings.Contains(string(js), want) {
					t.Fatalf("status JSON lacks %s:\n%s", want, js)
				}
			}
		})
	}
}

func TestChartGlyphs(t *testing.T) {
	if len(fontBits) != len(fontChars)*glyphW*glyphH {
		t.Fatalf("font: %d cells for %d glyphs", len(fontBits), len(fontChars))
	}
	if glyph('a', 0, 3) != glyph('A', 0, 3) || glyph('~', 2, 2) {
		t.Fatal("lower case draws as upper case, unknown runes blank")
	}
	for _, tc := range []struct{ n, want int }{{0, 5}, {3, 5}, {6, 10}, {11, 20}, {20, 20}, {21, 50}, {999, 1000}} {
		if got := niceMax(tc.n); got != tc.want {
			t.Errorf("niceMax(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}
