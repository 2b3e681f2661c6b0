package local

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/decryptd/decryptd/internal/kms"
)

const (
	fileFormat = "decryptd-local-root-v1"
	keySize    = 32
	nonceSize  = 12
	// aadLabel separates this scheme's GCM additional data from any other
	// use of the same key, should one ever appear.
	aadLabel = "decryptd-local-wrap-v1"
)

// Errors callers may switch on. Both are permanent (not kms.ErrTransient).
var (
	// ErrUnknownVersion: the wrapped DEK names a root version the key file
	// does not hold (not even after a reload).
	ErrUnknownVersion = errors.New("unknown root key version")
	// ErrUnwrap: the ciphertext is not authentic under the named root
	// version with the given AAD (tampered, truncated or wrong AAD). One
	// opaque error on purpose: which of these it was is not revealed.
	ErrUnwrap = errors.New("wrapped DEK does not authenticate (wrong ciphertext or AAD)")
	// ErrWrongRoot: the wrapped DEK names another root key id.
	ErrWrongRoot = errors.New("wrapped DEK belongs to another root key")
)

// fileVersion and keyFile are the on-disk JSON. Key is []byte so that
// encoding/json decodes the base64 into a slice we can wipe.
type fileVersion struct {
	Version string    `json:"version"`
	Created time.Time `json:"created"`
	Key     []byte    `json:"key"`
}

type keyFile struct {
	Format    string        `json:"format"`
	RootKeyID string        `json:"root_key_id"`
	Name      string        `json:"name,omitempty"`
	Versions  []fileVersion `json:"versions"`
}

func (f *keyFile) wipe() {
	for i := range f.Versions {
		clear(f.Versions[i].Key)
	}
}

// fileID identifies the file content we loaded, so a replacement by rename
// (a new inode) or an in-place edit (mtime, size) triggers a reload.
type fileID struct {
	ino   uint64
	dev   uint64
	size  int64
	mtime time.Time
}

func idOf(fi fs.FileInfo) fileID {
	id := fileID{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.ino, id.dev = uint64(st.Ino), uint64(st.Dev)
	}
	return id
}

type version struct {
	id   string
	aead cipher.AEAD
}

// Provider wraps DEKs under the root key held in one file.
type Provider struct {
	path string
	rand io.Reader

	rotMu sync.Mutex // serialises Rotate within this process

	mu       sync.Mutex
	loaded   fileID
	id       string
	name     string
	versions []version // oldest first; the last one wraps
	created  []string  // version ids, for RootKey
	madeAt   time.Time // when the newest version was made
}

// What a local Provider declares (kms.CapabilitiesOf): root management,
// the root clock and the wrapping root's name, and version retirement
// (retire.go); no single-root describe (ListRoots is as cheap: the file
// holds one root key) and no replacement (a version retires alone).
var (
	_ kms.Provider    = (*Provider)(nil)
	_ kms.RootManager = (*Provider)(nil)
	_ kms.RootClock   = (*Provider)(nil)
	_ kms.RootNamer   = (*Provider)(nil)
)

// Open loads the root key file at path. It refuses a file that group or
// others can access, naming the file and its mode.
func Open(path string) (*Provider, error) {
	p := &Provider{path: path, rand: rand.Reader}
	if err := p.reload(); err != nil {
		return nil, err
	}
	return p, nil
}

// Create makes a new root key file at path holding root key id with one
// version ("1"), and opens it. It fails if path exists.
func Create(path, id string) (*Provider, error) {
	if err := createFile(path, id, "", rand.Reader); err != nil {
		return nil, err
	}
	return Open(path)
}

// Path is the file this provider reads.
func (p *Provider) Path() string { return p.path }

// RootKeyID is the id of the root key in the file.
func (p *Provider) RootKeyID() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.id
}

func validID(id string) error {
	if id == "" {
		return errors.New("root key id is empty")
	}
	if len(id) > 255 {
		return errors.New("root key id is longer than 255 bytes")
	}
	return nil
}

func createFile(path, id, name string, rnd io.Reader) error {
	if err := validID(id); err != nil {
		return fmt.Errorf("create root key file %s: %w", path, err)
	}
	key := make([]byte, keySize)
	defer clear(key)
	if _, err := io.ReadFull(rnd, key); err != nil {
		return fmt.Errorf("create root key file %s: random: %w", path, err)
	}
	kf := keyFile{
		Format:    fileFormat,
		RootKeyID: id,
		Name:      name,
		Versions:  []fileVersion{{Version: "1", Created: time.Now().UTC(), Key: key}},
	}
	if err := writeFile(path, &kf, false); err != nil {
		return fmt.Errorf("create root key file %s: %w", path, err)
	}
	return nil
}

