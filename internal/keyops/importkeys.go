package keyops

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// ImportKey is one DEK version to import, validated: a name in the spec's
// alphabets, a 32-byte DEK, a state that is not shredded, allowed devices.
// Wipe it once imported.
type ImportKey struct {
	Ref     dek.Ref
	State   dek.State
	Devices []string
	DEK     []byte
}

// String never shows the DEK.
func (k ImportKey) String() string { return "import " + k.Ref.String() + " (" + string(k.State) + ")" }

// Format keeps every fmt verb from printing the DEK.
func (k ImportKey) Format(f fmt.State, verb rune) { _, _ = f.Write([]byte(k.String())) }

// WipeKeys zeroes every DEK in ks.
func WipeKeys(ks []ImportKey) {
	for i := range ks {
		clear(ks[i].DEK)
	}
}

// importJSON is one element of the file. The DEK members are RawMessage so
// that their text lands in a buffer we own and can wipe (a Go string
// cannot be).
type importJSON struct {
	KeyID   string          `json:"key_id"`
	Version string          `json:"key_version"`
	DEKHex  json.RawMessage `json:"dek_hex"`
	DEKB64  json.RawMessage `json:"dek_b64"`
	State   string          `json:"state"`
	Devices []string        `json:"devices"`
}

// maxImportKeys bounds one import file.
const maxImportKeys = 1_000_000

// ParseImport reads an import file: a JSON array of
// {key_id, key_version, dek_hex | dek_b64, state?, devices?} (state defaults
// to active), or an object with such an array as its "keys" member (the spec's
// vector file). Unknown members of a key are errors; of the enclosing object,
// ignored. It checks every entry before returning (names, 32-byte DEK,
// state, devices, no version listed twice) and names the entry at fault
// ("keys[2].dek_hex: ..."); errors never quote key material. The caller
// wipes data and, with WipeKeys, the result.
func ParseImport(data []byte) ([]ImportKey, error) {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, invalid("import file is empty")
	}
	arr := trimmed
	if trimmed[0] == '{' {
		var wrapper struct {
			Keys json.RawMessage `json:"keys"`
		}
		if err := json.Unmarshal(trimmed, &wrapper); err != nil {
			return nil, invalid("import file: %s", jsonProblem(err))
		}
		defer clear(wrapper.Keys)
		if len(wrapper.Keys) == 0 {
			return nil, invalid("import file: an object without a \"keys\" array")
		}
		arr = wrapper.Keys
	}
	if arr[0] != '[' {
		return nil, invalid("import file: want a JSON array of keys (or an object with a \"keys\" array)")
	}
	dec := json.NewDecoder(bytes.NewReader(arr))
	dec.DisallowUnknownFields()
	var raw []importJSON
	err := dec.Decode(&raw)
	defer func() {
		for i := range raw {
			clear(raw[i].DEKHex)
			clear(raw[i].DEKB64)
		}
	}()
	if err != nil {
		return nil, invalid("import file: %s", jsonProblem(err))
	}
	if dec.More() {
		return nil, invalid("import file: data after the keys array")
	}
	if len(raw) == 0 {
		return nil, invalid("import file: no keys")
	}
	if len(raw) > maxImportKeys {
		return nil, invalid("import file: more than %d keys", maxImportKeys)
	}
	out := make([]ImportKey, 0, len(raw))
	seen := make(map[dek.Ref]int, len(raw))
	fail := func(err error) ([]ImportKey, error) {
		WipeKeys(out)
		return nil, err
	}
	for i, r := range raw {
		f := fmt.Sprintf("keys[%d]", i)
		if !registry.ValidKeyID(r.KeyID) {
			return fail(invalid("%s.key_id %q: want %s", f, clip(r.KeyID), dek.KeyIDAlphabet))
		}
		if !registry.ValidKeyVersion(r.Version) {
			return fail(invalid("%s.key_version %q: want %s", f, clip(r.Version), dek.KeyVersionAlphabet))
		}
		ref := dek.Ref{KeyID: r.KeyID, Version: r.Version}
		if j, dup := seen[ref]; dup {
			return fail(invalid("%s: %s already listed as keys[%d]", f, ref, j))
		}
		seen[ref] = i
		state := dek.StateActive
		if r.State != "" {
			st, err := dek.ParseState(r.State)
			if err != nil {
				return fail(invalid("%s.state: %v", f, err))
			}
			if st == dek.StateShredded {
				return fail(invalid("%s.state: a shredded key has no DEK to import", f))
			}
			state = st
		}
		for k, d := range r.Devices {
			if !registry.ValidDeviceID(d) {
				return fail(invalid("%s.devices[%d] %q: want %s", f, k, clip(d), dek.DeviceIDAlphabet))
			}
			for _, prev := range r.Devices[:k] {
				if prev == d {
					return fail(invalid("%s.devices[%d]: %q listed twice", f, k, d))
				}
			}
		}
		key, err := decodeDEK(f, r.DEKHex, r.DEKB64)
		if err != nil {
			return fail(err)
		}
		out = append(out, ImportKey{Ref: ref, State: state, Devices: r.Devices, DEK: key})
	}
	return out, nil
}

