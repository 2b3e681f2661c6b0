package kpemu

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
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
	created, updated      time.Time
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

// Wire types.

type keyVersionJSON struct {
	ID           string     `json:"id"`
	CreationDate *time.Time `json:"creationDate,omitempty"`
}

type keyJSON struct {
	ID                  string          `json:"id,omitempty"`
	Name                string          `json:"name,omitempty"`
	Description         string          `json:"description,omitempty"`
	Type                string          `json:"type,omitempty"`
	Tags                []string        `json:"Tags,omitempty"`
	Aliases             []string        `json:"aliases,omitempty"`
	AlgorithmType       string          `json:"algorithmType,omitempty"`
	CreatedBy           string          `json:"createdBy,omitempty"`
	CreationDate        *time.Time      `json:"creationDate,omitempty"`
	LastUpdateDate      *time.Time      `json:"lastUpdateDate,omitempty"`
	LastRotateDate      *time.Time      `json:"lastRotateDate,omitempty"`
	KeyVersion          *keyVersionJSON `json:"keyVersion,omitempty"`
	KeyRingID           string          `json:"keyRingID,omitempty"`
	Extractable         bool            `json:"extractable"`
	Expiration          *time.Time      `json:"expirationDate,omitempty"`
	Imported            bool            `json:"imported"`
	Payload             string          `json:"payload,omitempty"`
	State               int             `json:"state,omitempty"`
	CRN                 string          `json:"crn,omitempty"`
	Deleted             *bool           `json:"deleted,omitempty"`
	DeletionDate        *time.Time      `json:"deletionDate,omitempty"`
	RestoreAllowed      *bool           `json:"restoreAllowed,omitempty"`
	PurgeAllowed        *bool           `json:"purgeAllowed,omitempty"`
	PurgeAllowedFrom    *time.Time      `json:"purgeAllowedFrom,omitempty"`
	EncryptionAlgorithm string          `json:"encryptionAlgorithm,omitempty"`
	EncryptedNonce      string          `json:"encryptedNonce,omitempty"`
	IV                  string          `json:"iv,omitempty"`
	DualAuthDelete      *struct {
		Enabled bool `json:"enabled"`
	} `json:"dualAuthDelete,omitempty"`
}

type keysEnvelope struct {
	Metadata struct {
		CollectionType  string `json:"collectionType"`
		CollectionTotal int    `json:"collectionTotal"`
		TotalCount      *int   `json:"totalCount,omitempty"`
	} `json:"metadata"`
	Resources []keyJSON `json:"resources"`
}

type actionBody struct {
	PlainText           *string         `json:"plaintext,omitempty"`
	AAD                 []string        `json:"aad,omitempty"`
	CipherText          string          `json:"ciphertext,omitempty"`
	Payload             string          `json:"payload,omitempty"`
	EncryptedNonce      string          `json:"encryptedNonce,omitempty"`
	IV                  string          `json:"iv,omitempty"`
	EncryptionAlgorithm string          `json:"encryptionAlgorithm,omitempty"`
	KeyVersion          *keyVersionJSON `json:"keyVersion,omitempty"`
	RewrappedKeyVersion *keyVersionJSON `json:"rewrappedKeyVersion,omitempty"`
}

func ptr[T any](v T) *T { return &v }

func utc(t time.Time) *time.Time { return ptr(t.UTC().Truncate(time.Second)) }

func (e *Emulator) crn(id string) string {
	return "crn:v1:bluemix:public:kms:local:a/kpemu:" + e.instanceID + ":key:" + id
}

