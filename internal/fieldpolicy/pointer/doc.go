// Package pointer parses RFC 6901 JSON Pointers as decryptd's field
// policies and typed columns write them: "/data/readings/*/note", where a
// token "*" matches any element of an array (on an object it names the
// member "*", as RFC 6901 says). "" is the whole document. Parse refuses
// what RFC 6901 refuses (a pointer not starting with "/", "~" not followed
// by 0 or 1) and pointers longer than 1024 bytes or 64 tokens.
package pointer
