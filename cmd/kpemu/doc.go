// Command kpemu runs the Key Protect emulator (internal/kpemu) on a local
// address so the Key Protect path of decryptd and dekctl can be tried
// without an IBM Cloud account. It prints the base URL, token URL and
// instance id to configure, and with -create-root the id of a fresh root
// key. It serves plain HTTP on 127.0.0.1 by default and keeps everything in
// memory: keys are gone when it stops. Not for production.
//
//	kpemu -addr 127.0.0.1:8200 -api-key my-dev-key -create-root decryptd-root
package main