// render is the key resource; withPayload for GET keys/{id} only.
func (e *Emulator) render(k *key, withPayload bool) keyJSON {
	now := e.now()
	j := keyJSON{
		ID: k.id, Name: k.name, Description: k.description, Type: keyType,
		Tags: k.tags, Aliases: k.aliases, AlgorithmType: "AES", CreatedBy: "kpemu",
		CreationDate: utc(k.created), LastUpdateDate: utc(k.updated),
		KeyRingID: k.keyRing, Extractable: k.extractable, Imported: k.imported,
		State: k.effectiveState(now), CRN: e.crn(k.id),
		Deleted: ptr(k.state == StateDestroyed),
		DualAuthDelete: &struct {
			Enabled bool `json:"enabled"`
		}{},
	}
	if k.lastRotate != nil {
		j.LastRotateDate = utc(*k.lastRotate)
	}
	if k.expiration != nil {
		j.Expiration = utc(*k.expiration)
	}
	if !k.extractable {
		v := k.latest()
		j.KeyVersion = &keyVersionJSON{ID: v.id, CreationDate: utc(v.created)}
	}
	if withPayload && k.extractable && k.state != StateDestroyed {
		j.Payload = base64.StdEncoding.EncodeToString(k.payload)
	}
	if k.deletionDate != nil {
		j.DeletionDate = utc(*k.deletionDate)
		from := k.deletionDate.Add(e.opts.PurgeDelay)
		j.PurgeAllowedFrom = utc(from)
		j.PurgeAllowed = ptr(!now.Before(from))
		j.RestoreAllowed = ptr(true)
	}
	return j
}

func writeKeys(w http.ResponseWriter, status int, ks ...keyJSON) {
	var env keysEnvelope
	env.Metadata.CollectionType = keyType
	env.Metadata.CollectionTotal = len(ks)
	env.Resources = ks
	if env.Resources == nil {
		env.Resources = []keyJSON{}
	}
	writeJSON(w, status, env)
}

// Refusals (§3 of the reference).

func notFound(w http.ResponseWriter) {
	writeError(w, http.StatusNotFound, "Not Found: Key could not be retrieved: Please see 'reasons' for more details (KEY_NOT_FOUND_ERR)",
		newReason(http.StatusNotFound, "KEY_NOT_FOUND_ERR", "key does not exist"))
}

