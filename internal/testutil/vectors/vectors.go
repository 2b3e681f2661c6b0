package vectors

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/decryptd/decryptd/internal/dek"
)

// RelPath is where the vector file lives, relative to the module root.
const RelPath = "testdata/envelope-v1.json"

// PublishedRelPath is the copy published for device makers beside the
// spec (docs/vectors/), relative to the module root. It must hold the same
// bytes as RelPath (TestPublishedCopy).
const PublishedRelPath = "docs/vectors/envelope-v1.json"

// Spec is the value of the file's "spec" member.
const Spec = "envelope-v1"

// File is the vector file, parsed and checked.
type File struct {
	Spec  string `json:"spec"`
	Notes string `json:"notes"`
	Keys  []Key  `json:"keys"`
	Cases []Case `json:"cases"`

	// Path is the file's absolute path (for a tool that takes a file,
	// such as `dekctl import --file`).
	Path string `json:"-"`

	raw []byte
}

// Key is one key version the registry must hold for the cases.
type Key struct {
	KeyID      string    `json:"key_id"`
	KeyVersion string    `json:"key_version"`
	DEKHex     string    `json:"dek_hex"`
	State      dek.State `json:"state"`
	// Devices, when set, are the only devices that may use KeyID.
	Devices []string `json:"devices"`

	dek []byte
}

// Case is one message and what opening it must give.
type Case struct {
	Name    string `json:"name"`
	Topic   string `json:"topic"`
	Message string `json:"message"`
	Expect  Expect `json:"expect"`
}

// Expect is a case's outcome: a record (OK), a failure reason, or a
// duplicate (amendment 1: an exact repeat of an accepted message, counted
// as a duplicate, neither delivered nor dead-lettered).
type Expect struct {
	OK        bool   `json:"ok"`
	Reason    string `json:"reason"`
	Duplicate bool   `json:"duplicate"`
	// Record holds the members the record must have; see Diff.
	Record map[string]json.RawMessage `json:"record"`
}

// Ref is the key version's reference.
func (k Key) Ref() dek.Ref { return dek.Ref{KeyID: k.KeyID, Version: k.KeyVersion} }

// DEK returns a fresh copy of the key bytes (nil for a Key not from Load).
func (k Key) DEK() []byte { return bytes.Clone(k.dek) }

// Bytes returns a fresh copy of the file as read, for parsers that take
// the whole file (keyops.ParseImport) and may wipe what they are given.
func (f File) Bytes() []byte { return bytes.Clone(f.raw) }

// Load reads and checks the module's vector file, failing tb if it cannot.
func Load(tb testing.TB) File {
	tb.Helper()
	path, raw := ReadRel(tb, RelPath)
	f, err := parse(raw)
	if err != nil {
		tb.Fatalf("vectors: %s: %v", path, err)
	}
	f.Path = path
	return f
}

// ReadRel reads the file at rel (slash-separated, relative to the module
// root) and returns its absolute path and bytes, failing tb if it cannot.
func ReadRel(tb testing.TB, rel string) (string, []byte) {
	tb.Helper()
	root, err := moduleRoot()
	if err != nil {
		tb.Fatalf("vectors: %v", err)
	}
	path := filepath.Join(root, filepath.FromSlash(rel))
	raw, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("vectors: read: %v", err)
	}
	return path, raw
}

// moduleRoot is the nearest directory at or above the working directory
// that holds go.mod. Tests run in their package's directory, so this is
// the module root for every package in it.
func moduleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod at or above %s", wd)
		}
		dir = parent
	}
}

