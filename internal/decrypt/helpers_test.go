package decrypt

import (
	"context"
	"crypto/cipher"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/testutil/vectors"
)

type keyRef struct{ id, version string }

type fakeKey struct {
	aead    cipher.AEAD
	state   dek.State
	devices []string // nil: any device the key id allows
}

// fakeKeys is an in-memory KeyResolver with the registry's rules: a
// device/<id> key only for that device, a key with a device list only for
// those devices, revoked or shredded versions refused. Read-only after
// construction, so it is safe (and allocation-free) under concurrency.
type fakeKeys struct {
	keys  map[keyRef]fakeKey
	err   atomic.Pointer[error] // when set, every lookup fails with it
	calls atomic.Int64
}

func newFakeKeys() *fakeKeys { return &fakeKeys{keys: map[keyRef]fakeKey{}} }

func (f *fakeKeys) add(tb testing.TB, keyID, version string, dekBytes []byte, state dek.State, devices ...string) cipher.AEAD {
	tb.Helper()
	aead, err := seal.NewAEAD(dekBytes)
	if err != nil {
		tb.Fatal(err)
	}
	f.keys[keyRef{keyID, version}] = fakeKey{aead: aead, state: state, devices: devices}
	return aead
}

func (f *fakeKeys) failWith(err error) { f.err.Store(&err) }

func (f *fakeKeys) ResolveKey(_ context.Context, keyID, keyVersion, deviceID string) (cipher.AEAD, error) {
	f.calls.Add(1)
	if p := f.err.Load(); p != nil {
		return nil, *p
	}
	k, ok := f.keys[keyRef{keyID, keyVersion}]
	if !ok {
		return nil, dek.ErrUnknownKey
	}
	if own, ok := strings.CutPrefix(keyID, "device/"); ok && own != deviceID {
		return nil, dek.ErrUnknownKey
	}
	if k.devices != nil && !slices.Contains(k.devices, deviceID) {
		return nil, dek.ErrUnknownKey
	}
	if !k.state.CanDecrypt() {
		return nil, dek.ErrRevoked
	}
	return k.aead, nil
}

// vectorKeys holds the vector file's keys, with their states and device
// lists.
func vectorKeys(tb testing.TB, v vectors.File) *fakeKeys {
	tb.Helper()
	f := newFakeKeys()
	for _, k := range v.Keys {
		f.add(tb, k.KeyID, k.KeyVersion, k.DEK(), k.State, k.Devices...)
	}
	return f
}

// countingReader is a deterministic nonce source: distinct nonces, the
// same sequence every run.
type countingReader struct{ n uint64 }

func (r *countingReader) Read(p []byte) (int, error) {
	for i := range p {
		if i%8 == 0 {
			r.n++
		}
		p[i] = byte(r.n >> (8 * (i % 8)))
	}
	return len(p), nil
}