func invalidState(w http.ResponseWriter, what string) {
	writeError(w, http.StatusConflict, "Conflict: Key is not in active state: Key could not be "+what+". Please see `reasons` for more details.",
		newReason(http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR", "Key is not in a valid state"))
}

func gone(w http.ResponseWriter, action string) {
	writeError(w, http.StatusGone, "Gone: The key has been deleted and is no longer available.Please provide a valid key when performing an '"+action+"' action", nil)
}

func tooEarly(w http.ResponseWriter) {
	writeError(w, http.StatusConflict, "Conflict: Action could not be performed on key. Please see reasons for more details.",
		newReason(http.StatusConflict, "REQ_TOO_EARLY_ERR", "The requested action cannot be performed yet: the key's state changed too recently. Retry later"))
}

func invalidField(w http.ResponseWriter, field, msg string) {
	writeError(w, http.StatusBadRequest, "Bad Request: The action could not be performed: Please see 'reasons' for more details (INVALID_FIELD_ERR)",
		newReason(http.StatusBadRequest, "INVALID_FIELD_ERR", "The field '"+field+"' must be: "+msg).withTarget(field))
}

func badCiphertext(w http.ResponseWriter) {
	invalidField(w, "ciphertext", "the original base64 encoded ciphertext from the wrap operation")
}

func notRootKey(w http.ResponseWriter, action string) {
	writeError(w, http.StatusBadRequest, "Bad Request: Key could not be used for '"+action+"': Please see 'reasons' for more details (KEY_ACTION_INVALID_ERR)",
		newReason(http.StatusBadRequest, "KEY_ACTION_INVALID_ERR", "Only root keys support this action"))
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
	k, err := e.newKey(keyJSON{Name: name}, defaultRingID)
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

// newKey validates a create request and stores the key.
func (e *Emulator) newKey(req keyJSON, ring string) (*key, error) {
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
		created: now, updated: now, lastStateChange: now, expiration: req.Expiration,
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

func (e *Emulator) createKey(w http.ResponseWriter, r *http.Request, _ string) {
	var env keysEnvelope
	if err := readBody(r, &env); err != nil || len(env.Resources) != 1 {
		badBody(w)
		return
	}
	req := env.Resources[0]
	ring := r.Header.Get("X-Kms-Key-Ring")
	if ring == "" {
		ring = defaultRingID
	}
	k, err := e.newKey(req, ring)
	var fe *fieldError
	switch {
	case errors.As(err, &fe):
		invalidField(w, fe.field, fe.msg)
		return
	case errors.Is(err, errAliasTaken):
		writeError(w, http.StatusConflict, "Conflict: Key could not be created: Please see 'reasons' for more details (KEY_ALIAS_NOT_UNIQUE_ERR)",
			newReason(http.StatusConflict, "KEY_ALIAS_NOT_UNIQUE_ERR", "One or more aliases are already associated with a key in the instance"))
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, "Internal Server Error", nil)
		return
	}
	e.mu.Lock()
	j := e.render(k, false)
	e.mu.Unlock()
	writeKeys(w, http.StatusCreated, j)
}

func (e *Emulator) getKey(w http.ResponseWriter, r *http.Request, id string) {
	e.getOne(w, id, true)
}

func (e *Emulator) getMetadata(w http.ResponseWriter, r *http.Request, id string) {
	e.getOne(w, id, false)
}

func (e *Emulator) getOne(w http.ResponseWriter, id string, withPayload bool) {
	e.mu.Lock()
	k := e.lookupLocked(id)
	if k == nil {
		e.mu.Unlock()
		notFound(w)
		return
	}
	j := e.render(k, withPayload)
	e.mu.Unlock()
	writeKeys(w, http.StatusOK, j)
}

func queryInt(r *http.Request, name string, def, max int) (int, bool) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > max {
		return 0, false
	}
	return n, true
}

func (e *Emulator) listKeys(w http.ResponseWriter, r *http.Request, _ string) {
	limit, ok1 := queryInt(r, "limit", defaultLimit, maxListLimit)
	offset, ok2 := queryInt(r, "offset", 0, 1<<30)
	if !ok1 || !ok2 {
		invalidField(w, "limit", "an integer from 0 to 5000; offset a non-negative integer")
		return
	}
	if limit == 0 {
		limit = defaultLimit
	}
	q := r.URL.Query()
	states := map[int]bool{StateActive: true, StateSuspended: true, StateDeactivated: true}
	if s := q.Get("state"); s != "" {
		states = map[int]bool{}
		for _, p := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil {
				invalidField(w, "state", "a comma-separated list of key states")
				return
			}
			states[n] = true
		}
	}
	extractable := q.Get("extractable")
	e.mu.Lock()
	now := e.now()
	var out []keyJSON
	seen := 0
	for _, id := range e.order {
		k := e.keys[id]
		if k == nil || !states[k.effectiveState(now)] {
			continue
		}
		if extractable != "" && strconv.FormatBool(k.extractable) != extractable {
			continue
		}
		seen++
		if seen <= offset || len(out) >= limit {
			continue
		}
		out = append(out, e.render(k, false))
	}
	e.mu.Unlock()
	writeKeys(w, http.StatusOK, out...)
}

func (e *Emulator) listVersions(w http.ResponseWriter, r *http.Request, id string) {
	limit, ok1 := queryInt(r, "limit", defaultLimit, maxListLimit)
	offset, ok2 := queryInt(r, "offset", 0, 1<<30)
	if !ok1 || !ok2 {
		invalidField(w, "limit", "an integer from 0 to 5000; offset a non-negative integer")
		return
	}
	if limit == 0 {
		limit = defaultLimit
	}
	q := r.URL.Query()
	e.mu.Lock()
	k := e.lookupLocked(id)
	if k == nil {
		e.mu.Unlock()
		notFound(w)
		return
	}
	if k.effectiveState(e.now()) != StateActive && q.Get("allKeyStates") != "true" {
		e.mu.Unlock()
		invalidState(w, "listed")
		return
	}
	var vs []keyVersionJSON
	for i := len(k.versions) - 1; i >= 0; i-- { // newest first
		vs = append(vs, keyVersionJSON{ID: k.versions[i].id, CreationDate: utc(k.versions[i].created)})
	}
	e.mu.Unlock()
	total := len(vs)
	vs = vs[min(offset, total):min(offset+limit, total)]
	meta := map[string]any{"collectionType": keyType, "collectionTotal": len(vs)}
	if q.Get("totalCount") == "true" {
		meta["totalCount"] = total
	}
	if vs == nil {
		vs = []keyVersionJSON{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"metadata": meta, "resources": vs})
}

// Ciphertext: base64 of {"ciphertext","iv","version","handle"} like the
// real service, handle naming the key version; the key id is bound as GCM
// additional data rather than carried.

type ciphertextJSON struct {
	Ciphertext []byte `json:"ciphertext"`
	IV         []byte `json:"iv"`
	Version    string `json:"version"`
	Handle     string `json:"handle"`
}

var errCiphertext = errors.New("malformed ciphertext")

// parseCiphertext decodes the opaque wrap output.
func parseCiphertext(s string) (ciphertextJSON, error) {
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return ciphertextJSON{}, errCiphertext
	}
	var c ciphertextJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return ciphertextJSON{}, errCiphertext
	}
	if c.Version != ctFormat || c.Handle == "" || len(c.IV) != nonceSize || len(c.Ciphertext) < 16 {
		return ciphertextJSON{}, errCiphertext
	}
	return c, nil
}

