package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/decryptd/decryptd/internal/fileperm"
)

// Spool configures the key-pending spool (package spool): a message whose
// key cannot be resolved for now (KMS or registry unreachable or hanging)
// is written there, fsynced and acknowledged, so that the other devices'
// messages keep moving; it is replayed, in per-device order, once its key
// resolves. Without a spool such a message waits in the pipeline and
// holds an in-flight slot (and, with MQTT's in-order acknowledgements,
// the messages behind it).
type Spool struct {
	// Enabled turns the spool on or off; default true when Dir is set.
	Enabled *bool `yaml:"enabled,omitempty" json:"enabled,omitempty"`
	// Dir holds the spool's segment files. decryptd creates it 0700 (its
	// files 0600) and refuses an existing one, or a file in it, that group
	// or others can access. One process per directory. Relative paths are
	// resolved against the configuration file's directory.
	Dir string `yaml:"dir,omitempty" json:"dir,omitempty"`
	// MaxBytes bounds the spool's size on disk (default 1 GiB, at least 1
	// MiB). When it is full, key-pending messages wait in the pipeline as
	// without a spool (backpressure); nothing is dropped.
	MaxBytes int64 `yaml:"max_bytes,omitempty" json:"max_bytes,omitempty"`
	// KeyWait is the longest a message waits for its key before it is
	// spooled (default 1s).
	KeyWait time.Duration `yaml:"key_wait,omitempty" json:"key_wait,omitempty"`
	// MaxBackoff caps the wait between two tries of a spooled device's key
	// (default 1s): a key that resolves again is found within about this
	// much.
	MaxBackoff time.Duration `yaml:"max_backoff,omitempty" json:"max_backoff,omitempty"`
}

// Defaults of the spool section.
const (
	DefaultSpoolMaxBytes   = 1 << 30
	DefaultSpoolKeyWait    = time.Second
	DefaultSpoolMaxBackoff = time.Second
	minSpoolMaxBytes       = 1 << 20
)

// On reports whether the spool is in use: a directory is set and it is
// not disabled.
func (s Spool) On() bool { return s.Dir != "" && (s.Enabled == nil || *s.Enabled) }

func (s *Spool) applyDefaults() {
	if s.MaxBytes == 0 {
		s.MaxBytes = DefaultSpoolMaxBytes
	}
	if s.KeyWait == 0 {
		s.KeyWait = DefaultSpoolKeyWait
	}
	if s.MaxBackoff == 0 {
		s.MaxBackoff = DefaultSpoolMaxBackoff
	}
}

func (s Spool) validate(ck *checker) {
	if s.Enabled != nil && *s.Enabled && s.Dir == "" {
		ck.add("spool.dir", "required when spool.enabled is true")
	}
	if s.MaxBytes < minSpoolMaxBytes {
		ck.add("spool.max_bytes", "must be at least %d (1 MiB), got %d", minSpoolMaxBytes, s.MaxBytes)
	}
	if s.KeyWait <= 0 || s.KeyWait > time.Minute {
		ck.add("spool.key_wait", "must be between 1ns and 1m, got %s", s.KeyWait)
	}
	if s.MaxBackoff < 10*time.Millisecond || s.MaxBackoff > time.Minute {
		ck.add("spool.max_backoff", "must be between 10ms and 1m, got %s", s.MaxBackoff)
	}
}

// checkDir checks the spool directory as the daemon will (package spool):
// an existing one must be a directory its group and others cannot reach,
// holding no file they can; a missing one must be creatable.
func (s Spool) checkDir() string {
	if !s.On() {
		return ""
	}
	fi, err := os.Stat(s.Dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return checkCreatable(s.Dir)
	case err != nil:
		return err.Error()
	case !fi.IsDir():
		return fmt.Sprintf("%s is not a directory", s.Dir)
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Sprintf("%s: %v: mode %04o lets group or others reach the spooled messages; chmod 700 %s", s.Dir, fileperm.ErrExposed, fi.Mode().Perm(), s.Dir)
	case syscall.Access(s.Dir, 7 /* R_OK|W_OK|X_OK */) != nil:
		return fmt.Sprintf("%s is not readable and writable by this user (uid %d)", s.Dir, os.Geteuid())
	}
	ents, err := os.ReadDir(s.Dir)
	if err != nil {
		return err.Error()
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			continue
		}
		if err := fileperm.Private(filepath.Join(s.Dir, e.Name()), fi.Mode()); err != nil {
			return err.Error()
		}
	}
	return ""
}
