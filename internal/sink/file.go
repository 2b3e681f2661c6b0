package sink

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/decryptd/decryptd/internal/fileperm"
)

// FsyncPolicy says when a File sink forces written records to stable
// storage.
type FsyncPolicy int

const (
	// FsyncBatch (the default) fsyncs before every Write returns, so a
	// Write that returned nil survives a power loss, not only a crash of
	// the process. This is what lets the daemon acknowledge the messages.
	FsyncBatch FsyncPolicy = iota
	// FsyncInterval fsyncs at most every FileOptions.FsyncInterval, in the
	// background; a Write that returned nil is in the kernel's page cache
	// (it survives the process, not the machine) until then.
	FsyncInterval
	// FsyncNever leaves it to the kernel (and to Flush and Close).
	FsyncNever
)

// String returns the name ParseFsyncPolicy accepts.
func (p FsyncPolicy) String() string {
	switch p {
	case FsyncBatch:
		return "batch"
	case FsyncInterval:
		return "interval"
	case FsyncNever:
		return "never"
	}
	return "FsyncPolicy(" + strconv.Itoa(int(p)) + ")"
}

// ParseFsyncPolicy parses "batch" (also ""), "interval" or "never".
func ParseFsyncPolicy(s string) (FsyncPolicy, error) {
	switch s {
	case "", "batch":
		return FsyncBatch, nil
	case "interval":
		return FsyncInterval, nil
	case "never":
		return FsyncNever, nil
	}
	return 0, fmt.Errorf("fsync policy %q: want batch, interval or never", s)
}

