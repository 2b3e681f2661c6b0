package keyops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// Credential is what a device is given at the factory: the name of its DEK
// version and the DEK itself. It is the one place a DEK leaves keyops in the
// clear. Wipe it once written.
type Credential struct {
	DeviceID   string `json:"device_id"`
	KeyID      string `json:"key_id"`
	KeyVersion string `json:"key_version"`
	// DEK is encoded as base64 (standard, padded) under "dek_b64".
	DEK []byte `json:"dek_b64"`
}

// Wipe zeroes the DEK.
func (c *Credential) Wipe() { clear(c.DEK) }

// String never shows the DEK.
func (c Credential) String() string {
	return fmt.Sprintf("credential{device %s, %s@%s}", c.DeviceID, c.KeyID, c.KeyVersion)
}

// Format keeps every fmt verb from printing the DEK.
func (c Credential) Format(f fmt.State, verb rune) { _, _ = io.WriteString(f, c.String()) }

// WriteCredential writes c as JSON to a new file at path, mode 0600, and
// fsyncs it. An existing file is never overwritten (a credential already
// handed out must not vanish); "-" writes to w instead.
func WriteCredential(path string, w io.Writer, c Credential) (err error) {
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("encode credential: %w", err)
	}
	defer clear(data)
	data = append(data, '\n')
	if path == "-" {
		_, err = w.Write(data)
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("credential file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("credential file %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("credential file %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("credential file %s: %w", path, err)
	}
	if d, derr := os.Open(filepath.Dir(path)); derr == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// ProvisionRequest names the device and, optionally, its group.
type ProvisionRequest struct {
	DeviceID string
	// Group, when set, gives the device the group key group/<Group> instead
	// of a key of its own: the group's active version gets the device added
	// to its allowed devices, or the group key is created (v1) when it has
	// no active version.
	Group string
}

// maxCreateTries bounds the retries when another dekctl takes the version
// name we picked.
const maxCreateTries = 5

// Provision makes the device's credential. Without a group it creates the
// next version of device/<id> ("v1", "v2", ...: one more than the highest
// vN the key ever had) as active, and moves the versions that were active to
// decrypt_only, so messages still buffered under them keep decrypting.
// With a group it adds the device to group/<name>'s active version (its DEK
// unwrapped for the credential) or creates the group key.
// Needs KMS, Registry, Audit. The caller wipes the Credential.
func (op *Ops) Provision(ctx context.Context, req ProvisionRequest) (Credential, error) {
	if !registry.ValidDeviceID(req.DeviceID) {
		return Credential{}, invalid("device id %q: want %s", clip(req.DeviceID), dek.DeviceIDAlphabet)
	}
	if err := op.needKMS(); err != nil {
		return Credential{}, err
	}
	if req.Group == "" {
		return op.provisionDevice(ctx, req.DeviceID)
	}
	keyID := "group/" + req.Group
	if !registry.ValidKeyID(keyID) {
		return Credential{}, invalid("group %q: want A-Z a-z 0-9 . _ : / - (key id group/<name>, at most 200)", clip(req.Group))
	}
	return op.provisionGroup(ctx, req.DeviceID, keyID)
}

func (op *Ops) provisionDevice(ctx context.Context, deviceID string) (Credential, error) {
	keyID := dek.DeviceKeyID(deviceID)
	e, key, err := op.createNext(ctx, keyID, nil, "device "+deviceID)
	if err != nil {
		return Credential{}, err
	}
	cred := Credential{DeviceID: deviceID, KeyID: keyID, KeyVersion: e.Version, DEK: key}
	// The new version is in place: demote the ones it supersedes.
	if err := op.demoteOthers(ctx, keyID, e.Version); err != nil {
		cred.Wipe()
		return Credential{}, err
	}
	return cred, nil
}

// createNext makes, wraps and stores the next version of keyID (active,
// allowed for devices) and returns it with its DEK (caller wipes).
func (op *Ops) createNext(ctx context.Context, keyID string, devices []string, why string) (registry.Entry, []byte, error) {
	return op.createVersion(ctx, keyID, nil, devices, registry.Rotation{}, audit.ActionProvision, why)
}

// createVersion is createNext with the new entry's rotation bookkeeping and
// the audit action to record.
func (op *Ops) createVersion(ctx context.Context, keyID string, known []registry.Entry, devices []string, rot registry.Rotation, action audit.Action, why string) (registry.Entry, []byte, error) {
	for try := 0; ; try++ {
		es := known
		if es == nil || try > 0 {
			var err error
			if es, err = op.versionsOf(ctx, keyID); err != nil {
				return registry.Entry{}, nil, err
			}
		}
		ref := dek.Ref{KeyID: keyID, Version: nextVersion(es)}
		start := op.o.Now()
		key := make([]byte, DEKSize)
		if _, err := io.ReadFull(op.o.Rand, key); err != nil {
			return registry.Entry{}, nil, fmt.Errorf("new DEK for %s: random: %w", ref, err)
		}
		w, err := op.o.KMS.Wrap(ctx, key, kms.DEKAAD(ref))
		if err != nil {
			clear(key)
			aerr := op.record(ctx, action, ref, kms.Wrapped{}, start, err, why)
			return registry.Entry{}, nil, joinAudit(fmt.Errorf("wrap new DEK %s: %w", ref, err), aerr)
		}
		e := registry.Entry{KeyID: keyID, Version: ref.Version, State: dek.StateActive, Wrapped: w, Devices: devices, CreatedAt: op.o.Now(), Rotation: rot}
		err = op.o.Registry.Create(ctx, e)
		if errors.Is(err, registry.ErrExists) && try < maxCreateTries {
			clear(key) // someone else took the name: start again
			continue
		}
		aerr := op.record(ctx, action, ref, w, start, err, why)
		if err != nil {
			clear(key)
			return registry.Entry{}, nil, joinAudit(fmt.Errorf("store %s: %w", ref, err), aerr)
		}
		if aerr != nil {
			clear(key)
			return registry.Entry{}, nil, aerr
		}
		return e, key, nil
	}
}

// demoteOthers moves every active version of keyID but keep to decrypt_only.
func (op *Ops) demoteOthers(ctx context.Context, keyID, keep string) error {
	es, err := op.versionsOf(ctx, keyID)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range es {
		if e.Version == keep || e.State != dek.StateActive {
			continue
		}
		start := op.o.Now()
		got, err := op.o.Registry.Update(ctx, e.KeyID, e.Version, func(cur *registry.Entry) error {
			if cur.State == dek.StateActive {
				cur.State = dek.StateDecryptOnly
			}
			return nil
		})
		if err != nil {
			got = e
		}
		aerr := op.record(ctx, audit.ActionRotate, e.Ref(), got.Wrapped, start, err, "active -> decrypt_only, superseded by "+keep)
		if err != nil {
			errs = append(errs, fmt.Errorf("demote %s: %w", e.Ref(), err))
		}
		if aerr != nil {
			errs = append(errs, aerr)
		}
	}
	return errors.Join(errs...)
}

func (op *Ops) provisionGroup(ctx context.Context, deviceID, keyID string) (Credential, error) {
	es, err := op.versionsOf(ctx, keyID)
	if err != nil {
		return Credential{}, err
	}
	var active *registry.Entry
	for i := range es {
		if es[i].State == dek.StateActive {
			active = &es[i] // the newest active one wins
		}
	}
	if active == nil {
		e, key, err := op.createNext(ctx, keyID, []string{deviceID}, "group created for device "+deviceID)
		if err != nil {
			return Credential{}, err
		}
		return Credential{DeviceID: deviceID, KeyID: keyID, KeyVersion: e.Version, DEK: key}, nil
	}
	ref := active.Ref()
	if !slices.Contains(active.Devices, deviceID) {
		start := op.o.Now()
		got, err := op.o.Registry.Update(ctx, ref.KeyID, ref.Version, func(cur *registry.Entry) error {
			if cur.State != dek.StateActive {
				return fmt.Errorf("%s is no longer active (%s); run provision again", ref, cur.State)
			}
			if !slices.Contains(cur.Devices, deviceID) {
				cur.Devices = append(cur.Devices, deviceID)
			}
			return nil
		})
		if err != nil {
			got = *active
		}
		aerr := op.record(ctx, audit.ActionDevices, ref, got.Wrapped, start, err, "device "+deviceID+" added")
		if err := joinAudit(err, aerr); err != nil {
			return Credential{}, fmt.Errorf("add %s to %s: %w", deviceID, ref, err)
		}
		active = &got
	}
	start := op.o.Now()
	key, err := op.o.KMS.Unwrap(ctx, active.Wrapped, kms.DEKAAD(ref))
	aerr := op.record(ctx, audit.ActionUnwrap, ref, active.Wrapped, start, err, "exported in a credential for device "+deviceID)
	if err != nil {
		return Credential{}, joinAudit(fmt.Errorf("unwrap %s: %w", ref, err), aerr)
	}
	if aerr != nil {
		clear(key)
		return Credential{}, aerr
	}
	if len(key) != DEKSize {
		clear(key)
		return Credential{}, fmt.Errorf("unwrap %s: DEK is %d bytes, want %d", ref, len(key), DEKSize)
	}
	return Credential{DeviceID: deviceID, KeyID: keyID, KeyVersion: ref.Version, DEK: key}, nil
}
