package keyprotect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/IBM/keyprotect-go-client/iam"

	"github.com/decryptd/decryptd/internal/kms"
)

// Permanent error kinds, beside kms.ErrTransient and kms.ErrRootRevoked.
var (
	// ErrInvalid: Key Protect refused the request as malformed (400, 422),
	// typically a ciphertext or AAD that does not match the wrap.
	ErrInvalid = errors.New("key protect refused the request")
	// ErrNotFound: the root key does not exist (404), or was purged.
	ErrNotFound = errors.New("root key not found")
	// ErrUnauthorized: the API key or token was refused (IAM 400/401,
	// Key Protect 401/403), or the instance id is wrong.
	ErrUnauthorized = errors.New("not authorized by key protect")
)

// Error is a classified Key Protect failure. Its text holds the operation,
// root key id, HTTP status and reason code, never the API key; errors.Is
// matches its kind (kms.ErrTransient, kms.ErrRootRevoked, ErrInvalid,
// ErrNotFound, ErrUnauthorized) and, after a deadline, the context error.
type Error struct {
	Op        string // wrap, unwrap, rewrap, create, rotate, list, ...
	RootKeyID string
	Status    int    // HTTP status from Key Protect or IAM, 0 when none
	Reason    string // first reason code, e.g. KEY_ACTION_INVALID_STATE_ERR
	Msg       string // what went wrong, redacted

	kind  error // nil: permanent without a finer kind
	cause error // a context error, when that is what ended the call
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("keyprotect ")
	b.WriteString(e.Op)
	if e.RootKeyID != "" {
		b.WriteString(" root key ")
		b.WriteString(e.RootKeyID)
	}
	if e.Status != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.Status)
	}
	if e.Reason != "" {
		b.WriteString(" ")
		b.WriteString(e.Reason)
	}
	if e.Msg != "" {
		b.WriteString(": ")
		b.WriteString(e.Msg)
	}
	if e.kind != nil {
		b.WriteString(" (")
		b.WriteString(e.kind.Error())
		b.WriteString(")")
	}
	return b.String()
}

// Unwrap exposes the kind and the context error, nothing from the client.
func (e *Error) Unwrap() []error {
	var out []error
	if e.kind != nil {
		out = append(out, e.kind)
	}
	if e.cause != nil {
		out = append(out, e.cause)
	}
	return out
}

// classify turns a client error into an *Error. secret is removed from
// any text taken from the client, in case a layer below ever echoes it.
func classify(op, root string, err error, secret Secret) *Error {
	e := &Error{Op: op, RootKeyID: root}
	var (
		ke *kp.Error
		ue *kp.URLError
		ie iam.Error
		ne net.Error
		ur *url.Error
	)
	switch {
	case errors.As(err, &ke):
		e.Status = ke.StatusCode
		if len(ke.Reasons) > 0 {
			e.Reason = ke.Reasons[0].Code
		}
		e.Msg = ke.Message
		e.kind = kindOfStatus(ke.StatusCode, e.Reason)
	case errors.As(err, &ue):
		e.kind = kms.ErrTransient
		e.Msg = "request failed: " + describe(ue.Err)
		if ce := ctxErr(ue.Err); ce != nil {
			e.cause = ce
		}
	case errors.As(err, &ie):
		if ie.HTTPResponse != nil {
			e.Status = ie.HTTPResponse.StatusCode
		}
		e.Reason = ie.ErrorCode
		e.Msg = "IAM token: " + ie.ErrorMessage
		if e.Status == 429 || e.Status >= 500 {
			e.kind = kms.ErrTransient
		} else {
			e.kind = ErrUnauthorized
		}
	case ctxErr(err) != nil:
		e.kind, e.cause = kms.ErrTransient, ctxErr(err)
		e.Msg = err.Error()
	case errors.As(err, &ne), errors.As(err, &ur):
		// The IAM fetch returns transport errors bare (wrapped by the
		// retrying client), not as *kp.URLError.
		e.kind = kms.ErrTransient
		e.Msg = describe(err)
	default:
		e.Msg = describe(err)
	}
	e.Msg = redact(e.Msg, secret)
	return e
}

// kindOfStatus maps a Key Protect status and reason onto a kind.
func kindOfStatus(status int, reason string) error {
	switch {
	case status == 429, status >= 500 && status != 501:
		return kms.ErrTransient
	case status == 409 && reason == "KEY_ACTION_INVALID_STATE_ERR", status == 410:
		return kms.ErrRootRevoked
	case status == 409 && reason == "REQ_TOO_EARLY_ERR":
		return kms.ErrTransient
	case status == 404:
		return ErrNotFound
	case status == 401, status == 403:
		return ErrUnauthorized
	case status == 400, status == 422:
		return ErrInvalid
	}
	return nil
}

func ctxErr(err error) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return context.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return context.Canceled
	}
	return nil
}

func describe(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func redact(s string, secret Secret) string {
	if secret == "" {
		return s
	}
	return strings.ReplaceAll(s, string(secret), "<secret>")
}

// deadlineError is the error of a call abandoned because its context ended.
func deadlineError(op, root string, ctx context.Context, what string) *Error {
	cause := context.Cause(ctx)
	if cause == nil {
		cause = context.DeadlineExceeded
	}
	return &Error{Op: op, RootKeyID: root, Msg: what + ": " + cause.Error(), kind: kms.ErrTransient, cause: ctxErr(ctx.Err())}
}
