//go:build !amd64 && !arm64

package decrypt

import "unsafe"

// prefetch is a no-op where no prefetch instruction is wired in.
func prefetch(unsafe.Pointer) {}
