// Package rekey owns the rekey message of docs/rekey-v1.md: how the backend
// seals a new DEK version for one device under a DEK the device already
// holds (Seal), and how a device parses and opens it (Parse, Message.Open).
//
// Promises: Seal and Open bind the sealed key to device id, key id, new
// version and wrapping key through the AAD; Parse checks every member's type
// and alphabet and every length before anything is sliced, refuses
// repeated member names, and never returns key material in an error. The
// new DEK leaves Open in a slice the caller owns and wipes. Nothing here
// keeps state; every function is safe for concurrent use.
package rekey
