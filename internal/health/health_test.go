package health_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/decryptd/decryptd/internal/health"
	"github.com/decryptd/decryptd/internal/testutil/metrictest"
)

func TestTracker(t *testing.T) {
	reg := prometheus.NewRegistry()
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	tr, err := health.New(health.Options{Registerer: reg, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range health.Causes {
		if v := metrictest.Value(t, reg, "decryptd_degraded", "cause", string(c)); v != 0 {
			t.Errorf("degraded{%s} = %v at start", c, v)
		}
	}
	if r := tr.Report(); r.Status != "ok" || len(r.Causes) != 4 {
		t.Fatalf("start: %+v", r)
	}

	tr.Set(health.Sink, "records", true, "down")
	now = now.Add(time.Minute)
	tr.Set(health.Sink, "archive", true, "down")
	r := tr.Report()
	s := r.Causes[health.Sink]
	if r.Status != "degraded" || !s.Degraded || !s.Since.Equal(now.Add(-time.Minute)) || s.Reason != "archive: down; records: down" ||
		strings.Join(s.Parts, ",") != "archive,records" {
		t.Fatalf("two sinks down: %+v %+v", r, s)
	}
	tr.Set(health.Sink, "records", false, "")
	if s := tr.Report().Causes[health.Sink]; !s.Degraded || !s.Since.Equal(now.Add(-time.Minute)) {
		t.Fatalf("one still down: %+v", s)
	}
	if v := metrictest.Value(t, reg, "decryptd_degraded", "cause", "sink"); v != 1 {
		t.Errorf("degraded{sink} = %v", v)
	}
	tr.Set(health.Sink, "archive", false, "")
	if tr.Degraded(health.Sink) {
		t.Fatal("still degraded")
	}

	down := true
	tr.Probe(health.Broker, func() (bool, string) { return down, "mqtt not connected" })
	if v := metrictest.Value(t, reg, "decryptd_degraded", "cause", "broker"); v != 1 {
		t.Errorf("degraded{broker} = %v", v)
	}
	down = false
	if v := metrictest.Value(t, reg, "decryptd_degraded", "cause", "broker"); v != 0 {
		t.Errorf("degraded{broker} = %v after the probe cleared", v)
	}

	tr.Set(health.KMS, "", true, "unreachable")
	b, _ := json.Marshal(tr.Report())
	want := `{"status":"degraded","causes":{"broker":{"degraded":false},"kms":{"degraded":true,"since":"2026-12-04T12:01:00Z","reason":"unreachable"},"registry":{"degraded":false},"sink":{"degraded":false}}}`
	if string(b) != want {
		t.Fatalf("JSON\n got %s\nwant %s", b, want)
	}
	tr.Set("nonsense", "", true, "x") // ignored
	if len(tr.Report().Causes) != 4 {
		t.Fatal("an unknown cause appeared")
	}
}