// UnmarshalText lets configuration decoders read the policy by name.
func (p *FsyncPolicy) UnmarshalText(b []byte) error {
	v, err := ParseFsyncPolicy(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// MarshalText writes the policy's name.
func (p FsyncPolicy) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// FileOptions configures a File sink.
type FileOptions struct {
	Name string // sink name, required
	Path string // the file written; its directory is created 0700 if missing

	Fsync FsyncPolicy
	// FsyncInterval is the most time written data stays unsynced under
	// FsyncInterval; default 1 s.
	FsyncInterval time.Duration

	// MaxBytes rotates the file before a batch that would take it past
	// MaxBytes (a file may exceed it by one batch if the batch alone does);
	// 0 never rotates.
	MaxBytes int64
	// Keep is how many rotated files are kept, Path.1 (newest) to
	// Path.<Keep>; older ones are replaced. Default 5.
	Keep int
}

const (
	defaultFsyncInterval = time.Second
	defaultKeep          = 5
	maxKeep              = 1000
)

func (o *FileOptions) validate() error {
	switch {
	case o.Name == "":
		return errors.New("file sink: name: required")
	case o.Path == "":
		return fmt.Errorf("file sink %q: path: required", o.Name)
	case o.Fsync < FsyncBatch || o.Fsync > FsyncNever:
		return fmt.Errorf("file sink %q: fsync: unknown policy %d", o.Name, o.Fsync)
	case o.FsyncInterval < 0:
		return fmt.Errorf("file sink %q: fsync_interval: must not be negative", o.Name)
	case o.MaxBytes < 0:
		return fmt.Errorf("file sink %q: max_bytes: must not be negative", o.Name)
	case o.Keep < 0 || o.Keep > maxKeep:
		return fmt.Errorf("file sink %q: keep: must be 0 (default %d) to %d", o.Name, defaultKeep, maxKeep)
	}
	if o.FsyncInterval == 0 {
		o.FsyncInterval = defaultFsyncInterval
	}
	if o.Keep == 0 {
		o.Keep = defaultKeep
	}
	return nil
}

// File is a Sink appending records as JSON lines (the record's JSON and a
// '\n') to a file created with mode 0600, since records hold PHI. See
// FsyncPolicy for when a Write counts as held. Writes to local disk cannot
// be interrupted, so Write checks its context only before writing.
type File struct {
	opts FileOptions

	// mu guards everything below against the background syncer
	// (FsyncInterval); callers never call Write, Flush and Close
	// concurrently.
	mu      sync.Mutex
	f       *os.File
	size    int64
	dirty   bool  // written since the last fsync
	syncErr error // from the background syncer, reported once by Write or Flush
	closed  bool
	buf     []byte

	// stop and done run the background syncer; touched by NewFile and
	// Close only.
	stop chan struct{}
	done chan struct{}
}

// NewFile opens (or creates) opts.Path for appending.
func NewFile(opts FileOptions) (*File, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	s := &File{opts: opts}
	if err := os.MkdirAll(filepath.Dir(opts.Path), 0o700); err != nil {
		return nil, fmt.Errorf("file sink %q: %w", opts.Name, err)
	}
	if err := s.finishRotation(); err != nil {
		return nil, fmt.Errorf("file sink %q: %w", opts.Name, err)
	}
	if err := s.open(); err != nil {
		return nil, fmt.Errorf("file sink %q: %w", opts.Name, err)
	}
	if opts.Fsync == FsyncInterval {
		s.stop, s.done = make(chan struct{}), make(chan struct{})
		go s.syncLoop(s.stop, s.done)
	}
	return s, nil
}

// Name returns the sink's name.
func (s *File) Name() string { return s.opts.Name }

func (s *File) rotated(i int) string { return s.opts.Path + "." + strconv.Itoa(i) }

func (s *File) open() error {
	f, err := os.OpenFile(s.opts.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	if err := fileperm.Private(s.opts.Path, st.Mode()); err != nil {
		f.Close()
		return err
	}
	s.f, s.size = f, st.Size()
	if s.size == 0 {
		// The file may be new: make its directory entry durable too.
		if err := syncDir(filepath.Dir(s.opts.Path)); err != nil {
			f.Close()
			return err
		}
		return nil
	}
	// A crash in the middle of a write leaves a torn last line; end it, so
	// the next record starts a line of its own instead of corrupting it.
	last := make([]byte, 1)
	r, err := os.Open(s.opts.Path)
	if err != nil {
		f.Close()
		return err
	}
	_, err = r.ReadAt(last, s.size-1)
	r.Close()
	if err != nil {
		f.Close()
		return err
	}
	if last[0] != '\n' {
		if _, err := f.Write([]byte{'\n'}); err != nil {
			f.Close()
			return err
		}
		s.size++
		s.dirty = true
	}
	return nil
}

// Write appends the batch; see FsyncPolicy for when it returns.
func (s *File) Write(ctx context.Context, batch []Record) error {
	return s.write(ctx, batch, true)
}

// WriteUnsynced is Write without its fsync (FsyncBatch); Sync makes the
// batches written so durable (sink.GroupWriter).
func (s *File) WriteUnsynced(ctx context.Context, batch []Record) error {
	return s.write(ctx, batch, false)
}

// Sync ends the WriteUnsynced calls before it as Write would have: with
// FsyncBatch it fsyncs the file (a rotation in between fsynced the file
// it renamed away), and under every policy it reports a background fsync
// failure (FsyncInterval) as Write does.
func (s *File) Sync(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if err := s.takeSyncErr(); err != nil {
		return err
	}
	if s.opts.Fsync != FsyncBatch || s.f == nil {
		return nil
	}
	if err := s.syncLocked(); err != nil {
		return fmt.Errorf("file sink %q: %w", s.opts.Name, err)
	}
	return nil
}

func (s *File) write(ctx context.Context, batch []Record, sync bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if err := ContextError(ctx, "file", s.opts.Name); err != nil {
		return err
	}
	// The batch's lines are built first and checked as one buffer (one
	// vectorised pass over memory just written, instead of a pass over
	// every record's own bytes before the copy): as many line breaks as
	// records, no carriage return, no empty record. Only a batch that
	// fails it is checked record by record, for the error naming one.
	defer func() {
		if cap(s.buf) > 4<<20 {
			s.buf = nil // do not pin one huge batch's buffer forever
		}
	}()
	s.buf = AppendLines(s.buf[:0], batch)
	if !linesOK(s.buf, batch) {
		if err := CheckBatch(batch); err != nil {
			return fmt.Errorf("file sink %q: %w", s.opts.Name, err)
		}
	}
	if err := s.takeSyncErr(); err != nil {
		return err
	}
	if len(batch) == 0 {
		return nil
	}
	if s.f == nil { // a rotation failed after Path was replaced
		if err := s.open(); err != nil {
			return fmt.Errorf("file sink %q: reopen: %w", s.opts.Name, err)
		}
	}
	if s.opts.MaxBytes > 0 && s.size > 0 && s.size+int64(len(s.buf)) > s.opts.MaxBytes {
		if err := s.rotate(); err != nil {
			return fmt.Errorf("file sink %q: rotate: %w", s.opts.Name, err)
		}
	}
	n, err := s.f.Write(s.buf)
	if err != nil {
		// Cut a partial batch off (a full disk): a torn line would merge
		// with the retried batch's first record.
		if n > 0 {
			_ = s.f.Truncate(s.size)
		}
		return fmt.Errorf("file sink %q: write: %w", s.opts.Name, err)
	}
	s.size += int64(n)
	s.dirty = true
	if sync && s.opts.Fsync == FsyncBatch {
		if err := s.syncLocked(); err != nil {
			return fmt.Errorf("file sink %q: %w", s.opts.Name, err)
		}
	}
	return nil
}

// Flush fsyncs whatever was written, whatever the policy.
func (s *File) Flush(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if err := s.takeSyncErr(); err != nil {
		return err
	}
	if s.f == nil {
		return nil
	}
	if err := s.syncLocked(); err != nil {
		return fmt.Errorf("file sink %q: %w", s.opts.Name, err)
	}
	return nil
}

// Close fsyncs and closes the file. Closing again returns nil.
func (s *File) Close(ctx context.Context) error {
	if s.stop != nil {
		close(s.stop)
		<-s.done
		s.stop = nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.f == nil {
		return s.takeSyncErr()
	}
	err := errors.Join(s.takeSyncErr(), s.syncLocked(), s.f.Close())
	if err != nil {
		return fmt.Errorf("file sink %q: close: %w", s.opts.Name, err)
	}
	return nil
}

func (s *File) syncLocked() error {
	if !s.dirty {
		return nil
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	s.dirty = false
	return nil
}

func (s *File) takeSyncErr() error {
	err := s.syncErr
	s.syncErr = nil
	if err != nil {
		return fmt.Errorf("file sink %q: background fsync failed, records written before may not be durable: %w", s.opts.Name, err)
	}
	return nil
}

func (s *File) syncLoop(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(s.opts.FsyncInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			s.mu.Lock()
			if !s.closed {
				if err := s.syncLocked(); err != nil && s.syncErr == nil {
					s.syncErr = err
				}
			}
			s.mu.Unlock()
		}
	}
}

// rotate moves Path to Path.1 (shifting older files up to Path.<Keep>) and
// starts an empty Path. Path never goes missing: the current file is
// hard-linked as Path.1, then a new empty file is renamed over Path. A
// crash in between leaves Path and Path.1 the same file, which
// finishRotation completes on the next start.
func (s *File) rotate() error {
	if err := s.syncLocked(); err != nil {
		return err
	}
	for i := s.opts.Keep - 1; i >= 1; i-- {
		if err := os.Rename(s.rotated(i), s.rotated(i+1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := os.Remove(s.rotated(1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Link(s.opts.Path, s.rotated(1)); err == nil {
		if err := s.replaceWithEmpty(); err != nil {
			return err
		}
	} else if err := os.Rename(s.opts.Path, s.rotated(1)); err != nil {
		// No hard links on this file system: Path is missing from here
		// until open creates it again.
		return err
	}
	old := s.f
	s.f, s.size, s.dirty = nil, 0, false
	_ = old.Close() // synced above; the data lives on as Path.1
	return s.open()
}

// replaceWithEmpty renames a new empty 0600 file over Path and syncs the
// directory.
func (s *File) replaceWithEmpty() error {
	dir := filepath.Dir(s.opts.Path)
	tmp, err := os.CreateTemp(dir, filepath.Base(s.opts.Path)+".new-*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	err = errors.Join(tmp.Chmod(0o600), tmp.Close())
	if err == nil {
		err = os.Rename(name, s.opts.Path)
	}
	if err != nil {
		_ = os.Remove(name)
		return err
	}
	return syncDir(dir)
}

// finishRotation completes a rotation cut short after its hard link: Path
// and Path.1 are then one file, and appending to Path would grow Path.1.
func (s *File) finishRotation() error {
	a, err := os.Stat(s.opts.Path)
	if err != nil {
		return nil // no file yet (or an error open will report)
	}
	b, err := os.Stat(s.rotated(1))
	if err != nil || !os.SameFile(a, b) {
		return nil
	}
	return s.replaceWithEmpty()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

var _ GroupWriter = (*File)(nil)

// Default settings of a file sink's configuration.
const (
	DefaultFileMaxBytes = 100 << 20
	DefaultFileKeep     = 10
)

// FileType is the file sink type, for the registry (package sinktypes).
func FileType() Type {
	return Type{Name: "file", NewConfig: func() Config { return &FileConfig{} }}
}

// FileConfig is a file sink's entry in the configuration: JSON lines
// appended to Path, rotated at MaxBytes (default 100 MiB; 0 never rotates)
// keeping Keep old files (default 10), fsynced before acknowledging when
// Fsync (default true; false: fsynced in the background every second).
type FileConfig struct {
	Path     string `yaml:"path,omitempty" json:"path,omitempty"`
	MaxBytes int64  `yaml:"max_bytes,omitempty" json:"max_bytes,omitempty"`
	Keep     int    `yaml:"keep,omitempty" json:"keep,omitempty"`
	Fsync    *bool  `yaml:"fsync,omitempty" json:"fsync,omitempty"`
}

// FsyncEnabled reports the effective fsync setting (true unless set false).
func (c *FileConfig) FsyncEnabled() bool { return c.Fsync == nil || *c.Fsync }

// Defaults sets MaxBytes, Keep and Fsync when unset.
func (c *FileConfig) Defaults() {
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultFileMaxBytes
	}
	if c.Keep == 0 {
		c.Keep = DefaultFileKeep
	}
	if c.Fsync == nil {
		t := true
		c.Fsync = &t
	}
}

// Validate checks path, max_bytes and keep.
func (c *FileConfig) Validate(Env) error {
	var p Problems
	if c.Path == "" {
		p.Add("path", "required for type file")
	}
	if c.MaxBytes < 0 {
		p.Add("max_bytes", "must be positive, got %d", c.MaxBytes)
	}
	if c.Keep < 0 {
		p.Add("keep", "must be positive, got %d", c.Keep)
	}
	return p.Err()
}

// ResolvePaths resolves Path.
func (c *FileConfig) ResolvePaths(abs func(*string)) { abs(&c.Path) }

// New opens the file (NewFile). Fsync on means FsyncBatch: every batch is
// fsynced before its messages are acknowledged; off means FsyncInterval:
// the file is fsynced in the background at least every second (a crash of
// the machine, not of the process, may lose that second).
func (c *FileConfig) New(_ context.Context, name string, _ Env) (Sink, error) {
	policy := FsyncInterval
	if c.FsyncEnabled() {
		policy = FsyncBatch
	}
	return NewFile(FileOptions{Name: name, Path: c.Path, Fsync: policy, MaxBytes: c.MaxBytes, Keep: c.Keep})
}