// parse decodes the file and checks what the tests rely on, so a damaged
// copy fails here with a clear message instead of as odd test results.
func parse(raw []byte) (File, error) {
	var f File
	if err := json.Unmarshal(raw, &f); err != nil {
		return File{}, fmt.Errorf("parse: %w", err)
	}
	if f.Spec != Spec || len(f.Keys) == 0 || len(f.Cases) == 0 {
		return File{}, fmt.Errorf("unexpected content (spec %q, %d keys, %d cases)", f.Spec, len(f.Keys), len(f.Cases))
	}
	seenKey := map[dek.Ref]bool{}
	for i := range f.Keys {
		k := &f.Keys[i]
		if k.KeyID == "" || k.KeyVersion == "" || seenKey[k.Ref()] {
			return File{}, fmt.Errorf("keys[%d]: missing or repeated key id/version %q", i, k.Ref())
		}
		seenKey[k.Ref()] = true
		if _, err := dek.ParseState(string(k.State)); err != nil {
			return File{}, fmt.Errorf("keys[%d] %s: %w", i, k.Ref(), err)
		}
		b, err := hex.DecodeString(k.DEKHex)
		if err != nil || len(b) != 32 {
			return File{}, fmt.Errorf("keys[%d] %s: dek_hex is not 32 bytes of hex", i, k.Ref())
		}
		k.dek = b
	}
	seenCase := map[string]bool{}
	for i, c := range f.Cases {
		if c.Name == "" || seenCase[c.Name] {
			return File{}, fmt.Errorf("cases[%d]: missing or repeated name %q", i, c.Name)
		}
		seenCase[c.Name] = true
		switch {
		case c.Expect.OK && (len(c.Expect.Record) == 0 || c.Expect.Reason != "" || c.Expect.Duplicate):
			return File{}, fmt.Errorf("case %s: ok needs a record, no reason and no duplicate", c.Name)
		case !c.Expect.OK && c.Expect.Record != nil:
			return File{}, fmt.Errorf("case %s: a failure has no record", c.Name)
		case !c.Expect.OK && (c.Expect.Reason == "") == !c.Expect.Duplicate:
			return File{}, fmt.Errorf("case %s: a failure needs either a reason or duplicate, not both", c.Name)
		}
		for name, want := range c.Expect.Record {
			if name == "data_text" {
				var text string
				if err := json.Unmarshal(want, &text); err != nil || !json.Valid([]byte(text)) {
					return File{}, fmt.Errorf("case %s: data_text is not a string holding JSON", c.Name)
				}
			}
		}
	}
	f.raw = raw
	return f, nil
}

// Diff compares a record's JSON with a case's expectation by the file's
// rule and returns every difference joined, or nil when the record meets
// it. Members the expectation does not name are not looked at.
func Diff(record []byte, want Expect) error {
	if !want.OK {
		if want.Duplicate {
			return errors.New("a record came out; the case expects a duplicate")
		}
		return fmt.Errorf("a record came out; the case expects reason %s", want.Reason)
	}
	var got map[string]json.RawMessage
	if err := json.Unmarshal(record, &got); err != nil {
		return fmt.Errorf("record is not a JSON object: %w", err)
	}
	names := make([]string, 0, len(want.Record))
	for name := range want.Record {
		names = append(names, name)
	}
	slices.Sort(names) // a stable report
	var errs []error
	for _, name := range names {
		w := want.Record[name]
		member := name
		if name == "data_text" {
			member = "data"
		}
		g, ok := got[member]
		if !ok {
			errs = append(errs, fmt.Errorf("record lacks %s (want %s)", member, w))
			continue
		}
		if name == "data_text" {
			var text string
			if err := json.Unmarshal(w, &text); err != nil {
				errs = append(errs, fmt.Errorf("expected data_text is not a JSON string: %w", err))
				continue
			}
			if err := textEqual(g, []byte(text)); err != nil {
				errs = append(errs, fmt.Errorf("data text: %w", err))
			}
			continue
		}
		if err := valueEqual(g, w); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// CheckRecord reports (without stopping the test) every way record fails
// want; see Diff.
func CheckRecord(tb testing.TB, record []byte, want Expect) {
	tb.Helper()
	if err := Diff(record, want); err != nil {
		tb.Error(err)
	}
}

// valueEqual: got and want are the same JSON value (objects regardless of
// member order, numbers by value).
func valueEqual(got, want []byte) error {
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		return fmt.Errorf("not JSON: %s: %w", got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		return fmt.Errorf("expected value is not JSON: %s: %w", want, err)
	}
	if !reflect.DeepEqual(g, w) {
		return fmt.Errorf("%s, want %s", got, want)
	}
	return nil
}

// textEqual: got and want are the same JSON text once insignificant
// whitespace is removed; json.Compact keeps number text as written, so
// 1.0 and 1 differ.
func textEqual(got, want []byte) error {
	var g, w bytes.Buffer
	if err := json.Compact(&g, got); err != nil {
		return fmt.Errorf("not JSON: %s: %w", got, err)
	}
	if err := json.Compact(&w, want); err != nil {
		return fmt.Errorf("expected text is not JSON: %s: %w", want, err)
	}
	if !bytes.Equal(g.Bytes(), w.Bytes()) {
		return fmt.Errorf("%s, want %s", g.Bytes(), w.Bytes())
	}
	return nil
}
