package kpemu

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

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
	Rotation            *rotationJSON   `json:"rotation,omitempty"`
	DualAuthDelete      *struct {
		Enabled bool `json:"enabled"`
	} `json:"dualAuthDelete,omitempty"`
}

// collection is the envelope of a list of resources (§1.4), as answered
// and as a policy body is read.
type collection[T any] struct {
	Metadata struct {
		CollectionType  string `json:"collectionType"`
		CollectionTotal int    `json:"collectionTotal"`
	} `json:"metadata"`
	Resources []T `json:"resources"`
}

// writeCollection answers resources (nil: an empty list) of type typ.
func writeCollection[T any](w http.ResponseWriter, status int, typ string, resources []T) {
	var env collection[T]
	env.Metadata.CollectionType = typ
	env.Metadata.CollectionTotal = len(resources)
	env.Resources = resources
	if env.Resources == nil {
		env.Resources = []T{}
	}
	writeJSON(w, status, env)
}

// keysEnvelope is a create body, totalCount included as the client's type
// has it.
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

func (v keyVersion) json() *keyVersionJSON {
	return &keyVersionJSON{ID: v.id, CreationDate: utc(v.created)}
}

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
		CreationDate: utc(k.created),
		KeyRingID:    k.keyRing, Extractable: k.extractable, Imported: k.imported,
		State: k.effectiveState(now), CRN: e.crn(k.id),
		Deleted: ptr(k.state == StateDestroyed),
		DualAuthDelete: &struct {
			Enabled bool `json:"enabled"`
		}{},
	}
	if k.updated != nil {
		j.LastUpdateDate = utc(*k.updated)
	}
	if k.rotation != nil {
		j.Rotation = k.rotation.json()
	}
	if k.lastRotate != nil {
		j.LastRotateDate = utc(*k.lastRotate)
	}
	if k.expiration != nil {
		j.Expiration = utc(*k.expiration)
	}
	if !k.extractable {
		j.KeyVersion = k.latest().json()
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
	writeCollection(w, status, keyType, ks)
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

func internalError(w http.ResponseWriter) {
	writeError(w, http.StatusInternalServerError, "Internal Server Error", nil)
}

func badCiphertext(w http.ResponseWriter) {
	invalidField(w, "ciphertext", "the original base64 encoded ciphertext from the wrap operation")
}

func notRootKey(w http.ResponseWriter, action string) {
	writeError(w, http.StatusBadRequest, "Bad Request: Key could not be used for '"+action+"': Please see 'reasons' for more details (KEY_ACTION_INVALID_ERR)",
		newReason(http.StatusBadRequest, "KEY_ACTION_INVALID_ERR", "Only root keys support this action"))
}

func writeIAMError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{
		"errorCode":    code,
		"errorMessage": msg,
		"context":      map[string]string{"requestId": newUUID()},
	})
}

// reason is one entry of an error's reasons list.
type reason struct {
	Code     string `json:"code"`
	Message  string `json:"message"`
	Status   int    `json:"status"`
	MoreInfo string `json:"moreInfo"`
	Target   *struct {
		Type string `json:"type"`
		Name string `json:"name"`
	} `json:"target,omitempty"`
}

func newReason(status int, code, msg string) *reason {
	return &reason{Code: code, Message: msg, Status: status, MoreInfo: moreInfo}
}

func (r *reason) withTarget(field string) *reason {
	r.Target = &struct {
		Type string `json:"type"`
		Name string `json:"name"`
	}{"field", field}
	return r
}

// writeError writes the Key Protect error envelope (§1.5).
func writeError(w http.ResponseWriter, status int, msg string, rs *reason) {
	res := map[string]any{"errorMsg": msg}
	if rs != nil {
		res["reasons"] = []*reason{rs}
	}
	writeJSON(w, status, map[string]any{
		"metadata":  map[string]any{"collectionType": errType, "collectionTotal": 1},
		"resources": []any{res},
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// readBody decodes an optional JSON body: empty and "null" leave v as is.
func readBody(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	return json.Unmarshal(b, v)
}

func badBody(w http.ResponseWriter) {
	writeError(w, http.StatusBadRequest, "Bad Request: The request body could not be parsed. Please see 'reasons' for more details (BAD_BODY_ERR)",
		newReason(http.StatusBadRequest, "BAD_BODY_ERR", "Invalid body data was passed: Please ensure the data passed had valid formatting with no invalid characters"))
}
