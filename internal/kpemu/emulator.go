package kpemu

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	mrand "math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Paths served, relative to the emulator's base URL.
const (
	// TokenPath is the IAM token endpoint (POST, form-encoded apikey grant).
	TokenPath = "/oidc/token"
	// APIPrefix is where the Key Protect API lives; the client appends it
	// to its BaseURL itself, so BaseURL is the bare server URL.
	APIPrefix = "/api/v2/"
	// DefaultAPIKey is accepted when Options.APIKeys is empty.
	DefaultAPIKey = "kpemu-dev-api-key"

	apikeyGrant = "urn:ibm:params:oauth:grant-type:apikey"
	keyType     = "application/vnd.ibm.kms.key+json"
	errType     = "application/vnd.ibm.kms.error+json"
	moreInfo    = "https://cloud.ibm.com/apidocs/key-protect"
	maxBody     = 64 << 10
)

// Operation names for Calls. Every request that reaches a route is counted,
// including those answered by an injected fault, so retries are visible.
const (
	OpToken    = "token"
	OpCreate   = "create"
	OpList     = "list"
	OpGet      = "get"
	OpMetadata = "metadata"
	OpVersions = "versions"
	OpWrap     = "wrap"
	OpUnwrap   = "unwrap"
	OpRewrap   = "rewrap"
	OpRotate   = "rotate"
	OpDisable  = "disable"
	OpEnable   = "enable"
	OpDelete   = "delete"
	OpRestore  = "restore"
	OpPurge    = "purge"
	OpAlias    = "alias"  // create or delete a key alias
	OpPolicy   = "policy" // get or set a key's policies
	// OpInstancePolicy: get or set the instance's policies.
	OpInstancePolicy = "instance_policy"
	OpOther          = "other" // any route the emulator does not serve
)

// Options configure an Emulator. The zero value is a permissive emulator:
// no timing rules, tokens valid for an hour, DefaultAPIKey accepted.
type Options struct {
	// InstanceID is the Key Protect instance; requests must send it as
	// Bluemix-Instance. Empty means a random UUID.
	InstanceID string
	// APIKeys are the API keys the IAM endpoint accepts. Empty means
	// []string{DefaultAPIKey}.
	APIKeys []string
	// TokenTTL is the lifetime of an issued token (expires_in). Zero means
	// one hour. The client refetches 60 s before expiry, so a TTL of 60 s or
	// less makes it fetch a token on every call.
	TokenTTL time.Duration
	// RotateInterval, if positive, refuses a rotation within that long of
	// the previous one with 409 KEY_ROTATION_NOT_PERMITTED (the real
	// service: one hour).
	RotateInterval time.Duration
	// ActionCooldown, if positive, refuses enable and restore within that
	// long of the key's last state change with 409 REQ_TOO_EARLY_ERR (the
	// real service: 30 s).
	ActionCooldown time.Duration
	// PurgeDelay, if positive, refuses a purge within that long of the
	// delete with 409 REQ_TOO_EARLY_ERR (the real service: 4 h).
	PurgeDelay time.Duration
	// RateLimit, if positive, is the sustained rate of Key Protect API
	// requests per second the instance accepts; above it (after RateBurst
	// requests at once) requests are refused with 429 and a Retry-After,
	// as the service's rate limiting does. Token requests are not limited.
	RateLimit float64
	// RateBurst is how many requests may come at once under RateLimit
	// (default: RateLimit rounded up, at least 1).
	RateBurst int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Seed seeds the failure-rate dice, so a test is repeatable.
	Seed uint64
}

// Emulator is the Key Protect and IAM emulator as an http.Handler.
type Emulator struct {
	opts       Options
	instanceID string
	apiKeys    [][]byte
	now        func() time.Time

	done      chan struct{}
	closeOnce sync.Once

	mu      sync.Mutex
	tokens  map[string]time.Time // access token -> expiry
	keys    map[string]*key      // by id
	order   []string             // ids in creation order
	aliases map[string]string    // alias -> id
	// instPolicies are the instance's policies by type (policies.go).
	instPolicies map[string]*instancePolicy
	calls        map[string]int64
	faults       Faults
	release      chan struct{} // closed when faults change, to free hanging requests
	dice         *mrand.Rand
	bucket       bucket // Options.RateLimit's token bucket
}

