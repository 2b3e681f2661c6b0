// Package keyprotect is the kms.Provider backed by IBM Key Protect, through
// github.com/IBM/keyprotect-go-client v0.17.3. It declares every kms
// capability: RootManager, RootDescriber, RootClock, RootNamer,
// RootRetirer and RootReplacer.
//
// It owns four things the client leaves to its caller:
//
//   - Deadlines. The client's IAM token fetch takes no context and can block
//     for minutes (60 s per attempt, 5 attempts, under a mutex every call
//     shares). Every call therefore runs the client in a goroutine and
//     returns when the context (bounded by Config.Timeout) ends, whatever
//     the client is doing. At most MaxInFlight such goroutines exist; when
//     all are stuck, further calls fail with kms.ErrTransient at their
//     deadline instead of piling up.
//   - Retries. The client retries 429 and 5xx up to 5 attempts with 1-8 s
//     back-off, and stops when the context ends. Its limits are package
//     globals (kp.RetryMax, kp.RetryWaitMax) that this package never
//     touches: changing them at runtime races with every client in the
//     process. The per-call deadline is what bounds a call.
//   - Connections. The client's default transport disables keep-alives; a
//     pooled transport with keep-alives is passed instead, so calls reuse
//     connections (TLS handshakes are not paid per call). Config.CAFile
//     adds a CA to the system roots it trusts for the API; the IAM token
//     fetch uses http.DefaultTransport and trusts the system roots only.
//   - Errors. Client errors carry no Unwrap and differ by layer (*kp.Error,
//     *kp.URLError, iam.Error). They are classified into kms.ErrTransient
//     (network, 429, 5xx, REQ_TOO_EARLY_ERR, IAM 429/5xx, deadline),
//     kms.ErrRootRevoked (409 KEY_ACTION_INVALID_STATE_ERR: root disabled or
//     expired; 410: deleted) and permanent errors (ErrInvalid for 400/422
//     such as a wrong ciphertext or AAD, ErrNotFound for 404, ErrUnauthorized
//     for 401/403 and a refused API key). Error texts carry the operation,
//     status and reason code, never the API key.
//
// The API key comes from a file or an environment variable, never from the
// YAML itself, and is held in a Secret that prints as <secret>. Wrapped DEKs
// record the Key Protect key version id that wrapped them (WrapV2's
// keyVersion), so a rewrap after a rotation can tell what is left to do.
// A Provider is safe for concurrent use and holds no package state.
package keyprotect