// jsonProblem describes a decoding error without quoting the input.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated JSON"
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("%s: want %s, got %s", te.Field, te.Type, te.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown member " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	}
	return "invalid JSON"
}

// decodeDEK decodes exactly one of the two members into a fresh 32-byte
// slice. The members' text is a JSON string; hex and base64 need no escapes,
// so a backslash is refused rather than interpreted.
func decodeDEK(f string, hexRaw, b64Raw json.RawMessage) ([]byte, error) {
	isSet := func(r json.RawMessage) bool { return len(r) > 0 && string(r) != "null" }
	switch {
	case isSet(hexRaw) && isSet(b64Raw):
		return nil, invalid("%s: give dek_hex or dek_b64, not both", f)
	case isSet(hexRaw):
		s, ok := rawString(hexRaw)
		if !ok {
			return nil, invalid("%s.dek_hex: want a string of 64 hex digits", f)
		}
		if len(s) != 2*DEKSize {
			return nil, invalid("%s.dek_hex: want 64 hex digits (32 bytes), got %d characters", f, len(s))
		}
		key := make([]byte, DEKSize)
		if _, err := hex.Decode(key, s); err != nil {
			clear(key)
			return nil, invalid("%s.dek_hex: not hex", f)
		}
		return key, nil
	case isSet(b64Raw):
		s, ok := rawString(b64Raw)
		if !ok {
			return nil, invalid("%s.dek_b64: want a base64 string", f)
		}
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			if enc.DecodedLen(len(s)) < DEKSize || enc.DecodedLen(len(s)) > DEKSize+2 {
				continue
			}
			buf := make([]byte, enc.DecodedLen(len(s)))
			n, err := enc.Decode(buf, s)
			if err == nil && n == DEKSize {
				return buf[:DEKSize], nil
			}
			clear(buf)
		}
		return nil, invalid("%s.dek_b64: want base64 of 32 bytes", f)
	}
	return nil, invalid("%s: dek_hex or dek_b64 required", f)
}

// rawString returns the bytes between the quotes of a JSON string without
// escapes (a slice of r, not a copy).
func rawString(r json.RawMessage) ([]byte, bool) {
	if len(r) < 2 || r[0] != '"' || r[len(r)-1] != '"' {
		return nil, false
	}
	s := r[1 : len(r)-1]
	if bytes.IndexByte(s, '\\') >= 0 || bytes.IndexByte(s, '"') >= 0 {
		return nil, false
	}
	return s, true
}

// ImportResult counts what Import did.
type ImportResult struct {
	Imported int
	Skipped  []dek.Ref // already in the registry (skipExisting)
}

// Import wraps and stores keys (from ParseImport), all or nothing as far as
// checking goes: if any version is already in the registry, nothing is
// imported unless skipExisting (those are then left as they are). Each DEK
// is wiped as soon as it is wrapped, and on return all are.
// Needs KMS, Registry, Audit.
func (op *Ops) Import(ctx context.Context, keys []ImportKey, skipExisting bool) (ImportResult, error) {
	defer WipeKeys(keys)
	if err := op.needKMS(); err != nil {
		return ImportResult{}, err
	}
	var res ImportResult
	skip := make(map[dek.Ref]bool)
	var exists []string
	for _, k := range keys {
		_, err := op.o.Registry.Get(ctx, k.Ref.KeyID, k.Ref.Version)
		switch {
		case err == nil:
			skip[k.Ref] = true
			exists = append(exists, k.Ref.String())
		case errors.Is(err, registry.ErrNotFound):
		default:
			return res, fmt.Errorf("check %s: %w", k.Ref, err)
		}
	}
	if len(exists) > 0 && !skipExisting {
		more := ""
		if len(exists) > 10 {
			exists, more = exists[:10], fmt.Sprintf(" and %d more", len(exists)-10)
		}
		return res, fmt.Errorf("%w: already in the registry: %s%s (nothing imported; --skip-existing imports the rest)", registry.ErrExists, strings.Join(exists, ", "), more)
	}
	for i := range keys {
		k := &keys[i]
		if skip[k.Ref] {
			res.Skipped = append(res.Skipped, k.Ref)
			continue
		}
		start := op.o.Now()
		w, err := op.o.KMS.Wrap(ctx, k.DEK, kms.DEKAAD(k.Ref))
		clear(k.DEK)
		if err == nil {
			err = op.o.Registry.Create(ctx, registry.Entry{
				KeyID: k.Ref.KeyID, Version: k.Ref.Version, State: k.State, Wrapped: w,
				Devices: k.Devices, CreatedAt: op.o.Now(),
			})
			if errors.Is(err, registry.ErrExists) && skipExisting {
				// Created meanwhile by someone else: leave theirs.
				res.Skipped = append(res.Skipped, k.Ref)
				continue
			}
		}
		aerr := op.record(ctx, audit.ActionImport, k.Ref, w, start, err, "state "+string(k.State))
		if err != nil {
			return res, joinAudit(fmt.Errorf("import %s: %w (%d imported before it)", k.Ref, err, res.Imported), aerr)
		}
		if aerr != nil {
			return res, aerr
		}
		res.Imported++
	}
	return res, nil
}
