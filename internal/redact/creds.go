package redact

import (
	"net/url"
	"strings"
)

// credentialExact are normalized query keys (lower case, without '-', '_'
// and '.') that name a credential by themselves.
var credentialExact = map[string]bool{
	"key": true, "sig": true, "auth": true, "pwd": true, "pass": true, "sas": true,
	"jwt": true, "bearer": true, "code": true, "session": true, "sid": true,
}

// credentialParts: a normalized key holding one of these names a
// credential (access_token, client_secret, x-api-key, X-Amz-Signature,
// X-Amz-Credential, passwd, private_key, ...).
var credentialParts = []string{
	"token", "secret", "passw", "apikey", "signature", "authorization",
	"credential", "accesskey", "privatekey", "sessionkey", "authkey",
}

// CredentialKey reports whether a URL query key names a credential
// (case-insensitive; '-', '_' and '.' ignored).
func CredentialKey(k string) bool {
	n := strings.Map(func(r rune) rune {
		switch r {
		case '-', '_', '.':
			return -1
		}
		return r
	}, strings.ToLower(k))
	if credentialExact[n] {
		return true
	}
	for _, p := range credentialParts {
		if strings.Contains(n, p) {
			return true
		}
	}
	return false
}

// CredentialInURL names the credential u carries, or returns "": "a
// password in its userinfo", or `query parameter "token"` for the first
// query key that names one (CredentialKey).
func CredentialInURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			return "a password in its userinfo"
		}
	}
	for _, part := range strings.Split(u.RawQuery, "&") {
		k, _, _ := strings.Cut(part, "=")
		if dk, err := url.QueryUnescape(k); err == nil {
			k = dk
		}
		if k != "" && CredentialKey(k) {
			return "query parameter " + quote(k)
		}
	}
	return ""
}

// quote quotes a key for an error message, clipped so that a pasted
// secret used as a key is not repeated whole.
func quote(k string) string {
	if len(k) > 32 {
		k = k[:32] + "..."
	}
	return `"` + strings.ReplaceAll(k, `"`, `\"`) + `"`
}
