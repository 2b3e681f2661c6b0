package fleet

import (
	"bufio"
	"bytes"
	"context"
	"crypto/cipher"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/seal"
)

// DefaultDeviceType is the Watson IoT device type in the topics of a fleet
// that names none.
const DefaultDeviceType = "monitor"

// Device is one simulated device: its name, the DEK version it was given
// and that DEK as a ready cipher (the raw key is wiped once the cipher is
// built). Devices sharing a group key share one AEAD. A device that
// received a rekey (Fleet.Rekey) seals under its newest version: Current
// says which.
type Device struct {
	ID         string
	Type       string // Watson IoT device type, a topic level
	KeyID      string // device/<ID>, or group/<name> for a group key
	KeyVersion string // as provisioned
	AEAD       cipher.AEAD

	topic string

	mu      sync.Mutex
	rekeyed map[string]cipher.AEAD // versions of KeyID installed by rekeys
	current string                 // newest installed ("": KeyVersion)
	floor   uint64                 // highest rekey generation accepted (anti-rollback)
}

// Floor is the highest rekey generation the device accepted for its key
// (docs/rekey-v1.md, amendment 1); 0 before any.
func (d *Device) Floor() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.floor
}

// Current returns the version the device seals under and its cipher.
func (d *Device) Current() (version string, aead cipher.AEAD) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.current == "" {
		return d.KeyVersion, d.AEAD
	}
	return d.current, d.rekeyed[d.current]
}

// key returns the device's cipher for version of its key.
func (d *Device) key(version string) cipher.AEAD {
	d.mu.Lock()
	defer d.mu.Unlock()
	if version == d.KeyVersion {
		return d.AEAD
	}
	return d.rekeyed[version]
}

// Topic is the device's Watson IoT event topic,
// iot-2/type/<type>/id/<id>/evt/telemetry/fmt/json.
func (d *Device) Topic() string {
	if d.topic == "" {
		return TopicFor(d.Type, d.ID)
	}
	return d.topic
}

// TopicFor returns the telemetry topic of a device.
func TopicFor(deviceType, deviceID string) string {
	return "iot-2/type/" + deviceType + "/id/" + deviceID + "/evt/telemetry/fmt/json"
}

// Fleet is a set of devices with their keys in memory. Its devices are
// fixed once built; their keys change only by rekeys (Rekey). It is safe
// for concurrent use; it also resolves its own keys (ResolveKey), for
// tests that open what the fleet sent.
type Fleet struct {
	devices []*Device
	byID    map[string]*Device
	mu      sync.RWMutex // byRef: rekeys add versions
	byRef   map[dek.Ref]*fleetKey
}

type fleetKey struct {
	aead    cipher.AEAD
	devices map[string]struct{}
}

// NewFleet builds a fleet from credentials (Provision's or LoadCredentials'
// result), every device of type deviceType (DefaultDeviceType if empty). It
// wipes every credential's DEK, including on error. Devices keep the order
// of creds.
func NewFleet(creds []keyops.Credential, deviceType string) (*Fleet, error) {
	defer func() {
		for i := range creds {
			creds[i].Wipe()
		}
	}()
	if deviceType == "" {
		deviceType = DefaultDeviceType
	}
	if !validTopicLevel(deviceType) {
		return nil, fmt.Errorf("fleet: device type %q: want 1-64 of A-Z a-z 0-9 . _ -", deviceType)
	}
	f := &Fleet{byRef: make(map[dek.Ref]*fleetKey), byID: make(map[string]*Device, len(creds))}
	seen := make(map[string]struct{}, len(creds))
	for i, c := range creds {
		if !registry.ValidDeviceID(c.DeviceID) || !registry.ValidKeyID(c.KeyID) || !registry.ValidKeyVersion(c.KeyVersion) {
			return nil, fmt.Errorf("fleet: credential %d (%s): a name outside the spec's alphabet", i, c)
		}
		if _, dup := seen[c.DeviceID]; dup {
			return nil, fmt.Errorf("fleet: device %s listed twice", c.DeviceID)
		}
		seen[c.DeviceID] = struct{}{}
		ref := dek.Ref{KeyID: c.KeyID, Version: c.KeyVersion}
		k := f.byRef[ref]
		if k == nil {
			aead, err := seal.NewAEAD(c.DEK)
			if err != nil {
				return nil, fmt.Errorf("fleet: credential %d (%s): %w", i, c, err)
			}
			k = &fleetKey{aead: aead, devices: map[string]struct{}{}}
			f.byRef[ref] = k
		}
		k.devices[c.DeviceID] = struct{}{}
		d := &Device{ID: c.DeviceID, Type: deviceType, KeyID: c.KeyID, KeyVersion: c.KeyVersion, AEAD: k.aead}
		d.topic = TopicFor(deviceType, d.ID)
		f.devices = append(f.devices, d)
		f.byID[d.ID] = d
	}
	return f, nil
}

// Len is the number of devices.
func (f *Fleet) Len() int { return len(f.devices) }

// Device returns the i-th device.
func (f *Fleet) Device(i int) *Device { return f.devices[i] }

// Devices returns the devices (a copy of the slice; the devices are shared).
func (f *Fleet) Devices() []*Device { return slices.Clone(f.devices) }

// Keys is the number of distinct DEK versions the fleet holds.
func (f *Fleet) Keys() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.byRef)
}

