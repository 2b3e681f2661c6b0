package kpemu

import (
	"net/http"
	"strings"
	"time"
)

// Policies: a key's rotation and dualAuthDelete policies (GET/PUT
// keys/{id}/policies[?policy=...]) and the instance's policies (GET/PUT
// instance/policies[?policy=...]), as policy.go and instances.go of the
// client use them. A new root key inherits the instance's enabled rotation
// (and dualAuthDelete) policy; keys_with_policy_overrides sets its own.
// Policies are recorded and answered, never enforced: the emulator does not
// rotate keys by itself.

const (
	policyType     = "application/vnd.ibm.kms.policy+json"
	policyRotation = "rotation"
	policyDualAuth = "dualAuthDelete"
)

// instancePolicyTypes are the policy types an instance has (instances.go).
var instancePolicyTypes = []string{"allowedNetwork", "allowedIP", policyDualAuth, "keyCreateImportAccess", "metrics", policyRotation}

type rotationPolicy struct {
	enabled  bool
	interval int // months, 1-12
}

type rotationJSON struct {
	Enabled  *bool `json:"enabled,omitempty"`
	Interval int   `json:"interval_month,omitempty"`
}

func (p *rotationPolicy) json() *rotationJSON {
	return &rotationJSON{Enabled: ptr(p.enabled), Interval: p.interval}
}

// mergeRotation applies a requested rotation policy onto cur (nil: none
// yet). An absent interval keeps the current one (EnableRotationPolicy
// sends only enabled); a new policy needs one and is enabled unless the
// request says otherwise.
func mergeRotation(cur *rotationPolicy, req *rotationJSON) (*rotationPolicy, error) {
	next := rotationPolicy{enabled: true}
	if cur != nil {
		next = *cur
	}
	if req.Interval != 0 {
		next.interval = req.Interval
	}
	if next.interval < 1 || next.interval > 12 {
		return nil, &fieldError{"interval_month", "an integer from 1 to 12"}
	}
	if req.Enabled != nil {
		next.enabled = *req.Enabled
	}
	return &next, nil
}

type policyJSON struct {
	Type           string        `json:"type"`
	CreatedBy      string        `json:"createdBy,omitempty"`
	CreationDate   *time.Time    `json:"creationDate,omitempty"`
	CRN            string        `json:"crn,omitempty"`
	LastUpdateDate *time.Time    `json:"lastUpdateDate,omitempty"`
	UpdatedBy      string        `json:"updatedBy,omitempty"`
	Rotation       *rotationJSON `json:"rotation,omitempty"`
	DualAuthDelete *struct {
		Enabled *bool `json:"enabled,omitempty"`
	} `json:"dualAuthDelete,omitempty"`
}

// instancePolicy is one instance policy; attributes are kept as sent.
type instancePolicy struct {
	typ        string
	enabled    bool
	attributes map[string]any
	created    time.Time
	updated    time.Time
}

type instancePolicyJSON struct {
	CreatedBy  string     `json:"createdBy,omitempty"`
	CreatedAt  *time.Time `json:"creationDate,omitempty"`
	UpdatedAt  *time.Time `json:"lastUpdated,omitempty"`
	UpdatedBy  string     `json:"updatedBy,omitempty"`
	PolicyType string     `json:"policy_type"`
	PolicyData struct {
		Enabled    *bool          `json:"enabled,omitempty"`
		Attributes map[string]any `json:"attributes,omitempty"`
	} `json:"policy_data"`
}

// intervalMonth reads attributes.interval_month (0 when absent or not a
// whole number).
func (p *instancePolicy) intervalMonth() int {
	f, ok := p.attributes["interval_month"].(float64)
	if !ok || f != float64(int(f)) {
		return 0
	}
	return int(f)
}

// inheritedPoliciesLocked is what a new root key takes from the instance;
// e.mu is held.
func (e *Emulator) inheritedPoliciesLocked() (*rotationPolicy, *bool) {
	var rot *rotationPolicy
	var dual *bool
	if p := e.instPolicies[policyRotation]; p != nil && p.enabled {
		rot = &rotationPolicy{enabled: true, interval: p.intervalMonth()}
	}
	if p := e.instPolicies[policyDualAuth]; p != nil && p.enabled {
		dual = ptr(true)
	}
	return rot, dual
}

