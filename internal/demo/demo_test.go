package demo_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/demo"
)

// syncBuffer is a bytes.Buffer safe for the sinks' and the fleet's
// concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestDemo runs the demo for a few seconds and checks that records came
// out, that the metrics counted them and the bad messages by reason, and
// that the demo stopped cleanly.
func TestDemo(t *testing.T) {
	dir := t.TempDir()
	var out, logs syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	sum, err := demo.Run(ctx, demo.Options{Stdout: &out, Stderr: &logs, Dir: dir, Interval: 40 * time.Millisecond})
	if err != nil {
		t.Fatalf("demo: %v\nlog:\n%s", err, logs.String())
	}
	if sum.Published == 0 || sum.Delivered != sum.Published {
		t.Errorf("published %d good messages, %d records delivered", sum.Published, sum.Delivered)
	}
	bad := 0
	for _, r := range []string{"auth_failed", "unknown_key", "key_revoked", "topic_mismatch", "malformed", "replay"} {
		if sum.BadPublished[r] == 0 {
			t.Errorf("no bad message of reason %s was sent in the run", r)
		}
		if sum.Failures[r] != sum.BadPublished[r] {
			t.Errorf("failures{%s} = %d, sent %d", r, sum.Failures[r], sum.BadPublished[r])
		}
		bad += sum.BadPublished[r]
	}
	if sum.DeadLettered != bad {
		t.Errorf("dead-lettered %d, sent %d bad", sum.DeadLettered, bad)
	}
	// One unwrap per key version used, and two per rekey (the new DEK,
	// and the key it is sealed under).
	if sum.KMSUnwraps == 0 || sum.KMSUnwraps > len(decrypt.Reasons())+2*sum.RekeysSent+1 {
		t.Errorf("KMS unwraps %d: want one per key version used and two per rekey (%d)", sum.KMSUnwraps, sum.RekeysSent)
	}
	// The rotation shown live: rekey sent, taken by the device, adopted,
	// and records under the new version.
	if sum.RotatedDevice != "monitor-001" || sum.RotatedToVersion != "v2" || sum.RekeysSent < 1 || sum.Adoptions != 1 || sum.RotatedRecords == 0 {
		t.Errorf("rotation: device %q to %q, %d rekeys, %d adoptions, %d records under it", sum.RotatedDevice, sum.RotatedToVersion, sum.RekeysSent, sum.Adoptions, sum.RotatedRecords)
	}
	text := out.String()
	for _, want := range []string{"metrics: http://127.0.0.1:", "monitor-001 key v1: {", "bed-12 key v1: {", "records delivered", "auth_failed",
		"demo: rotating monitor-001's key now", "fleet: monitor-001 took a rekey: key v2 installed", "monitor-001 key v2: {", "rotation            monitor-001: "} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	recs, err := os.ReadFile(filepath.Join(dir, "records.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(recs, []byte("\n")); n != sum.Delivered {
		t.Errorf("records file holds %d lines, metrics say %d", n, sum.Delivered)
	}
	// The analytics record: same records, patient ids pseudonymized, notes
	// and metadata gone.
	an, err := os.ReadFile(filepath.Join(dir, "analytics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(an, []byte("\n")); n != sum.Delivered {
		t.Errorf("analytics file holds %d lines, metrics say %d", n, sum.Delivered)
	}
	if !bytes.Contains(recs, []byte(`"patient_id":"P-`)) || !bytes.Contains(an, []byte(`"patient_id":"pn:v1:`)) ||
		bytes.Contains(an, []byte(`"P-`)) || bytes.Contains(an, []byte(`"notes"`)) || bytes.Contains(an, []byte(`"metadata"`)) {
		t.Errorf("care vs analytics records: the policy did not apply\ncare: %.300s\nanalytics: %.300s", recs, an)
	}
	// The summary shows one record as each sink holds it.
	if !strings.Contains(sum.CareSample, `"notes"`) || sum.AnalyticsSample == "" ||
		strings.Contains(sum.AnalyticsSample, `"notes"`) || !strings.Contains(sum.AnalyticsSample, `"pn:v1:`) {
		t.Errorf("summary samples: care %.200q, analytics %.200q", sum.CareSample, sum.AnalyticsSample)
	}
	// Plaintext readings never reach the log.
	for _, secret := range []string{"patient_id", "heart_rate", "P-"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the daemon log holds %q", secret)
		}
	}
	for _, want := range []string{"rotation started", "rotation rekey sent", "rotation version adopted", "rotation version decrypt_only"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("daemon log lacks %q", want)
		}
	}
	if !strings.Contains(logs.String(), "stopped") {
		t.Errorf("daemon log does not show a clean stop:\n%s", logs.String())
	}
}
