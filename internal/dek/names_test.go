package dek

import (
	"strings"
	"testing"
)

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		s                  string
		device, ver, keyID bool
	}{
		{"sensor-001", true, true, true},
		{"gw:ward-7.bed_12", true, false, true},
		{"device/sensor-001", false, false, true},
		{"", false, false, false},
		{"a b", false, false, false},
		{"é", false, false, false},
		{strings.Repeat("a", 32), true, true, true},
		{strings.Repeat("a", 33), true, false, true},
		{strings.Repeat("a", 128), true, false, true},
		{strings.Repeat("a", 129), false, false, true},
		{strings.Repeat("a", 200), false, false, true},
		{strings.Repeat("a", 201), false, false, false},
	} {
		if ValidDeviceID(tc.s) != tc.device || ValidDeviceID([]byte(tc.s)) != tc.device {
			t.Errorf("ValidDeviceID(%q) != %v", tc.s, tc.device)
		}
		if ValidKeyVersion(tc.s) != tc.ver || ValidKeyVersion([]byte(tc.s)) != tc.ver {
			t.Errorf("ValidKeyVersion(%q) != %v", tc.s, tc.ver)
		}
		if ValidKeyID(tc.s) != tc.keyID || ValidKeyID([]byte(tc.s)) != tc.keyID {
			t.Errorf("ValidKeyID(%q) != %v", tc.s, tc.keyID)
		}
	}
}

func TestDeviceKeyID(t *testing.T) {
	id := DeviceKeyID("sensor-001")
	if id != "device/sensor-001" || !IsDeviceKeyID(id) || !IsDeviceKeyIDOf(id, "sensor-001") || IsDeviceKeyIDOf(id, "sensor-00") {
		t.Fatalf("DeviceKeyID = %q", id)
	}
	if d, ok := DeviceOfKeyID(id); !ok || d != "sensor-001" {
		t.Fatalf("DeviceOfKeyID = %q, %v", d, ok)
	}
	for _, k := range []string{"group/icu", "device/", "devices/x", ""} {
		if _, ok := DeviceOfKeyID(k); ok || IsDeviceKeyID(k) {
			t.Errorf("%q taken for a device key id", k)
		}
	}
}