// SetInstanceRotationPolicy enables (months 1-12) or disables (0) the
// instance's rotation policy directly, for cmd/kpemu's flag and tests.
func (e *Emulator) SetInstanceRotationPolicy(months int) error {
	if months < 0 || months > 12 {
		return &fieldError{"interval_month", "an integer from 1 to 12"}
	}
	p := &instancePolicy{typ: policyRotation, enabled: months > 0}
	if months > 0 {
		p.attributes = map[string]any{"interval_month": float64(months)}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.storeInstancePolicyLocked(p)
	return nil
}

func (e *Emulator) storeInstancePolicyLocked(p *instancePolicy) {
	now := e.now()
	p.created, p.updated = now, now
	if old := e.instPolicies[p.typ]; old != nil {
		p.created = old.created
	}
	e.instPolicies[p.typ] = p
}

func (e *Emulator) renderKeyPolicies(k *key, which string) []policyJSON {
	out := []policyJSON{}
	meta := func() policyJSON {
		return policyJSON{Type: policyType, CreatedBy: "kpemu", CreationDate: utc(k.policyCreated),
			CRN: e.crn(k.id), LastUpdateDate: utc(k.policyCreated), UpdatedBy: "kpemu"}
	}
	if k.rotation != nil && (which == "" || which == policyRotation) {
		p := meta()
		p.Rotation = k.rotation.json()
		out = append(out, p)
	}
	if k.dualAuth != nil && (which == "" || which == policyDualAuth) {
		p := meta()
		p.DualAuthDelete = &struct {
			Enabled *bool `json:"enabled,omitempty"`
		}{ptr(*k.dualAuth)}
		out = append(out, p)
	}
	return out
}

// policyQuery reads ?policy= for key policies: "", rotation or
// dualAuthDelete.
func policyQuery(w http.ResponseWriter, r *http.Request, allowed ...string) (string, bool) {
	q := r.URL.Query().Get("policy")
	if q == "" {
		return "", true
	}
	for _, a := range allowed {
		if q == a {
			return q, true
		}
	}
	writeError(w, http.StatusBadRequest, "Bad Request: The query parameter 'policy' is invalid: Please see 'reasons' for more details (INVALID_QUERY_PARAM_ERR)",
		newReason(http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR", "The query parameter 'policy' must be one of: "+strings.Join(allowed, ", ")))
	return "", false
}

func (e *Emulator) getKeyPolicies(w http.ResponseWriter, r *http.Request, id string) {
	which, ok := policyQuery(w, r, policyRotation, policyDualAuth)
	if !ok {
		return
	}
	k := e.keyLocked(w, id, keyCheck{})
	if k == nil {
		return
	}
	ps := e.renderKeyPolicies(k, which)
	e.mu.Unlock()
	writeCollection(w, http.StatusOK, policyType, ps)
}

// putKeyPolicies sets the policies the body carries (rotation, dualAuthDelete),
// merging a rotation policy into the key's current one.
func (e *Emulator) putKeyPolicies(w http.ResponseWriter, r *http.Request, id string) {
	which, ok := policyQuery(w, r, policyRotation, policyDualAuth)
	if !ok {
		return
	}
	var env collection[policyJSON]
	if err := readBody(r, &env); err != nil || len(env.Resources) == 0 {
		badBody(w)
		return
	}
	k := e.keyLocked(w, id, keyCheck{action: "policy", rootOnly: true})
	if k == nil {
		return
	}
	defer e.mu.Unlock()
	rot, dual := k.rotation, k.dualAuth
	for _, p := range env.Resources {
		if p.Rotation != nil && (which == "" || which == policyRotation) {
			next, err := mergeRotation(rot, p.Rotation)
			if err != nil {
				fe := err.(*fieldError)
				invalidField(w, fe.field, fe.msg)
				return
			}
			rot = next
		}
		if p.DualAuthDelete != nil && p.DualAuthDelete.Enabled != nil && (which == "" || which == policyDualAuth) {
			dual = ptr(*p.DualAuthDelete.Enabled)
		}
	}
	now := e.now()
	if k.rotation == nil && k.dualAuth == nil {
		k.policyCreated = now
	}
	k.rotation, k.dualAuth, k.updated = rot, dual, ptr(now)
	if strings.Contains(r.Header.Get("Prefer"), "return=minimal") {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeCollection(w, http.StatusOK, policyType, e.renderKeyPolicies(k, which))
}

func (e *Emulator) renderInstancePolicy(p *instancePolicy) instancePolicyJSON {
	j := instancePolicyJSON{CreatedBy: "kpemu", CreatedAt: utc(p.created), UpdatedAt: utc(p.updated), UpdatedBy: "kpemu", PolicyType: p.typ}
	j.PolicyData.Enabled = ptr(p.enabled)
	j.PolicyData.Attributes = p.attributes
	return j
}

// getInstancePolicies answers the policies set so far, or for ?policy=X
// that policy (disabled when never set, as a fresh instance has it).
func (e *Emulator) getInstancePolicies(w http.ResponseWriter, r *http.Request, _ string) {
	which, ok := policyQuery(w, r, instancePolicyTypes...)
	if !ok {
		return
	}
	ps := []instancePolicyJSON{}
	e.mu.Lock()
	for _, t := range instancePolicyTypes {
		p := e.instPolicies[t]
		switch {
		case which != "" && t != which:
			continue
		case p == nil && which == "":
			continue
		case p == nil:
			p = &instancePolicy{typ: t, created: e.now(), updated: e.now()}
		}
		ps = append(ps, e.renderInstancePolicy(p))
	}
	e.mu.Unlock()
	writeCollection(w, http.StatusOK, policyType, ps)
}

// putInstancePolicies sets ?policy=X (required) from the body's first
// resource; a rotation policy that is enabled needs interval_month 1-12
// and one that is disabled takes none. Answers 204.
func (e *Emulator) putInstancePolicies(w http.ResponseWriter, r *http.Request, _ string) {
	which, ok := policyQuery(w, r, instancePolicyTypes...)
	if !ok {
		return
	}
	var env collection[instancePolicyJSON]
	if err := readBody(r, &env); err != nil || len(env.Resources) != 1 {
		badBody(w)
		return
	}
	req := env.Resources[0]
	if which == "" {
		which = req.PolicyType
	}
	if which == "" || req.PolicyType != which || req.PolicyData.Enabled == nil {
		invalidField(w, "policy_type", "the policy named in the query, with policy_data.enabled")
		return
	}
	p := &instancePolicy{typ: which, enabled: *req.PolicyData.Enabled, attributes: req.PolicyData.Attributes}
	if which == policyRotation {
		n := p.intervalMonth()
		switch {
		case p.enabled && (n < 1 || n > 12):
			invalidField(w, "interval_month", "an integer from 1 to 12")
			return
		case !p.enabled && len(p.attributes) > 0:
			invalidField(w, "attributes", "absent when the policy is disabled")
			return
		}
	}
	e.mu.Lock()
	e.storeInstancePolicyLocked(p)
	e.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}