// writeFile writes kf to a temporary file in path's directory, fsyncs it
// and moves it into place: by link when the file must not exist yet (so two
// creators cannot both win), by rename otherwise. The directory is fsynced
// so the new name survives a crash.
func writeFile(path string, kf *keyFile, replace bool) error {
	data, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return err
	}
	defer clear(data)
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // no-op once renamed; removes the extra link after Link
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if replace {
		err = os.Rename(tmpName, path)
	} else {
		err = os.Link(tmpName, path)
	}
	if err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// readFile reads and checks the key file. The caller wipes the result.
func readFile(path string) (*keyFile, fileID, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fileID{}, fmt.Errorf("root key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fileID{}, fmt.Errorf("root key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fileID{}, fmt.Errorf("root key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fileID{}, fmt.Errorf("root key file %s has mode %04o: group and others must have no access (chmod 600 %s)", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fileID{}, fmt.Errorf("root key file %s: %w", path, err)
	}
	defer clear(data)
	kf, err := parseKeyFile(data)
	if err != nil {
		return nil, fileID{}, fmt.Errorf("root key file %s: %w", path, err)
	}
	return kf, idOf(fi), nil
}

// parseKeyFile decodes and checks the file content. Errors never quote the
// content, which holds key material.
func parseKeyFile(data []byte) (*keyFile, error) {
	var kf keyFile
	if err := json.Unmarshal(data, &kf); err != nil {
		kf.wipe()
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("invalid JSON at byte %d", se.Offset)
		}
		return nil, errors.New("invalid content (not the expected JSON shape)")
	}
	if err := kf.check(); err != nil {
		kf.wipe()
		return nil, err
	}
	return &kf, nil
}

// check enforces the invariants on every load, like a keyring policy.
func (kf *keyFile) check() error {
	if kf.Format != fileFormat {
		return fmt.Errorf("format is %q, want %q", kf.Format, fileFormat)
	}
	if err := validID(kf.RootKeyID); err != nil {
		return err
	}
	if len(kf.Versions) == 0 {
		return errors.New("no versions")
	}
	seen := make(map[string]bool, len(kf.Versions))
	for i, v := range kf.Versions {
		if v.Version == "" || seen[v.Version] {
			return fmt.Errorf("versions[%d]: empty or duplicate version id", i)
		}
		seen[v.Version] = true
		if len(v.Key) != keySize {
			return fmt.Errorf("versions[%d] (%s): key is %d bytes, want %d", i, v.Version, len(v.Key), keySize)
		}
	}
	return nil
}