// New returns an emulator with no keys.
func New(opts Options) *Emulator {
	e := &Emulator{
		opts:         opts,
		now:          opts.Now,
		done:         make(chan struct{}),
		tokens:       map[string]time.Time{},
		keys:         map[string]*key{},
		aliases:      map[string]string{},
		instPolicies: map[string]*instancePolicy{},
		calls:        map[string]int64{},
		release:      make(chan struct{}),
		dice:         mrand.New(mrand.NewPCG(opts.Seed, opts.Seed^0x6b70656d75)),
	}
	if e.now == nil {
		e.now = time.Now
	}
	e.instanceID = opts.InstanceID
	if e.instanceID == "" {
		e.instanceID = newUUID()
	}
	keys := opts.APIKeys
	if len(keys) == 0 {
		keys = []string{DefaultAPIKey}
	}
	for _, k := range keys {
		e.apiKeys = append(e.apiKeys, []byte(k))
	}
	if e.opts.TokenTTL <= 0 {
		e.opts.TokenTTL = time.Hour
	}
	return e
}

// InstanceID is the instance the emulator serves.
func (e *Emulator) InstanceID() string { return e.instanceID }

// Close frees requests held by a hanging outage or latency. The handler
// keeps answering afterwards (without faults that wait).
func (e *Emulator) Close() {
	e.closeOnce.Do(func() { close(e.done) })
}

// Calls returns how many requests for op (one of the Op constants) reached
// the emulator.
func (e *Emulator) Calls(op string) int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.calls[op]
}

// AllCalls returns a copy of every counter.
func (e *Emulator) AllCalls() map[string]int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]int64, len(e.calls))
	for k, v := range e.calls {
		out[k] = v
	}
	return out
}

// ResetCalls zeroes the counters.
func (e *Emulator) ResetCalls() {
	e.mu.Lock()
	defer e.mu.Unlock()
	clear(e.calls)
}

func (e *Emulator) count(op string) {
	e.mu.Lock()
	e.calls[op]++
	e.mu.Unlock()
}

// ServeHTTP routes IAM and Key Protect requests.
func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if r.URL.Path == TokenPath {
		e.count(OpToken)
		if e.iamFault(w, r) {
			return
		}
		e.serveToken(w, r)
		return
	}
	rt := route(r.Method, r.URL.Path)
	e.count(rt.op)
	if e.apiFault(w, r) || e.rateLimited(w) {
		return
	}
	if !e.authorized(r) {
		writeError(w, http.StatusUnauthorized, "Unauthorized: The user does not have access to the specified resource", nil)
		return
	}
	if rt.handle == nil {
		writeError(w, http.StatusNotFound, "Not Found: The requested resource could not be found", nil)
		return
	}
	rt.handle(e, w, r, rt.id)
}

type routed struct {
	op     string
	id     string
	handle func(e *Emulator, w http.ResponseWriter, r *http.Request, id string)
}

