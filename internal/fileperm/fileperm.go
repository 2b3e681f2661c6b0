package fileperm

import (
	"errors"
	"fmt"
	"os"
)

// ErrExposed is what every refusal wraps: a file's mode lets someone other
// than its owner (and, for a secret, its group) reach it.
var ErrExposed = errors.New("file mode exposes it")

// Private checks a file decryptd writes: no access for group or others.
func Private(path string, mode os.FileMode) error {
	if p := mode.Perm(); p&0o077 != 0 {
		return fmt.Errorf("%s: %w: mode %04o lets %s access it, and it holds records, dead letters or the audit trail; "+
			"chmod 600 %s (decryptd creates it 0600; under Kubernetes set securityContext.fsGroupChangePolicy: OnRootMismatch, "+
			"or the kubelet makes every file of the volume group-readable and -writable at each mount)",
			path, ErrExposed, p, who(p), path)
	}
	return nil
}

// Secret checks a secret decryptd reads: its group may read it (a
// Kubernetes Secret volume with fsGroup), nobody else may, and only its
// owner may write it.
func Secret(path string, mode os.FileMode) error {
	p := mode.Perm()
	if p&0o007 != 0 || p&0o020 != 0 {
		return fmt.Errorf("%s: %w: mode %04o lets %s access this secret; chmod 400 %s (under Kubernetes: the Secret volume's defaultMode 0400; fsGroup then makes it 0440, which is accepted)",
			path, ErrExposed, p, who(p&0o027), path)
	}
	return nil
}

// Public checks a public input (a CA bundle, a certificate): nobody but
// its owner and group may change it.
func Public(path string, mode os.FileMode) error {
	if p := mode.Perm(); p&0o002 != 0 {
		return fmt.Errorf("%s: %w: mode %04o lets others write it (a replaced CA or certificate redirects trust); chmod o-w %s",
			path, ErrExposed, p, path)
	}
	return nil
}

func who(p os.FileMode) string {
	switch {
	case p&0o070 != 0 && p&0o007 != 0:
		return "group and others"
	case p&0o070 != 0:
		return "its group"
	}
	return "others"
}