func gcmAAD(keyID, versionID string, aad []string) []byte {
	parts := append([]string{wrapLabel, keyID, versionID}, aad...)
	b := binary.BigEndian.AppendUint32(nil, uint32(len(parts)))
	for _, p := range parts {
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return b
}

func seal(keyID string, v keyVersion, plain []byte, aad []string) (string, error) {
	iv := make([]byte, nonceSize)
	if _, err := io.ReadFull(rand.Reader, iv); err != nil {
		return "", err
	}
	ct := v.aead.Seal(nil, iv, plain, gcmAAD(keyID, v.id, aad))
	b, err := json.Marshal(ciphertextJSON{Ciphertext: ct, IV: iv, Version: ctFormat, Handle: v.id})
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

func openCT(k *key, s string, aad []string) ([]byte, keyVersion, error) {
	c, err := parseCiphertext(s)
	if err != nil {
		return nil, keyVersion{}, err
	}
	v, ok := k.version(c.Handle)
	if !ok {
		return nil, keyVersion{}, errCiphertext
	}
	plain, err := v.aead.Open(nil, c.IV, c.Ciphertext, gcmAAD(k.id, v.id, aad))
	if err != nil {
		return nil, keyVersion{}, errCiphertext
	}
	return plain, v, nil
}

func validAAD(aad []string) bool {
	for _, a := range aad {
		if len(a) > maxAADEntry {
			return false
		}
	}
	return true
}

// actionKey reads the body and finds the key for a wrap-family action,
// answering the refusals itself. It returns nil when it answered. e.mu is
// held on a non-nil return; the caller unlocks.
func (e *Emulator) actionKey(w http.ResponseWriter, r *http.Request, id, action string, body *actionBody, allowed ...int) *key {
	if err := readBody(r, body); err != nil {
		badBody(w)
		return nil
	}
	if !validAAD(body.AAD) {
		invalidField(w, "aad", "a list of strings of at most 255 characters each")
		return nil
	}
	e.mu.Lock()
	k := e.lookupLocked(id)
	if k == nil {
		e.mu.Unlock()
		notFound(w)
		return nil
	}
	st := k.effectiveState(e.now())
	if st == StateDestroyed {
		e.mu.Unlock()
		gone(w, action)
		return nil
	}
	if k.extractable && action != "disable" && action != "enable" {
		e.mu.Unlock()
		notRootKey(w, action)
		return nil
	}
	if !slices.Contains(allowed, st) {
		e.mu.Unlock()
		past := map[string]string{"wrap": "wrapped", "unwrap": "unwrapped", "rewrap": "rewrapped", "rotate": "rotated", "disable": "disabled", "enable": "enabled"}[action]
		invalidState(w, past)
		return nil
	}
	return k
}

func (e *Emulator) wrap(w http.ResponseWriter, r *http.Request, id string) {
	var body actionBody
	k := e.actionKey(w, r, id, "wrap", &body, StateActive)
	if k == nil {
		return
	}
	v := k.latest()
	e.mu.Unlock()
	generated := body.PlainText == nil || *body.PlainText == ""
	var plain []byte
	if generated {
		plain = make([]byte, generatedDEK)
		if _, err := rand.Read(plain); err != nil {
			writeError(w, http.StatusInternalServerError, "Internal Server Error", nil)
			return
		}
	} else {
		b, err := base64.StdEncoding.DecodeString(*body.PlainText)
		if err != nil || len(b) > maxPlaintext {
			invalidField(w, "plaintext", "a base64 encoded data encryption key of at most 4096 bytes")
			return
		}
		plain = b
	}
	defer clear(plain)
	ct, err := seal(k.id, v, plain, body.AAD)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "Internal Server Error", nil)
		return
	}
	resp := actionBody{CipherText: ct, KeyVersion: &keyVersionJSON{ID: v.id, CreationDate: utc(v.created)}}
	if generated {
		resp.PlainText = ptr(base64.StdEncoding.EncodeToString(plain))
	}
	writeJSON(w, http.StatusOK, resp)
}