// route maps a method and path onto an operation. Ids and aliases arrive
// unescaped in the path (the client pastes them in with Sprintf).
func route(method, path string) routed {
	rest, ok := strings.CutPrefix(path, APIPrefix)
	if !ok {
		return routed{op: OpOther}
	}
	parts := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	switch {
	case len(parts) == 1 && parts[0] == "keys_with_policy_overrides" && method == http.MethodPost:
		return routed{op: OpCreate, handle: (*Emulator).createKeyWithPolicies}
	case len(parts) == 2 && parts[0] == "instance" && parts[1] == "policies" && method == http.MethodGet:
		return routed{op: OpInstancePolicy, handle: (*Emulator).getInstancePolicies}
	case len(parts) == 2 && parts[0] == "instance" && parts[1] == "policies" && method == http.MethodPut:
		return routed{op: OpInstancePolicy, handle: (*Emulator).putInstancePolicies}
	case parts[0] != "keys":
		return routed{op: OpOther}
	}
	switch {
	case len(parts) == 1 && method == http.MethodGet:
		return routed{op: OpList, handle: (*Emulator).listKeys}
	case len(parts) == 1 && method == http.MethodPost:
		return routed{op: OpCreate, handle: (*Emulator).createKey}
	case len(parts) == 2 && method == http.MethodGet:
		return routed{op: OpGet, id: parts[1], handle: (*Emulator).getKey}
	case len(parts) == 2 && method == http.MethodDelete:
		return routed{op: OpDelete, id: parts[1], handle: (*Emulator).deleteKey}
	case len(parts) == 3 && parts[2] == "metadata" && method == http.MethodGet:
		return routed{op: OpMetadata, id: parts[1], handle: (*Emulator).getMetadata}
	case len(parts) == 3 && parts[2] == "versions" && method == http.MethodGet:
		return routed{op: OpVersions, id: parts[1], handle: (*Emulator).listVersions}
	case len(parts) == 3 && parts[2] == "policies" && method == http.MethodGet:
		return routed{op: OpPolicy, id: parts[1], handle: (*Emulator).getKeyPolicies}
	case len(parts) == 3 && parts[2] == "policies" && method == http.MethodPut:
		return routed{op: OpPolicy, id: parts[1], handle: (*Emulator).putKeyPolicies}
	case len(parts) == 4 && parts[2] == "aliases" && method == http.MethodPost:
		return routed{op: OpAlias, id: parts[1] + "/" + parts[3], handle: (*Emulator).createAlias}
	case len(parts) == 4 && parts[2] == "aliases" && method == http.MethodDelete:
		return routed{op: OpAlias, id: parts[1] + "/" + parts[3], handle: (*Emulator).deleteAlias}
	case len(parts) == 3 && parts[2] == "restore" && method == http.MethodPost:
		return routed{op: OpRestore, id: parts[1], handle: (*Emulator).restoreKey}
	case len(parts) == 3 && parts[2] == "purge" && method == http.MethodDelete:
		return routed{op: OpPurge, id: parts[1], handle: (*Emulator).purgeKey}
	case len(parts) == 4 && parts[2] == "actions" && method == http.MethodPost:
		id := parts[1]
		switch parts[3] {
		case "wrap":
			return routed{op: OpWrap, id: id, handle: (*Emulator).wrap}
		case "unwrap":
			return routed{op: OpUnwrap, id: id, handle: (*Emulator).unwrap}
		case "rewrap":
			return routed{op: OpRewrap, id: id, handle: (*Emulator).rewrap}
		case "rotate":
			return routed{op: OpRotate, id: id, handle: (*Emulator).rotate}
		case "disable":
			return routed{op: OpDisable, id: id, handle: (*Emulator).disable}
		case "enable":
			return routed{op: OpEnable, id: id, handle: (*Emulator).enable}
		}
	}
	return routed{op: OpOther}
}

// authorized checks the bearer token and the instance header.
func (e *Emulator) authorized(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return false
	}
	if r.Header.Get("Bluemix-Instance") != e.instanceID {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	exp, ok := e.tokens[tok]
	return ok && e.now().Before(exp)
}

// serveToken is the IAM apikey grant.
func (e *Emulator) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeIAMError(w, http.StatusMethodNotAllowed, "BXNIM0400E", "Method not allowed")
		return
	}
	if err := r.ParseForm(); err != nil {
		writeIAMError(w, http.StatusBadRequest, "BXNIM0109E", "Property missing or empty")
		return
	}
	if r.PostForm.Get("grant_type") != apikeyGrant {
		writeIAMError(w, http.StatusBadRequest, "BXNIM0103E", "Grant type is not supported")
		return
	}
	apikey := []byte(r.PostForm.Get("apikey"))
	if len(apikey) == 0 {
		writeIAMError(w, http.StatusBadRequest, "BXNIM0109E", "Property missing or empty")
		return
	}
	known := false
	for _, k := range e.apiKeys {
		if subtle.ConstantTimeCompare(k, apikey) == 1 {
			known = true
		}
	}
	if !known {
		writeIAMError(w, http.StatusBadRequest, "BXNIM0415E", "Provided API key could not be found")
		return
	}
	tok := randomHex(32)
	now := e.now()
	exp := now.Add(e.opts.TokenTTL)
	e.mu.Lock()
	for t, x := range e.tokens { // keep the map small in long demos
		if !now.Before(x) {
			delete(e.tokens, t)
		}
	}
	e.tokens[tok] = exp
	e.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token":  tok,
		"refresh_token": "not_supported",
		"token_type":    "Bearer",
		"expires_in":    int64(e.opts.TokenTTL / time.Second),
		"expiration":    exp.Unix(),
	})
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux; nothing sensible to do
	}
	return hex.EncodeToString(b)
}

func newUUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
