package pseudonym

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// KeyIDPrefix starts every pseudonymization key's id.
const KeyIDPrefix = "pseudonym/"

// KeyID returns the registry key id of the named key.
func KeyID(name string) string { return KeyIDPrefix + name }

// KeySize is a pseudonymization key's length in bytes.
const KeySize = 32

// ErrUnavailable: no usable version is loaded; retry later.
var ErrUnavailable = errors.New("pseudonymization key unavailable")

// Store is what a Key needs of the registry; registry.Store satisfies it.
type Store interface {
	List(ctx context.Context) ([]registry.Entry, error)
	Watch(ctx context.Context) (<-chan registry.Change, error)
}

// Options wire a Key.
type Options struct {
	Registry Store
	KMS      kms.Provider
	// Audit receives one event per unwrap (required).
	Audit keycache.AuditRecorder
	// Now defaults to time.Now.
	Now func() time.Time
}

// Key is one named pseudonymization key, its newest active version loaded.
type Key struct {
	name, keyID string
	o           Options

	mu      sync.RWMutex
	version string
	key     []byte // nil: none usable
}

// Open loads the newest active version of pseudonym/<name>.
func Open(ctx context.Context, o Options, name string) (*Key, error) {
	if o.Registry == nil || o.KMS == nil || o.Audit == nil {
		return nil, errors.New("pseudonym: Options.Registry, KMS and Audit are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	keyID := KeyID(name)
	if !registry.ValidKeyID(keyID) {
		return nil, fmt.Errorf("pseudonym: key name %q: want A-Z a-z 0-9 . _ -", name)
	}
	k := &Key{name: name, keyID: keyID, o: o}
	if err := k.Reload(ctx, "start"); err != nil {
		return nil, err
	}
	return k, nil
}

// Version returns the loaded version ("" when none is usable).
func (k *Key) Version() string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.version
}

// Reload loads the newest active version (again). On failure the key
// loaded before stays in use unless the registry says it may no longer be
// (no active version left): then nothing is usable until a reload works.
func (k *Key) Reload(ctx context.Context, trigger string) error {
	all, err := k.o.Registry.List(ctx)
	if err != nil {
		return fmt.Errorf("pseudonym %s: list registry: %w", k.keyID, err)
	}
	var cur *registry.Entry
	for i := range all {
		e := &all[i]
		if e.KeyID == k.keyID && e.State == dek.StateActive && (cur == nil || !e.CreatedAt.Before(cur.CreatedAt)) {
			cur = e
		}
	}
	if cur == nil {
		k.set("", nil)
		return fmt.Errorf("pseudonym %s: no active version (create one: dekctl pseudonym rotate %s): %w", k.keyID, k.name, ErrUnavailable)
	}
	if k.Version() == cur.Version {
		return nil
	}
	start := k.o.Now()
	key, err := k.o.KMS.Unwrap(ctx, cur.Wrapped, kms.DEKAAD(cur.Ref()))
	res := keycache.UnwrapOK
	switch {
	case err == nil && len(key) != KeySize:
		clear(key)
		err = fmt.Errorf("key is %d bytes, want %d", len(key), KeySize)
		res = keycache.UnwrapError
	case errors.Is(err, kms.ErrRootRevoked):
		res = keycache.UnwrapRevoked
	case err != nil:
		res = keycache.UnwrapError
	}
	k.o.Audit.Record(ctx, keycache.UnwrapEvent{
		Time: start, KeyID: cur.KeyID, Version: cur.Version,
		RootKeyID: cur.Wrapped.RootKeyID, RootKeyVersion: cur.Wrapped.RootKeyVersion,
		Trigger: "pseudonymization key " + trigger, Result: res, Duration: k.o.Now().Sub(start),
	})
	if err != nil {
		return fmt.Errorf("pseudonym %s: unwrap %s: %w", k.keyID, cur.Version, err)
	}
	k.set(cur.Version, key)
	return nil
}

func (k *Key) set(version string, key []byte) {
	k.mu.Lock()
	old := k.key
	k.version, k.key = version, key
	k.mu.Unlock()
	clear(old)
}

// Run follows the registry's change feed until ctx ends, reloading the
// key when one of its versions changes (or the feed resets). A failed
// reload is retried every retry interval.
func (k *Key) Run(ctx context.Context, retry time.Duration) error {
	ch, err := k.o.Registry.Watch(ctx)
	if err != nil {
		return fmt.Errorf("pseudonym %s: watch registry: %w", k.keyID, err)
	}
	if retry <= 0 {
		retry = 5 * time.Second
	}
	var tick <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case c, ok := <-ch:
			if !ok {
				return nil
			}
			if c.Kind != registry.ChangeReset && c.KeyID != k.keyID {
				continue
			}
		case <-tick:
		}
		tick = nil
		if err := k.Reload(ctx, "change"); err != nil && ctx.Err() == nil {
			t := time.NewTimer(retry)
			tick = t.C
		}
	}
}

// Pseudonymize returns "pn:<version>:<base64url HMAC-SHA-256(key, value)>".
func (k *Key) Pseudonymize(_ context.Context, value []byte) (string, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.key == nil {
		return "", fmt.Errorf("pseudonym %s: %w", k.keyID, ErrUnavailable)
	}
	m := hmac.New(sha256.New, k.key)
	m.Write(value)
	var sum [sha256.Size]byte
	var b strings.Builder
	b.Grow(4 + len(k.version) + 44)
	b.WriteString("pn:")
	b.WriteString(k.version)
	b.WriteByte(':')
	b.WriteString(base64.RawURLEncoding.EncodeToString(m.Sum(sum[:0])))
	return b.String(), nil
}

// Close wipes the key.
func (k *Key) Close() error {
	k.set("", nil)
	return nil
}
