package kpemu

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"
)

// Key states (keys.go:44-53 of the client).
const (
	StateActive      = 1
	StateSuspended   = 2
	StateDeactivated = 3
	StateDestroyed   = 5
)

const (
	ctFormat      = "kpemu-1"
	wrapLabel     = "kpemu-wrap-v1"
	maxPlaintext  = 4096
	maxAADEntry   = 255
	defaultLimit  = 200
	maxListLimit  = 5000
	nonceSize     = 12
	rootKeySize   = 32
	generatedDEK  = 32
	defaultRingID = "default"
)

type keyVersion struct {
	id      string
	created time.Time
	aead    cipher.AEAD
}

type key struct {
	id, name, description string
	aliases, tags         []string
	extractable, imported bool
	payload               []byte // standard keys only; GET returns it
	state                 int
	keyRing               string
	created               time.Time
	updated               *time.Time      // nil until the key first changes (the service sets no lastUpdateDate on create)
	rotation              *rotationPolicy // the key's rotation policy, nil when it has none
	dualAuth              *bool           // the key's dualAuthDelete policy, nil when unset
	policyCreated         time.Time
	lastRotate            *time.Time
	lastStateChange       time.Time
	expiration            *time.Time
	deletionDate          *time.Time
	versions              []keyVersion // oldest first; the last one wraps
}

// effectiveState applies expiry: a key past its expiration is Deactivated.
func (k *key) effectiveState(now time.Time) int {
	if (k.state == StateActive || k.state == StateSuspended) && k.expiration != nil && !now.Before(*k.expiration) {
		return StateDeactivated
	}
	return k.state
}

func (k *key) latest() keyVersion { return k.versions[len(k.versions)-1] }

func (k *key) version(id string) (keyVersion, bool) {
	for _, v := range k.versions {
		if v.id == id {
			return v, true
		}
	}
	return keyVersion{}, false
}

func newVersion(id string, material []byte, now time.Time) (keyVersion, error) {
	block, err := aes.NewCipher(material)
	if err != nil {
		return keyVersion{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return keyVersion{}, err
	}
	return keyVersion{id: id, created: now, aead: aead}, nil
}

// lookupLocked finds a key by id or alias; e.mu is held.
func (e *Emulator) lookupLocked(idOrAlias string) *key {
	if k, ok := e.keys[idOrAlias]; ok {
		return k
	}
	if id, ok := e.aliases[idOrAlias]; ok {
		return e.keys[id]
	}
	return nil
}

var aliasRE = regexp.MustCompile(`^[A-Za-z0-9_-]{2,90}$`)
var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// CreateRootKey makes a generated root key directly (no HTTP, no counters),
// for cmd/kpemu and test setup. It returns the key id.
func (e *Emulator) CreateRootKey(name string) (string, error) {
	k, err := e.newKey(keyJSON{Name: name}, defaultRingID, false)
	if err != nil {
		return "", err
	}
	return k.id, nil
}

// KeyState returns the state of a key (by id or alias) as the API would
// report it, and whether the key exists.
func (e *Emulator) KeyState(idOrAlias string) (int, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := e.lookupLocked(idOrAlias)
	if k == nil {
		return 0, false
	}
	return k.effectiveState(e.now()), true
}

type fieldError struct{ field, msg string }

func (f *fieldError) Error() string { return f.field + ": " + f.msg }

// newKey validates a create request and stores the key. withPolicies is
// keys_with_policy_overrides: the request's rotation and dualAuthDelete
// replace the instance's policies (absent means none); otherwise a root
// key inherits the instance's enabled policies.
func (e *Emulator) newKey(req keyJSON, ring string, withPolicies bool) (*key, error) {
	if n := len(req.Name); n < 2 || n > 90 {
		return nil, &fieldError{"name", "a string of 2 to 90 characters"}
	}
	if len(req.Description) > 240 {
		return nil, &fieldError{"description", "a string of at most 240 characters"}
	}
	for _, a := range req.Aliases {
		if !aliasRE.MatchString(a) || uuidRE.MatchString(a) {
			return nil, &fieldError{"aliases", "2 to 90 letters, digits, '-' or '_', not a UUID"}
		}
	}
	var rot *rotationPolicy
	if withPolicies && req.Rotation != nil {
		var err error
		if rot, err = mergeRotation(nil, req.Rotation); err != nil {
			return nil, err
		}
	}
	if req.EncryptedNonce != "" || req.IV != "" {
		return nil, &fieldError{"encryptedNonce", "absent: secure import is not emulated"}
	}
	now := e.now()
	var material []byte
	imported := req.Payload != ""
	if imported {
		b, err := base64.StdEncoding.DecodeString(req.Payload)
		if err != nil || (!req.Extractable && len(b) != 16 && len(b) != 24 && len(b) != 32) || len(b) == 0 || len(b) > maxPlaintext {
			return nil, &fieldError{"payload", "base64 encoded key material of 128, 192 or 256 bits"}
		}
		material = b
	} else {
		material = make([]byte, rootKeySize)
		if _, err := rand.Read(material); err != nil {
			return nil, err
		}
	}
	k := &key{
		id: newUUID(), name: req.Name, description: req.Description,
		aliases: slices.Clone(req.Aliases), tags: slices.Clone(req.Tags),
		extractable: req.Extractable, imported: imported,
		state: StateActive, keyRing: ring,
		created: now, lastStateChange: now, expiration: req.Expiration,
	}
	if k.extractable {
		k.payload = material
	} else {
		v, err := newVersion(k.id, material, now) // first version id = key id, as in the fixtures
		clear(material)
		if err != nil {
			return nil, &fieldError{"payload", "base64 encoded key material of 128, 192 or 256 bits"}
		}
		k.versions = []keyVersion{v}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case withPolicies:
		k.rotation = rot
		if req.DualAuthDelete != nil {
			k.dualAuth = ptr(req.DualAuthDelete.Enabled)
		}
	case !k.extractable:
		k.rotation, k.dualAuth = e.inheritedPoliciesLocked()
	}
	if k.rotation != nil || k.dualAuth != nil {
		k.policyCreated = now
	}
	for _, a := range k.aliases {
		if _, taken := e.aliases[a]; taken {
			return nil, errAliasTaken
		}
	}
	for _, a := range k.aliases {
		e.aliases[a] = k.id
	}
	e.keys[k.id] = k
	e.order = append(e.order, k.id)
	return k, nil
}

var errAliasTaken = errors.New("alias taken")

// String keeps a key's material out of any accidental %v.
func (k *key) String() string { return fmt.Sprintf("key(%s, state %d)", k.id, k.state) }