// unwrap answers the plaintext and, when the ciphertext is under an older
// version, the ciphertext rewrapped under the latest (UnwrapV2).
func (e *Emulator) unwrap(w http.ResponseWriter, r *http.Request, id string) {
	var body actionBody
	k := e.actionKey(w, r, id, "unwrap", &body, StateActive, StateDeactivated)
	if k == nil {
		return
	}
	plain, v, err := openCT(k, body.CipherText, body.AAD)
	latest := k.latest()
	e.mu.Unlock()
	if err != nil {
		badCiphertext(w)
		return
	}
	defer clear(plain)
	resp := actionBody{PlainText: ptr(base64.StdEncoding.EncodeToString(plain)), KeyVersion: &keyVersionJSON{ID: v.id, CreationDate: utc(v.created)}}
	if v.id != latest.id {
		ct, err := seal(k.id, latest, plain, body.AAD)
		if err != nil {
			writeError(w, http.StatusInternalServerError, "Internal Server Error", nil)
			return
		}
		resp.CipherText = ct
		resp.RewrappedKeyVersion = &keyVersionJSON{ID: latest.id, CreationDate: utc(latest.created)}
	}
	writeJSON(w, http.StatusOK, resp)
}

// rewrap re-seals under the latest version without returning the
// plaintext. keyVersion names the version that unwrapped (as on unwrap),
// rewrappedKeyVersion the latest.
func (e *Emulator) rewrap(w http.ResponseWriter, r *http.Request, id string) {
	var body actionBody
	k := e.actionKey(w, r, id, "rewrap", &body, StateActive, StateDeactivated)
	if k == nil {
		return
	}
	plain, v, err := openCT(k, body.CipherText, body.AAD)
	latest := k.latest()
	e.mu.Unlock()
	if err != nil {
		badCiphertext(w)
		return
	}
	defer clear(plain)
	ct, err := seal(k.id, latest, plain, body.AAD)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "Internal Server Error", nil)
		return
	}
	writeJSON(w, http.StatusOK, actionBody{
		CipherText:          ct,
		KeyVersion:          &keyVersionJSON{ID: v.id, CreationDate: utc(v.created)},
		RewrappedKeyVersion: &keyVersionJSON{ID: latest.id, CreationDate: utc(latest.created)},
	})
}

func (e *Emulator) rotate(w http.ResponseWriter, r *http.Request, id string) {
	var body actionBody
	k := e.actionKey(w, r, id, "rotate", &body, StateActive, StateDeactivated)
	if k == nil {
		return
	}
	defer e.mu.Unlock()
	now := e.now()
	if e.opts.RotateInterval > 0 && k.lastRotate != nil && now.Sub(*k.lastRotate) < e.opts.RotateInterval {
		writeError(w, http.StatusConflict, "Conflict: Action could not be performed on key. Please see reasons for more details.",
			newReason(http.StatusConflict, "KEY_ROTATION_NOT_PERMITTED", "This root key has been rotated within the last hour. Only one 'rotate' action per hour is permitted"))
		return
	}
	var material []byte
	switch {
	case k.imported && body.Payload == "":
		writeError(w, http.StatusBadRequest, "Bad Request: Key could not be rotated: Please see 'reasons' for more details (KEY_PAYLOAD_REQ_ERR)",
			newReason(http.StatusBadRequest, "KEY_PAYLOAD_REQ_ERR", "A payload is required to rotate an imported key"))
		return
	case !k.imported && body.Payload != "":
		writeError(w, http.StatusBadRequest, "Bad Request: Key could not be rotated: Please see 'reasons' for more details (INVALID_QUERY_PARAM_ERR)",
			newReason(http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR", "A payload cannot be supplied to rotate a generated key"))
		return
	case k.imported:
		b, err := base64.StdEncoding.DecodeString(body.Payload)
		if err != nil || (len(b) != 16 && len(b) != 24 && len(b) != 32) {
			invalidField(w, "payload", "base64 encoded key material of 128, 192 or 256 bits")
			return
		}
		material = b
	default:
		material = make([]byte, rootKeySize)
		if _, err := rand.Read(material); err != nil {
			writeError(w, http.StatusInternalServerError, "Internal Server Error", nil)
			return
		}
	}
	v, err := newVersion(newUUID(), material, now)
	clear(material)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "Internal Server Error", nil)
		return
	}
	k.versions = append(k.versions, v)
	k.lastRotate = ptr(now)
	k.updated = now
	w.WriteHeader(http.StatusNoContent)
}

