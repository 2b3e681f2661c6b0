package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRotationDefaults(t *testing.T) {
	c, err := Parse([]byte(base), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	r := c.Rotation
	want := Rotation{
		Enabled: false, MaxDEKAge: 720 * time.Hour, GracePeriod: 72 * time.Hour, SharePerDay: 0.10,
		RetryInterval: 6 * time.Hour, MessageLimit: 2147483648, PauseThreshold: 0.2, PauseMinSample: 20,
		CommandTopic: "iot-2/type/{device_type}/id/{device_id}/cmd/rekey/fmt/json", DeviceType: "monitor",
		RootKeyMaxAge: 8760 * time.Hour, Tick: 10 * time.Second, FlushInterval: 5 * time.Minute,
	}
	got := r
	got.RotateRootKey = nil
	if got != want {
		t.Fatalf("rotation defaults\n got %+v\nwant %+v", got, want)
	}
	if !r.RootRotationEnabled() {
		t.Fatal("rotate_root_key defaults to true")
	}
}

func TestRotationParsed(t *testing.T) {
	text := base + `rotation:
  enabled: true
  max_dek_age: 24h
  grace_period: 1h
  share_per_day: 0.5
  retry_interval: 30m
  message_limit: 1000000
  pause_threshold: 0.3
  pause_min_sample: 5
  command_topic: fleet/{device_type}/{device_id}/rekey
  device_type: pump
  rotate_root_key: false
  root_key_max_age: 2160h
  tick: 1s
  flush_interval: 30s
`
	c, err := Parse([]byte(text), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	r := c.Rotation
	if !r.Enabled || r.MaxDEKAge != 24*time.Hour || r.GracePeriod != time.Hour || r.SharePerDay != 0.5 ||
		r.RetryInterval != 30*time.Minute || r.MessageLimit != 1000000 || r.PauseThreshold != 0.3 || r.PauseMinSample != 5 ||
		r.CommandTopic != "fleet/{device_type}/{device_id}/rekey" || r.DeviceType != "pump" || r.RootRotationEnabled() ||
		r.RootKeyMaxAge != 2160*time.Hour || r.Tick != time.Second || r.FlushInterval != 30*time.Second {
		t.Fatalf("rotation = %+v", r)
	}
}

func TestRotationEnv(t *testing.T) {
	c, err := Parse([]byte(base), mapEnv(map[string]string{
		"DECRYPTD_ROTATION_ENABLED":         "true",
		"DECRYPTD_ROTATION_SHARE_PER_DAY":   "0.25",
		"DECRYPTD_ROTATION_MESSAGE_LIMIT":   "4294967296",
		"DECRYPTD_ROTATION_MAX_DEK_AGE":     "48h",
		"DECRYPTD_ROTATION_ROTATE_ROOT_KEY": "false",
	}))
	if err != nil {
		t.Fatal(err)
	}
	r := c.Rotation
	if !r.Enabled || r.SharePerDay != 0.25 || r.MessageLimit != 1<<32 || r.MaxDEKAge != 48*time.Hour || r.RootRotationEnabled() {
		t.Fatalf("rotation = %+v", r)
	}
	for _, tc := range []struct{ name, val, want string }{
		{"DECRYPTD_ROTATION_SHARE_PER_DAY", "lots", `DECRYPTD_ROTATION_SHARE_PER_DAY (rotation.share_per_day): want a number, got "lots"`},
		{"DECRYPTD_ROTATION_MESSAGE_LIMIT", "-1", `DECRYPTD_ROTATION_MESSAGE_LIMIT (rotation.message_limit): want a non-negative integer`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(base), mapEnv(map[string]string{tc.name: tc.val}))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestRotationInvalid(t *testing.T) {
	cases := []struct {
		name, section string
		want          []string
	}{
		{"negative age", "max_dek_age: -1h", []string{"rotation.max_dek_age: must be positive, got -1h0m0s"}},
		{"negative grace", "grace_period: -1s", []string{"rotation.grace_period: must be positive"}},
		{"share above one", "share_per_day: 1.5", []string{"rotation.share_per_day: want more than 0 and at most 1, got 1.5"}},
		{"share negative", "share_per_day: -0.1", []string{"rotation.share_per_day: want more than 0 and at most 1, got -0.1"}},
		{"retry negative", "retry_interval: -5m", []string{"rotation.retry_interval: must be positive"}},
		{"message limit over nist", "message_limit: 4294967297", []string{"rotation.message_limit: at most 4294967296"}},
		{"pause threshold", "pause_threshold: 2", []string{"rotation.pause_threshold: want more than 0 and at most 1, got 2"}},
		{"pause sample", "pause_min_sample: -3", []string{"rotation.pause_min_sample: must be positive, got -3"}},
		{"topic without device", "command_topic: 'iot-2/type/{device_type}/cmd'", []string{"rotation.command_topic: want exactly one level {device_id}"}},
		{"topic wildcard", "command_topic: 'a/+/{device_id}'", []string{"rotation.command_topic: wildcards not allowed"}},
		{"topic unknown placeholder", "command_topic: 'a/{type}/{device_id}'", []string{`rotation.command_topic: level "{type}": only {device_type} and {device_id}`}},
		{"device type slash", "device_type: 'a/b'", []string{`rotation.device_type: want 1-64 of A-Z a-z 0-9 . _ - (one topic level), got "a/b"`}},
		{"root age", "root_key_max_age: -1h", []string{"rotation.root_key_max_age: must be positive"}},
		{"tick longer than retry", "tick: 2h\n  retry_interval: 1h", []string{"rotation.tick: must not be longer than rotation.retry_interval (1h0m0s), got 2h0m0s"}},
		{"flush negative", "flush_interval: -1s", []string{"rotation.flush_interval: must be positive"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			text := base + "rotation:\n  enabled: true\n  " + tc.section + "\n"
			_, err := Parse([]byte(text), noEnv)
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("err = %v, want a *ValidationError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
	if _, err := Parse([]byte(base+"rotation:\n  enabeld: true\n"), noEnv); err == nil || !strings.Contains(err.Error(), `unknown key "enabeld"`) {
		t.Fatalf("misspelt rotation key: %v", err)
	}
}
