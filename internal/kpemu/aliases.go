package kpemu

import (
	"net/http"
	"slices"
	"strings"
	"time"
)

// maxAliases is the service's limit of aliases per key.
const maxAliases = 5

type aliasJSON struct {
	KeyID        string     `json:"keyId"`
	Alias        string     `json:"alias"`
	CreatedBy    string     `json:"createdBy"`
	CreationDate *time.Time `json:"creationDate"`
}

func splitAliasRoute(idAlias string) (id, alias string) {
	id, alias, _ = strings.Cut(idAlias, "/")
	return id, alias
}

// createAlias is POST keys/{id}/aliases/{alias} (key_alias.go): 201 with
// the alias; 409 KEY_ALIAS_NOT_UNIQUE_ERR when another key holds it.
func (e *Emulator) createAlias(w http.ResponseWriter, r *http.Request, idAlias string) {
	id, alias := splitAliasRoute(idAlias)
	if !aliasRE.MatchString(alias) || uuidRE.MatchString(alias) {
		invalidField(w, "alias", "2 to 90 letters, digits, '-' or '_', not a UUID")
		return
	}
	k := e.keyLocked(w, id, keyCheck{action: "alias"})
	if k == nil {
		return
	}
	defer e.mu.Unlock()
	if holder, taken := e.aliases[alias]; taken && holder != k.id {
		writeError(w, http.StatusConflict, "Conflict: Alias could not be created: Please see 'reasons' for more details (KEY_ALIAS_NOT_UNIQUE_ERR)",
			newReason(http.StatusConflict, "KEY_ALIAS_NOT_UNIQUE_ERR", "One or more aliases are already associated with a key in the instance"))
		return
	}
	if !slices.Contains(k.aliases, alias) {
		if len(k.aliases) >= maxAliases {
			writeError(w, http.StatusBadRequest, "Bad Request: Alias could not be created: Please see 'reasons' for more details (KEY_ALIAS_QUOTA_ERR)",
				newReason(http.StatusBadRequest, "KEY_ALIAS_QUOTA_ERR", "A key can have at most 5 aliases"))
			return
		}
		k.aliases = append(k.aliases, alias)
		e.aliases[alias] = k.id
	}
	writeCollection(w, http.StatusCreated, "application/vnd.ibm.kms.alias+json",
		[]aliasJSON{{KeyID: k.id, Alias: alias, CreatedBy: "kpemu", CreationDate: utc(e.now())}})
}

// deleteAlias is DELETE keys/{id}/aliases/{alias}: 204, or 404 when the
// key does not hold that alias.
func (e *Emulator) deleteAlias(w http.ResponseWriter, r *http.Request, idAlias string) {
	id, alias := splitAliasRoute(idAlias)
	k := e.keyLocked(w, id, keyCheck{})
	if k == nil {
		return
	}
	defer e.mu.Unlock()
	if !slices.Contains(k.aliases, alias) {
		writeError(w, http.StatusNotFound, "Not Found: Alias could not be deleted: Please see 'reasons' for more details (KEY_ALIAS_NOT_FOUND_ERR)",
			newReason(http.StatusNotFound, "KEY_ALIAS_NOT_FOUND_ERR", "The alias does not exist for this key"))
		return
	}
	k.aliases = slices.DeleteFunc(k.aliases, func(a string) bool { return a == alias })
	delete(e.aliases, alias)
	w.WriteHeader(http.StatusNoContent)
}
