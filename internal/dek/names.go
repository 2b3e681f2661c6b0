package dek

// The envelope spec's names (docs/envelope-v1.md, "Names"), in one place:
// every package that checks a device id, key id or key version, or builds
// or reads a device's own key id, uses these.

// Length bounds of the spec's names.
const (
	MaxDeviceIDLen   = 128
	MaxKeyVersionLen = 32
	MaxKeyIDLen      = 200
)

// Alphabets of the spec's names, as error texts say them.
const (
	DeviceIDAlphabet   = "1-128 of A-Z a-z 0-9 . _ : -"
	KeyVersionAlphabet = "1-32 of A-Z a-z 0-9 . _ -"
	KeyIDAlphabet      = "1-200 of A-Z a-z 0-9 . _ : / -"
)

// DeviceKeyPrefix begins a device's own key id, device/<device_id>: the key
// id a message implies when it names none.
const DeviceKeyPrefix = "device/"

// DeviceKeyID is the key id a message implies when it names none (spec:
// "where absent it is device/<device_id>").
func DeviceKeyID(deviceID string) string { return DeviceKeyPrefix + deviceID }

// DeviceOfKeyID returns the device of a device's own key id
// (device/<device_id>), or ok=false for any other key id (a group key).
func DeviceOfKeyID(keyID string) (deviceID string, ok bool) {
	if len(keyID) > len(DeviceKeyPrefix) && keyID[:len(DeviceKeyPrefix)] == DeviceKeyPrefix {
		return keyID[len(DeviceKeyPrefix):], true
	}
	return "", false
}

// IsDeviceKeyID reports whether keyID is a device's own key id
// (device/<device_id>) rather than a group key.
func IsDeviceKeyID(keyID string) bool {
	_, ok := DeviceOfKeyID(keyID)
	return ok
}

// IsDeviceKeyIDOf reports whether keyID is deviceID's own key id, without
// building a string (the key cache's hit path).
func IsDeviceKeyIDOf(keyID, deviceID string) bool {
	return len(keyID) == len(DeviceKeyPrefix)+len(deviceID) &&
		keyID[:len(DeviceKeyPrefix)] == DeviceKeyPrefix && keyID[len(DeviceKeyPrefix):] == deviceID
}

// ValidDeviceID reports whether s is a device id per the spec: 1 to 128
// characters of A-Z a-z 0-9 . _ : -.
func ValidDeviceID[T ~string | ~[]byte](s T) bool { return validName(s, MaxDeviceIDLen, true, false) }

// ValidKeyVersion reports whether s is a key version per the spec: 1 to 32
// characters of A-Z a-z 0-9 . _ -.
func ValidKeyVersion[T ~string | ~[]byte](s T) bool {
	return validName(s, MaxKeyVersionLen, false, false)
}

// ValidKeyID reports whether s is a key id per the spec: 1 to 200
// characters of A-Z a-z 0-9 . _ : / -.
func ValidKeyID[T ~string | ~[]byte](s T) bool { return validName(s, MaxKeyIDLen, true, true) }

// validName is a switch, not a lookup table, so there is no package state.
func validName[T ~string | ~[]byte](s T, max int, colon, slash bool) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '_', c == '-':
		case c == ':' && colon, c == '/' && slash:
		default:
			return false
		}
	}
	return true
}