func (e *Emulator) disable(w http.ResponseWriter, r *http.Request, id string) {
	var body actionBody
	k := e.actionKey(w, r, id, "disable", &body, StateActive)
	if k == nil {
		return
	}
	defer e.mu.Unlock()
	now := e.now()
	k.state, k.updated, k.lastStateChange = StateSuspended, now, now
	w.WriteHeader(http.StatusNoContent)
}

func (e *Emulator) enable(w http.ResponseWriter, r *http.Request, id string) {
	var body actionBody
	k := e.actionKey(w, r, id, "enable", &body, StateSuspended)
	if k == nil {
		return
	}
	defer e.mu.Unlock()
	now := e.now()
	if e.opts.ActionCooldown > 0 && now.Sub(k.lastStateChange) < e.opts.ActionCooldown {
		tooEarly(w)
		return
	}
	k.state, k.updated, k.lastStateChange = StateActive, now, now
	w.WriteHeader(http.StatusNoContent)
}

func (e *Emulator) deleteKey(w http.ResponseWriter, r *http.Request, id string) {
	e.mu.Lock()
	k := e.lookupLocked(id)
	if k == nil {
		e.mu.Unlock()
		notFound(w)
		return
	}
	if k.state == StateDestroyed {
		e.mu.Unlock()
		writeError(w, http.StatusGone, "Gone: Key could not be deleted: Please see 'reasons' for more details (KEY_DELETED_ERR)",
			newReason(http.StatusGone, "KEY_DELETED_ERR", "Key has already been deleted. Please delete references to this key."))
		return
	}
	now := e.now()
	k.state, k.updated, k.lastStateChange, k.deletionDate = StateDestroyed, now, now, ptr(now)
	j := e.render(k, false)
	e.mu.Unlock()
	if strings.Contains(r.Header.Get("Prefer"), "return=representation") {
		writeKeys(w, http.StatusOK, j)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (e *Emulator) restoreKey(w http.ResponseWriter, r *http.Request, id string) {
	e.mu.Lock()
	k := e.lookupLocked(id)
	if k == nil {
		e.mu.Unlock()
		notFound(w)
		return
	}
	now := e.now()
	switch {
	case k.state != StateDestroyed:
		e.mu.Unlock()
		invalidState(w, "restored")
		return
	case e.opts.ActionCooldown > 0 && now.Sub(k.lastStateChange) < e.opts.ActionCooldown:
		e.mu.Unlock()
		tooEarly(w)
		return
	}
	k.state, k.updated, k.lastStateChange, k.deletionDate = StateActive, now, now, nil
	j := e.render(k, false)
	e.mu.Unlock()
	writeKeys(w, http.StatusCreated, j)
}

func (e *Emulator) purgeKey(w http.ResponseWriter, r *http.Request, id string) {
	e.mu.Lock()
	k := e.lookupLocked(id)
	if k == nil {
		e.mu.Unlock()
		notFound(w)
		return
	}
	now := e.now()
	switch {
	case k.state != StateDestroyed:
		e.mu.Unlock()
		invalidState(w, "purged")
		return
	case e.opts.PurgeDelay > 0 && now.Sub(*k.deletionDate) < e.opts.PurgeDelay:
		e.mu.Unlock()
		tooEarly(w)
		return
	}
	j := e.render(k, false)
	delete(e.keys, k.id)
	for _, a := range k.aliases {
		delete(e.aliases, a)
	}
	e.order = slices.DeleteFunc(e.order, func(s string) bool { return s == k.id })
	k.versions, k.payload = nil, nil // drop the material (AEADs) with the key
	e.mu.Unlock()
	if strings.Contains(r.Header.Get("Prefer"), "return=representation") {
		writeKeys(w, http.StatusOK, j)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// String keeps a key's material out of any accidental %v.
func (k *key) String() string { return fmt.Sprintf("key(%s, state %d)", k.id, k.state) }