// reload reads the file and replaces the in-memory keyring.
func (p *Provider) reload() error {
	kf, id, err := readFile(p.path)
	if err != nil {
		return err
	}
	defer kf.wipe()
	vs := make([]version, 0, len(kf.Versions))
	ids := make([]string, 0, len(kf.Versions))
	for _, v := range kf.Versions {
		block, err := aes.NewCipher(v.Key)
		if err != nil {
			return fmt.Errorf("root key file %s: version %s: %w", p.path, v.Version, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return fmt.Errorf("root key file %s: version %s: %w", p.path, v.Version, err)
		}
		vs = append(vs, version{id: v.Version, aead: aead})
		ids = append(ids, v.Version)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.id, p.name, p.versions, p.created, p.loaded = kf.RootKeyID, kf.Name, vs, ids, id
	p.madeAt = kf.Versions[len(kf.Versions)-1].Created
	return nil
}

// NewestRootVersion names the wrapping root key version and when it was
// made (re-reading the file if another process rotated it), for the root
// key schedule of fleet rotation (kms.RootClock).
func (p *Provider) NewestRootVersion(ctx context.Context) (rootKeyID, version string, created time.Time, err error) {
	if err := p.refreshIfChanged(); err != nil {
		return "", "", time.Time{}, fmt.Errorf("local root version: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.id, p.versions[len(p.versions)-1].id, p.madeAt, nil
}

// refreshIfChanged reloads when the file is no longer the one we loaded.
// A stat is cheap next to a KMS call, and DEK wraps are rare (cache misses
// and operator actions), so we pay it on every Wrap and Rewrap.
func (p *Provider) refreshIfChanged() error {
	fi, err := os.Stat(p.path)
	if err != nil {
		return fmt.Errorf("root key file: %w", err)
	}
	p.mu.Lock()
	same := idOf(fi) == p.loaded
	p.mu.Unlock()
	if same {
		return nil
	}
	return p.reload()
}

func (p *Provider) newest() (string, version) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.id, p.versions[len(p.versions)-1]
}

func (p *Provider) find(ver string) (string, version, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, v := range p.versions {
		if v.id == ver {
			return p.id, v, true
		}
	}
	return p.id, version{}, false
}

// gcmAAD encodes the label, root key id, root version and the caller's AAD
// as a count followed by length-prefixed strings, so no two distinct lists
// produce the same bytes.
func gcmAAD(rootID, ver string, aad []string) []byte {
	parts := append([]string{aadLabel, rootID, ver}, aad...)
	n := 4
	for _, s := range parts {
		n += 4 + len(s)
	}
	b := make([]byte, 0, n)
	b = binary.BigEndian.AppendUint32(b, uint32(len(parts)))
	for _, s := range parts {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}

// Wrap seals dek under the newest root version.
func (p *Provider) Wrap(ctx context.Context, dek []byte, aad []string) (kms.Wrapped, error) {
	if err := ctx.Err(); err != nil {
		return kms.Wrapped{}, fmt.Errorf("local wrap: %w: %w", kms.ErrTransient, err)
	}
	if len(dek) == 0 {
		return kms.Wrapped{}, errors.New("local wrap: empty DEK")
	}
	if err := p.refreshIfChanged(); err != nil {
		return kms.Wrapped{}, fmt.Errorf("local wrap: %w", err)
	}
	id, v := p.newest()
	return p.seal(id, v, dek, aad)
}

func (p *Provider) seal(id string, v version, dek []byte, aad []string) (kms.Wrapped, error) {
	out := make([]byte, nonceSize, nonceSize+len(dek)+v.aead.Overhead())
	if _, err := io.ReadFull(p.rand, out); err != nil {
		return kms.Wrapped{}, fmt.Errorf("local wrap: random nonce: %w", err)
	}
	out = v.aead.Seal(out, out[:nonceSize], dek, gcmAAD(id, v.id, aad))
	return kms.Wrapped{RootKeyID: id, RootKeyVersion: v.id, Ciphertext: out}, nil
}

// Unwrap opens w. The file is reloaded first when another process replaced
// it (rotated, or retired a version); a version it does not hold fails with
// ErrUnknownVersion.
func (p *Provider) Unwrap(ctx context.Context, w kms.Wrapped, aad []string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("local unwrap: %w: %w", kms.ErrTransient, err)
	}
	v, err := p.lookup(w)
	if err != nil {
		return nil, fmt.Errorf("local unwrap: %w", err)
	}
	dek, err := open(v, w, aad)
	if err != nil {
		return nil, fmt.Errorf("local unwrap %s version %s: %w", w.RootKeyID, w.RootKeyVersion, err)
	}
	return dek, nil
}

// lookup finds w's root version, after a stat of the file (one syscall
// per unwrap, which only cache misses make): a version retired by another
// process (dekctl root retire) must stop unwrapping at once, not at the
// next rotation.
func (p *Provider) lookup(w kms.Wrapped) (version, error) {
	if err := p.refreshIfChanged(); err != nil {
		return version{}, err
	}
	id, v, ok := p.find(w.RootKeyVersion)
	if w.RootKeyID != id {
		return version{}, fmt.Errorf("%w: wrapped under %q, file holds %q", ErrWrongRoot, w.RootKeyID, id)
	}
	if !ok {
		return version{}, fmt.Errorf("%w: %q (root key %s)", ErrUnknownVersion, w.RootKeyVersion, id)
	}
	return v, nil
}

func open(v version, w kms.Wrapped, aad []string) ([]byte, error) {
	if len(w.Ciphertext) < nonceSize+v.aead.Overhead() {
		return nil, ErrUnwrap
	}
	nonce, ct := w.Ciphertext[:nonceSize], w.Ciphertext[nonceSize:]
	dek, err := v.aead.Open(nil, nonce, ct, gcmAAD(w.RootKeyID, v.id, aad))
	if err != nil {
		return nil, ErrUnwrap
	}
	return dek, nil
}

// Rewrap re-seals w under the newest version; when w already is under it,
// it returns a copy of w unchanged (after checking it still opens).
func (p *Provider) Rewrap(ctx context.Context, w kms.Wrapped, aad []string) (kms.Wrapped, error) {
	if err := ctx.Err(); err != nil {
		return kms.Wrapped{}, fmt.Errorf("local rewrap: %w: %w", kms.ErrTransient, err)
	}
	if err := p.refreshIfChanged(); err != nil {
		return kms.Wrapped{}, fmt.Errorf("local rewrap: %w", err)
	}
	v, err := p.lookup(w)
	if err != nil {
		return kms.Wrapped{}, fmt.Errorf("local rewrap: %w", err)
	}
	dek, err := open(v, w, aad)
	if err != nil {
		return kms.Wrapped{}, fmt.Errorf("local rewrap %s version %s: %w", w.RootKeyID, w.RootKeyVersion, err)
	}
	defer clear(dek)
	id, newest := p.newest()
	if newest.id == w.RootKeyVersion {
		w.Ciphertext = append([]byte(nil), w.Ciphertext...)
		return w, nil
	}
	nw, err := p.seal(id, newest, dek, aad)
	if err != nil {
		return kms.Wrapped{}, fmt.Errorf("local rewrap: %w", err)
	}
	return nw, nil
}

// Rotate adds a new version to the file (re-read first, so a rotation by
// another process is kept) and makes it the wrapping version.
//
// Concurrent Rotate calls in different processes are not serialised; dekctl
// is the only writer by design.
func (p *Provider) Rotate(ctx context.Context) (kms.RootKey, error) {
	if err := ctx.Err(); err != nil {
		return kms.RootKey{}, fmt.Errorf("local rotate: %w: %w", kms.ErrTransient, err)
	}
	p.rotMu.Lock()
	defer p.rotMu.Unlock() // one rotation at a time in this process
	kf, _, err := readFile(p.path)
	if err != nil {
		return kms.RootKey{}, fmt.Errorf("local rotate: %w", err)
	}
	defer kf.wipe()
	next := 1
	for _, v := range kf.Versions {
		if n, err := strconv.Atoi(v.Version); err == nil && n >= next {
			next = n + 1
		}
	}
	key := make([]byte, keySize)
	if _, err := io.ReadFull(p.rand, key); err != nil {
		return kms.RootKey{}, fmt.Errorf("local rotate: random: %w", err)
	}
	kf.Versions = append(kf.Versions, fileVersion{Version: strconv.Itoa(next), Created: time.Now().UTC(), Key: key})
	if err := writeFile(p.path, kf, true); err != nil {
		return kms.RootKey{}, fmt.Errorf("local rotate %s: %w", p.path, err)
	}
	clear(key)
	if err := p.reload(); err != nil {
		return kms.RootKey{}, fmt.Errorf("local rotate: %w", err)
	}
	return p.RootKey(), nil
}

func (p *Provider) rootKeyLocked() kms.RootKey {
	return kms.RootKey{ID: p.id, Name: p.name, State: "active", Versions: append([]string(nil), p.created...)}
}

// RootKey describes the root key in the file (never its material).
func (p *Provider) RootKey() kms.RootKey {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rootKeyLocked()
}

// CreateRoot fails: a local provider is bound to a file that already holds
// its root key. Use Create (or Manager.CreateRoot) for a new file.
func (p *Provider) CreateRoot(ctx context.Context, name string) (kms.RootKey, error) {
	return kms.RootKey{}, fmt.Errorf("local create root %q: %s already holds root key %s; one file holds one root key (create another file)", name, p.path, p.RootKeyID())
}

// RotateRoot rotates the file's root key; id must be its id.
func (p *Provider) RotateRoot(ctx context.Context, id string) (kms.RootKey, error) {
	if err := p.refreshIfChanged(); err != nil {
		return kms.RootKey{}, fmt.Errorf("local rotate: %w", err)
	}
	if cur := p.RootKeyID(); id != cur {
		return kms.RootKey{}, fmt.Errorf("local rotate: %w: asked for %q, %s holds %q", ErrWrongRoot, id, p.path, cur)
	}
	return p.Rotate(ctx)
}

// ListRoots returns the file's one root key.
func (p *Provider) ListRoots(ctx context.Context) ([]kms.RootKey, error) {
	if err := p.refreshIfChanged(); err != nil {
		return nil, fmt.Errorf("local list roots: %w", err)
	}
	return []kms.RootKey{p.RootKey()}, nil
}

// Manager is the kms.RootManager for a root key file that may not exist
// yet (dekctl root create). It holds no key material.
type Manager struct {
	path string
}

var _ kms.RootManager = (*Manager)(nil)

// NewManager returns a Manager for the root key file at path.
func NewManager(path string) *Manager { return &Manager{path: path} }

// CreateRoot creates the file with a root key whose id is name.
func (m *Manager) CreateRoot(ctx context.Context, name string) (kms.RootKey, error) {
	if err := createFile(m.path, name, name, rand.Reader); err != nil {
		return kms.RootKey{}, err
	}
	p, err := Open(m.path)
	if err != nil {
		return kms.RootKey{}, err
	}
	return p.RootKey(), nil
}

// RotateRoot opens the file and rotates its root key.
func (m *Manager) RotateRoot(ctx context.Context, id string) (kms.RootKey, error) {
	p, err := Open(m.path)
	if err != nil {
		return kms.RootKey{}, err
	}
	return p.RotateRoot(ctx, id)
}

// ListRoots returns the file's root key, or none when the file does not exist.
func (m *Manager) ListRoots(ctx context.Context) ([]kms.RootKey, error) {
	p, err := Open(m.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return []kms.RootKey{p.RootKey()}, nil
}