// ResolveKey implements decrypt.KeyResolver over the fleet's own keys: a
// version the fleet does not hold, or one the device does not use, is
// dek.ErrUnknownKey.
func (f *Fleet) ResolveKey(_ context.Context, keyID, keyVersion, deviceID string) (cipher.AEAD, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	k := f.byRef[dek.Ref{KeyID: keyID, Version: keyVersion}]
	if k == nil {
		return nil, fmt.Errorf("%s@%s: %w", keyID, keyVersion, dek.ErrUnknownKey)
	}
	if _, ok := k.devices[deviceID]; !ok {
		return nil, fmt.Errorf("%s@%s not allowed for %s: %w", keyID, keyVersion, deviceID, dek.ErrUnknownKey)
	}
	return k.aead, nil
}

func validTopicLevel(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// maxCredentialLine bounds one line of a credentials file.
const maxCredentialLine = 64 << 10

// WriteCredentials writes creds to a new file at path (mode 0600, never
// overwriting one), one JSON credential per line in the format of
// keyops.WriteCredential, and fsyncs it. The file holds DEKs in the clear:
// it is for a simulator's test keys, like a device's own credential.
func WriteCredentials(path string, creds []keyops.Credential) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("fleet: credentials file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path)
		}
	}()
	w := bufio.NewWriterSize(f, 256<<10)
	var line []byte
	for _, c := range creds {
		line, err = json.Marshal(c)
		if err != nil {
			return fmt.Errorf("fleet: encode credential %s: %w", c.DeviceID, err)
		}
		line = append(line, '\n')
		_, err = w.Write(line)
		clear(line)
		if err != nil {
			return fmt.Errorf("fleet: credentials file %s: %w", path, err)
		}
	}
	if err = w.Flush(); err != nil {
		return fmt.Errorf("fleet: credentials file %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("fleet: credentials file %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("fleet: credentials file %s: %w", path, err)
	}
	return nil
}

// LoadCredentials reads credentials from path: a file of JSON lines written
// by WriteCredentials, or a directory of credential files written one per
// device by dekctl provision (*.json, in name order). It refuses a file or
// directory that group or others may read. The caller wipes the result
// (NewFleet does).
func LoadCredentials(path string) ([]keyops.Credential, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("fleet: credentials: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 && !fi.IsDir() {
		return nil, fmt.Errorf("fleet: credentials %s: mode %v lets group or others read DEKs; chmod 600", path, fi.Mode().Perm())
	}
	if !fi.IsDir() {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("fleet: credentials: %w", err)
		}
		defer f.Close()
		return readCredentialLines(f, path)
	}
	names, err := filepath.Glob(filepath.Join(path, "*.json"))
	if err != nil {
		return nil, fmt.Errorf("fleet: credentials %s: %w", path, err)
	}
	sort.Strings(names)
	var out []keyops.Credential
	fail := func(err error) ([]keyops.Credential, error) {
		for i := range out {
			out[i].Wipe()
		}
		return nil, err
	}
	for _, n := range names {
		st, err := os.Stat(n)
		if err != nil {
			return fail(fmt.Errorf("fleet: credentials: %w", err))
		}
		if st.Mode().Perm()&0o077 != 0 {
			return fail(fmt.Errorf("fleet: credential %s: mode %v lets group or others read a DEK; chmod 600", n, st.Mode().Perm()))
		}
		data, err := os.ReadFile(n)
		if err != nil {
			return fail(fmt.Errorf("fleet: credentials: %w", err))
		}
		c, err := parseCredential(data)
		clear(data)
		if err != nil {
			return fail(fmt.Errorf("fleet: credential %s: %w", n, err))
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("fleet: credentials %s: no *.json credential files", path)
	}
	return out, nil
}

func readCredentialLines(r io.Reader, name string) ([]keyops.Credential, error) {
	sc := bufio.NewScanner(r)
	buf := make([]byte, 0, 64<<10)
	defer func() { clear(buf[:cap(buf)]) }()
	sc.Buffer(buf, maxCredentialLine)
	var out []keyops.Credential
	fail := func(err error) ([]keyops.Credential, error) {
		for i := range out {
			out[i].Wipe()
		}
		return nil, err
	}
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		c, err := parseCredential(line)
		if err != nil {
			return fail(fmt.Errorf("fleet: credentials %s:%d: %w", name, n, err))
		}
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return fail(fmt.Errorf("fleet: credentials %s: %w", name, err))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("fleet: credentials %s: empty", name)
	}
	return out, nil
}

// parseCredential decodes one credential. Errors never quote the input,
// which holds a DEK.
func parseCredential(data []byte) (keyops.Credential, error) {
	var c keyops.Credential
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		c.Wipe()
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return keyops.Credential{}, fmt.Errorf("invalid JSON at byte %d", se.Offset)
		}
		if strings.HasPrefix(err.Error(), "json: unknown field ") {
			return keyops.Credential{}, errors.New("unknown member " + strings.TrimPrefix(err.Error(), "json: unknown field "))
		}
		return keyops.Credential{}, errors.New("not a credential")
	}
	if len(c.DEK) != keyops.DEKSize {
		c.Wipe()
		return keyops.Credential{}, fmt.Errorf("dek_b64: want %d bytes", keyops.DEKSize)
	}
	if !registry.ValidDeviceID(c.DeviceID) || !registry.ValidKeyID(c.KeyID) || !registry.ValidKeyVersion(c.KeyVersion) {
		c.Wipe()
		return keyops.Credential{}, errors.New("a name outside the spec's alphabet")
	}
	return c, nil
}
