// Package redact removes credentials from what decryptd and its tools
// write to logs and error messages: URLs, PostgreSQL connection strings and
// error texts that embed either (a *net/url.Error from http.Client prints
// the whole request URL, query included).
//
// Promises:
//
//   - URL keeps the scheme, host, port, path and every query key, and
//     replaces a userinfo password, every query value and any fragment with
//     "REDACTED" (a userinfo name too when it stands alone in an http(s)
//     URL, where it is a token more often than a user). A string that does
//     not parse and holds any of '@', '?', '#', '=' is replaced whole.
//   - DSN does the same for both PostgreSQL forms (postgres:// URLs and
//     key=value strings, where password and sslpassword values go).
//   - Text and Error apply both to free text: every scheme://... in it, and
//     every ?k=v / &k=v and password=... outside one. Error keeps the
//     wrapped chain (errors.Is and errors.As still see the original).
//   - Core wraps a zap core so that every message, string field, error
//     field and Stringer field passes through Text before it is encoded:
//     the binaries build their loggers over it, so a URL that reaches a log
//     by a path nobody thought of is still written redacted.
//   - CredentialInURL names the credential a configured URL carries (a
//     userinfo password, or a query key such as token, key, secret, sig,
//     password, apikey or access_token, case-insensitive), for the
//     configuration to refuse it.
//
// Every function is pure and safe for concurrent use.
package redact
