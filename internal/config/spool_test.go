package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSpoolSection(t *testing.T) {
	var s Spool
	s.applyDefaults()
	if s.On() || s.MaxBytes != DefaultSpoolMaxBytes || s.KeyWait != time.Second || s.MaxBackoff != time.Second {
		t.Fatalf("defaults: %+v", s)
	}
	s.Dir = "/var/lib/decryptd/spool"
	if !s.On() {
		t.Fatal("a dir turns the spool on")
	}
	off := false
	s.Enabled = &off
	if s.On() {
		t.Fatal("enabled: false turns it off")
	}
	on := true
	for _, tc := range []struct {
		s     Spool
		field string
	}{
		{Spool{Enabled: &on, MaxBytes: 1 << 30, KeyWait: time.Second, MaxBackoff: time.Second}, "spool.dir"},
		{Spool{Dir: "x", MaxBytes: 1000, KeyWait: time.Second, MaxBackoff: time.Second}, "spool.max_bytes"},
		{Spool{Dir: "x", MaxBytes: 1 << 30, KeyWait: -1, MaxBackoff: time.Second}, "spool.key_wait"},
		{Spool{Dir: "x", MaxBytes: 1 << 30, KeyWait: time.Second, MaxBackoff: time.Millisecond}, "spool.max_backoff"},
	} {
		var ck checker
		tc.s.validate(&ck)
		if len(ck.probs) != 1 || ck.probs[0].Field != tc.field {
			t.Errorf("%+v: problems %+v, want one for %s", tc.s, ck.probs, tc.field)
		}
	}
}

func TestSpoolCheckDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s := Spool{Dir: dir}
	if p := s.checkDir(); p != "" {
		t.Fatalf("a creatable dir: %s", p)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if p := s.checkDir(); !strings.Contains(p, "chmod 700") {
		t.Fatalf("0755 dir: %q", p)
	}
	os.Chmod(dir, 0o700)
	if err := os.WriteFile(filepath.Join(dir, "0000000000000001.seg"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if p := s.checkDir(); !strings.Contains(p, "0000000000000001.seg") {
		t.Fatalf("0644 segment: %q", p)
	}
}
