package kpemu

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

func (e *Emulator) createKey(w http.ResponseWriter, r *http.Request, _ string) {
	e.create(w, r, false)
}

// createKeyWithPolicies is POST keys_with_policy_overrides.
func (e *Emulator) createKeyWithPolicies(w http.ResponseWriter, r *http.Request, _ string) {
	e.create(w, r, true)
}

func (e *Emulator) create(w http.ResponseWriter, r *http.Request, withPolicies bool) {
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
	k, err := e.newKey(req, ring, withPolicies)
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
		internalError(w)
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
	k := e.keyLocked(w, id, keyCheck{})
	if k == nil {
		return
	}
	j := e.render(k, withPayload)
	e.mu.Unlock()
	writeKeys(w, http.StatusOK, j)
}

// pageQuery reads ?limit (absent or 0: the default, at most 5000) and
// ?offset, answering 400 INVALID_FIELD_ERR itself when either is not such a
// number; ok is false when it answered.
func pageQuery(w http.ResponseWriter, r *http.Request) (limit, offset int, ok bool) {
	limit, ok1 := queryInt(r, "limit", defaultLimit, maxListLimit)
	offset, ok2 := queryInt(r, "offset", 0, 1<<30)
	if !ok1 || !ok2 {
		invalidField(w, "limit", "an integer from 0 to 5000; offset a non-negative integer")
		return 0, 0, false
	}
	if limit == 0 {
		limit = defaultLimit
	}
	return limit, offset, true
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
	limit, offset, ok := pageQuery(w, r)
	if !ok {
		return
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
	limit, offset, ok := pageQuery(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	check := keyCheck{past: "listed", states: []int{StateActive}}
	if q.Get("allKeyStates") == "true" {
		check = keyCheck{}
	}
	k := e.keyLocked(w, id, check)
	if k == nil {
		return
	}
	var vs []keyVersionJSON
	for i := len(k.versions) - 1; i >= 0; i-- { // newest first
		vs = append(vs, *k.versions[i].json())
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

// keyCheck is what a route requires of the key it names, beyond existing.
// keyLocked answers the first requirement the key fails, in field order.
type keyCheck struct {
	// action, when set, refuses a deleted key with 410, naming the action.
	action string
	// rootOnly refuses a standard (extractable) key with 400
	// KEY_ACTION_INVALID_ERR, naming action.
	rootOnly bool
	// states, when set, are the states the key may be in; another is
	// refused with 409 KEY_ACTION_INVALID_STATE_ERR: "could not be <past>".
	states []int
	past   string
	// wait, when positive, refuses with 409 REQ_TOO_EARLY_ERR until that
	// long after since(k).
	wait  time.Duration
	since func(*key) time.Time
}

// keyLocked finds the key id names (an id or an alias) and checks it,
// answering the refusal itself: 404 KEY_NOT_FOUND_ERR, then check's. It
// returns nil when it answered; otherwise e.mu is held and the caller
// unlocks.
func (e *Emulator) keyLocked(w http.ResponseWriter, id string, check keyCheck) *key {
	e.mu.Lock()
	k := e.lookupLocked(id)
	refuse := e.refusalLocked(k, check)
	if refuse == nil {
		return k
	}
	e.mu.Unlock()
	refuse(w)
	return nil
}

// refusalLocked is the answer keyLocked gives for k (nil: none); e.mu is
// held.
func (e *Emulator) refusalLocked(k *key, c keyCheck) func(http.ResponseWriter) {
	if k == nil {
		return notFound
	}
	now := e.now()
	st := k.effectiveState(now)
	switch {
	case c.action != "" && st == StateDestroyed:
		return func(w http.ResponseWriter) { gone(w, c.action) }
	case c.rootOnly && k.extractable:
		return func(w http.ResponseWriter) { notRootKey(w, c.action) }
	case c.states != nil && !slices.Contains(c.states, st):
		return func(w http.ResponseWriter) { invalidState(w, c.past) }
	case c.wait > 0 && now.Sub(c.since(k)) < c.wait:
		return tooEarly
	}
	return nil
}

// stateChanged and deleted are keyCheck.since for the cooldowns.
func (k *key) stateChanged() time.Time { return k.lastStateChange }
func (k *key) deleted() time.Time      { return *k.deletionDate }

// actionKey reads the body and finds the key for a key action (wrap,
// unwrap, rewrap, rotate, disable, enable), answering the refusals itself.
// It returns nil when it answered. e.mu is held on a non-nil return; the
// caller unlocks.
func (e *Emulator) actionKey(w http.ResponseWriter, r *http.Request, id string, body *actionBody, check keyCheck) *key {
	if err := readBody(r, body); err != nil {
		badBody(w)
		return nil
	}
	if !validAAD(body.AAD) {
		invalidField(w, "aad", "a list of strings of at most 255 characters each")
		return nil
	}
	return e.keyLocked(w, id, check)
}

func (e *Emulator) wrap(w http.ResponseWriter, r *http.Request, id string) {
	var body actionBody
	k := e.actionKey(w, r, id, &body, keyCheck{action: "wrap", rootOnly: true, states: []int{StateActive}, past: "wrapped"})
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
			internalError(w)
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
		internalError(w)
		return
	}
	resp := actionBody{CipherText: ct, KeyVersion: v.json()}
	if generated {
		resp.PlainText = ptr(base64.StdEncoding.EncodeToString(plain))
	}
	writeJSON(w, http.StatusOK, resp)
}

// unwrap answers the plaintext and, when the ciphertext is under an older
// version, the ciphertext rewrapped under the latest (UnwrapV2).
func (e *Emulator) unwrap(w http.ResponseWriter, r *http.Request, id string) {
	e.unwrapAction(w, r, id, keyCheck{action: "unwrap", rootOnly: true, states: []int{StateActive, StateDeactivated}, past: "unwrapped"})
}

// rewrap re-seals under the latest version without returning the
// plaintext. keyVersion names the version that unwrapped (as on unwrap),
// rewrappedKeyVersion the latest.
func (e *Emulator) rewrap(w http.ResponseWriter, r *http.Request, id string) {
	e.unwrapAction(w, r, id, keyCheck{action: "rewrap", rootOnly: true, states: []int{StateActive, StateDeactivated}, past: "rewrapped"})
}

// unwrapAction is unwrap and rewrap: both open the ciphertext under the
// version it names (refused like a wrong ciphertext when it does not
// authenticate) and answer the version that opened it; unwrap adds the
// plaintext and, only when that version is not the latest, the ciphertext
// resealed under the latest; rewrap always reseals and never answers the
// plaintext.
func (e *Emulator) unwrapAction(w http.ResponseWriter, r *http.Request, id string, check keyCheck) {
	var body actionBody
	k := e.actionKey(w, r, id, &body, check)
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
	resp := actionBody{KeyVersion: v.json()}
	if check.action == "unwrap" {
		resp.PlainText = ptr(base64.StdEncoding.EncodeToString(plain))
	}
	if check.action == "rewrap" || v.id != latest.id {
		ct, err := seal(k.id, latest, plain, body.AAD)
		if err != nil {
			internalError(w)
			return
		}
		resp.CipherText = ct
		resp.RewrappedKeyVersion = latest.json()
	}
	writeJSON(w, http.StatusOK, resp)
}

func (e *Emulator) rotate(w http.ResponseWriter, r *http.Request, id string) {
	var body actionBody
	k := e.actionKey(w, r, id, &body, keyCheck{action: "rotate", rootOnly: true, states: []int{StateActive, StateDeactivated}, past: "rotated"})
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
			internalError(w)
			return
		}
	}
	v, err := newVersion(newUUID(), material, now)
	clear(material)
	if err != nil {
		internalError(w)
		return
	}
	k.versions = append(k.versions, v)
	k.lastRotate = ptr(now)
	k.updated = ptr(now)
	w.WriteHeader(http.StatusNoContent)
}

func (e *Emulator) disable(w http.ResponseWriter, r *http.Request, id string) {
	e.changeState(w, r, id, StateSuspended, keyCheck{action: "disable", states: []int{StateActive}, past: "disabled"})
}

func (e *Emulator) enable(w http.ResponseWriter, r *http.Request, id string) {
	e.changeState(w, r, id, StateActive, keyCheck{action: "enable", states: []int{StateSuspended}, past: "enabled",
		wait: e.opts.ActionCooldown, since: (*key).stateChanged})
}

// changeState is disable and enable: the key check allows, it moves to
// state and answers 204.
func (e *Emulator) changeState(w http.ResponseWriter, r *http.Request, id string, state int, check keyCheck) {
	var body actionBody
	k := e.actionKey(w, r, id, &body, check)
	if k == nil {
		return
	}
	defer e.mu.Unlock()
	now := e.now()
	k.state, k.updated, k.lastStateChange = state, ptr(now), now
	w.WriteHeader(http.StatusNoContent)
}

func (e *Emulator) deleteKey(w http.ResponseWriter, r *http.Request, id string) {
	k := e.keyLocked(w, id, keyCheck{})
	if k == nil {
		return
	}
	if k.state == StateDestroyed {
		e.mu.Unlock()
		writeError(w, http.StatusGone, "Gone: Key could not be deleted: Please see 'reasons' for more details (KEY_DELETED_ERR)",
			newReason(http.StatusGone, "KEY_DELETED_ERR", "Key has already been deleted. Please delete references to this key."))
		return
	}
	now := e.now()
	k.state, k.updated, k.lastStateChange, k.deletionDate = StateDestroyed, ptr(now), now, ptr(now)
	j := e.render(k, false)
	e.mu.Unlock()
	writeRemoved(w, r, j)
}

func (e *Emulator) restoreKey(w http.ResponseWriter, r *http.Request, id string) {
	k := e.keyLocked(w, id, keyCheck{states: []int{StateDestroyed}, past: "restored",
		wait: e.opts.ActionCooldown, since: (*key).stateChanged})
	if k == nil {
		return
	}
	now := e.now()
	k.state, k.updated, k.lastStateChange, k.deletionDate = StateActive, ptr(now), now, nil
	j := e.render(k, false)
	e.mu.Unlock()
	writeKeys(w, http.StatusCreated, j)
}

func (e *Emulator) purgeKey(w http.ResponseWriter, r *http.Request, id string) {
	k := e.keyLocked(w, id, keyCheck{states: []int{StateDestroyed}, past: "purged",
		wait: e.opts.PurgeDelay, since: (*key).deleted})
	if k == nil {
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
	writeRemoved(w, r, j)
}

// writeRemoved answers a delete or purge: the key as it was removed when
// the request prefers return=representation, else 204.
func writeRemoved(w http.ResponseWriter, r *http.Request, j keyJSON) {
	if strings.Contains(r.Header.Get("Prefer"), "return=representation") {
		writeKeys(w, http.StatusOK, j)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
