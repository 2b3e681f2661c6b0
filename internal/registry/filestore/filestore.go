package filestore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/fsutil"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/feed"
)

// Format names the file layout, so a future layout can be told apart.
const Format = "decryptd-registry-v1"

// DefaultPollInterval is how often a handle checks the file when no
// directory event arrived: the fallback that keeps the 2 s Watch promise
// where inotify is unavailable or overflows.
const DefaultPollInterval = time.Second

// fileMode is the mode of the registry and its lock: wrapped DEKs and device
// lists are nobody else's business.
const fileMode = 0o600

type fileDoc struct {
	Format  string           `json:"format"`
	Entries []registry.Entry `json:"entries"`
}

type options struct {
	clock  func() time.Time
	log    *zap.Logger
	poll   time.Duration
	notify bool
}

// Option configures Open.
type Option func(*options)

// WithClock sets the clock that stamps CreatedAt/UpdatedAt (tests).
func WithClock(now func() time.Time) Option { return func(o *options) { o.clock = now } }

// WithLogger sets where reload and watch problems are logged (default: nowhere).
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.log = l } }

// WithPollInterval sets how often the file is checked for changes without a
// directory event; keep it under 2 s to keep the Watch promise.
func WithPollInterval(d time.Duration) Option { return func(o *options) { o.poll = d } }

// WithoutFSNotify turns the directory watch off, leaving only the poll
// (tests of the fallback; file systems without inotify).
func WithoutFSNotify() Option { return func(o *options) { o.notify = false } }

// fileIdent tells one version of the registry file from another without
// reading it. Every write is a rename of a new file, so the inode changes;
// size and the timestamps guard against inode reuse.
type fileIdent struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}

func identOf(fi fs.FileInfo) fileIdent {
	id := fileIdent{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.dev, id.ino = uint64(st.Dev), st.Ino
		id.ctime = st.Ctim.Sec*1e9 + st.Ctim.Nsec
	}
	return id
}

// Store is a registry.Store over one JSON file. Safe for concurrent use by
// goroutines and, through the file lock, by processes.
type Store struct {
	path, dir, base string
	opt             options

	// ioMu serialises this handle's use of the file lock and the file.
	ioMu  sync.Mutex
	lockf *os.File

	mu      sync.RWMutex
	index   map[dek.Ref]registry.Entry
	ident   fileIdent
	lastErr string // the last reload error logged, so it is logged once

	hub    *feed.Hub
	stop   chan struct{}
	wg     sync.WaitGroup
	closed atomic.Bool
	once   sync.Once
}

var _ registry.Store = (*Store)(nil)

// Open opens the registry at path, creating an empty one (mode 0600) when the
// file does not exist. The directory must exist. ctx bounds the wait for the
// file lock.
func Open(ctx context.Context, path string, opts ...Option) (*Store, error) {
	o := options{clock: time.Now, log: zap.NewNop(), poll: DefaultPollInterval, notify: true}
	for _, f := range opts {
		f(&o)
	}
	if o.poll <= 0 {
		o.poll = DefaultPollInterval
	}
	s := &Store{
		path: path, dir: filepath.Dir(path), base: filepath.Base(path), opt: o,
		index: map[dek.Ref]registry.Entry{},
		hub:   feed.New(0),
		stop:  make(chan struct{}),
	}
	lf, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, fileMode)
	if err != nil {
		return nil, fmt.Errorf("registry file %s: open lock: %w", path, err)
	}
	s.lockf = lf
	if err := s.init(ctx); err != nil {
		lf.Close()
		return nil, err
	}
	var w *fsnotify.Watcher
	if o.notify {
		if w, err = fsnotify.NewWatcher(); err == nil {
			if err = w.Add(s.dir); err != nil {
				w.Close()
				w = nil
			}
		}
		if err != nil {
			o.log.Warn("registry file: no directory watch, polling only", zap.String("path", path), zap.Error(err))
		}
	}
	s.wg.Add(1)
	go s.watchLoop(w)
	return s, nil
}

// init creates the file if missing, checks its mode, removes a crashed
// writer's temporary files and loads the index, all under the write lock.
func (s *Store) init(ctx context.Context) error {
	s.ioMu.Lock()
	defer s.ioMu.Unlock()
	if err := fsutil.Lock(ctx, s.lockf, fsutil.Exclusive); err != nil {
		return fmt.Errorf("registry file %s: lock: %w", s.path, err)
	}
	defer fsutil.Unlock(s.lockf)

	fi, err := os.Stat(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := s.writeFile(nil); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("registry file %s: %w", s.path, err)
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("registry file %s: mode %v lets group or others read it; chmod 600", s.path, fi.Mode().Perm())
	}
	// Holding the write lock, no writer is mid-write: any temporary file
	// left is a crashed writer's and was never the registry.
	if stale, _ := filepath.Glob(filepath.Join(s.dir, s.tmpPrefix()+"*")); len(stale) > 0 {
		for _, f := range stale {
			_ = os.Remove(f)
		}
		s.opt.log.Info("registry file: removed temporary files of an interrupted write", zap.String("path", s.path), zap.Int("files", len(stale)))
	}
	_, err = s.reloadLocked(true)
	return err
}

func (s *Store) tmpPrefix() string { return "." + s.base + ".tmp-" }

// readFile reads and checks the registry file: the identity of what was read
// and its entries by name.
func (s *Store) readFile() (map[dek.Ref]registry.Entry, fileIdent, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return nil, fileIdent{}, fmt.Errorf("registry file %s: %w", s.path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fileIdent{}, fmt.Errorf("registry file %s: %w", s.path, err)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, fileIdent{}, fmt.Errorf("registry file %s: read: %w", s.path, err)
	}
	index, err := parse(buf.Bytes())
	if err != nil {
		return nil, fileIdent{}, fmt.Errorf("registry file %s: %w", s.path, err)
	}
	return index, identOf(fi), nil
}

// parse decodes a registry file and checks every entry's invariants: a file
// edited by hand or by a buggy tool is refused rather than served.
func parse(data []byte) (map[dek.Ref]registry.Entry, error) {
	var doc fileDoc
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode: trailing data after the registry")
	}
	if doc.Format != Format {
		return nil, fmt.Errorf("format %q, want %q", doc.Format, Format)
	}
	index := make(map[dek.Ref]registry.Entry, len(doc.Entries))
	for i, e := range doc.Entries {
		if err := e.Validate(); err != nil {
			return nil, fmt.Errorf("entries[%d]: %w", i, err)
		}
		if _, dup := index[e.Ref()]; dup {
			return nil, fmt.Errorf("entries[%d]: %s listed twice", i, e.Ref())
		}
		e.CreatedAt, e.UpdatedAt, e.StateChangedAt = e.CreatedAt.UTC(), e.UpdatedAt.UTC(), e.StateChangedAt.UTC()
		index[e.Ref()] = e
	}
	return index, nil
}

// reloadLocked re-reads the file (force) or does so only if its identity
// moved, swaps the index and returns the changes to publish. The caller
// holds ioMu and a file lock.
func (s *Store) reloadLocked(force bool) ([]registry.Change, error) {
	if !force {
		fi, err := os.Stat(s.path)
		if err == nil {
			s.mu.RLock()
			same := identOf(fi) == s.ident
			s.mu.RUnlock()
			if same {
				return nil, nil
			}
		}
	}
	index, ident, err := s.readFile()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	old := s.index
	s.index, s.ident = index, ident
	s.mu.Unlock()
	return diff(old, index), nil
}

// diff turns two versions of the index into changes. An entry that vanished
// cannot be said in a Created or Updated change: that is a Reset.
func diff(old, cur map[dek.Ref]registry.Entry) []registry.Change {
	var out []registry.Change
	for ref, e := range cur {
		o, ok := old[ref]
		switch {
		case !ok:
			out = append(out, registry.Change{Kind: registry.ChangeCreated, KeyID: ref.KeyID, Version: ref.Version, State: e.State})
		case !sameEntry(o, e):
			out = append(out, registry.Change{Kind: registry.ChangeUpdated, KeyID: ref.KeyID, Version: ref.Version, State: e.State})
		}
	}
	for ref := range old {
		if _, ok := cur[ref]; !ok {
			return []registry.Change{{Kind: registry.ChangeReset}}
		}
	}
	// Stable order helps whoever reads a log of them.
	slices.SortFunc(out, func(a, b registry.Change) int {
		return cmp.Or(strings.Compare(a.KeyID, b.KeyID), strings.Compare(a.Version, b.Version))
	})
	return out
}

func sameEntry(a, b registry.Entry) bool {
	return registry.SameContent(a, b) && a.UpdatedAt.Equal(b.UpdatedAt) &&
		a.CreatedAt.Equal(b.CreatedAt) && a.StateChangedAt.Equal(b.StateChangedAt)
}

// refresh brings the index up to date with the file and publishes what
// changed. Errors are logged once and the last good index stays in use: a
// reader is better served slightly stale than not at all, and writers
// re-read under the lock anyway.
func (s *Store) refresh(ctx context.Context, force bool) {
	if !force {
		fi, err := os.Stat(s.path)
		if err == nil {
			s.mu.RLock()
			same := identOf(fi) == s.ident
			s.mu.RUnlock()
			if same {
				return
			}
		}
	}
	s.ioMu.Lock()
	var changes []registry.Change
	err := fsutil.Lock(ctx, s.lockf, fsutil.Shared)
	if err == nil {
		changes, err = s.reloadLocked(force)
		fsutil.Unlock(s.lockf)
	}
	// Published under ioMu, so that two reloads cannot overtake each other
	// and leave a watcher with an older state as the last word.
	s.hub.Publish(changes...)
	s.ioMu.Unlock()
	s.noteErr(err)
}

func (s *Store) noteErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err == nil && s.lastErr != "":
		s.lastErr = ""
		s.opt.log.Info("registry file readable again", zap.String("path", s.path))
	case err != nil && err.Error() != s.lastErr:
		s.lastErr = err.Error()
		s.opt.log.Error("registry file: reload failed, serving the last good copy", zap.String("path", s.path), zap.Error(err))
	}
}

func (s *Store) watchLoop(w *fsnotify.Watcher) {
	defer s.wg.Done()
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		defer w.Close()
		events, errs = w.Events, w.Errors
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-s.stop
		cancel()
	}()
	tick := time.NewTicker(s.opt.poll)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			// The rename-replace shows as a Create of our name; temporary
			// files and the lock have other names.
			if filepath.Base(ev.Name) == s.base {
				s.refresh(ctx, true)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// Overflow and the like: a forced re-read covers what was missed.
			s.opt.log.Warn("registry file: directory watch error", zap.String("path", s.path), zap.Error(err))
			s.refresh(ctx, true)
		case <-tick.C:
			s.refresh(ctx, false)
		}
	}
}

// Get returns one entry from the index, reloading first if the file moved.
func (s *Store) Get(ctx context.Context, keyID, version string) (registry.Entry, error) {
	if s.closed.Load() {
		return registry.Entry{}, registry.ErrClosed
	}
	s.refresh(ctx, false)
	s.mu.RLock()
	e, ok := s.index[dek.Ref{KeyID: keyID, Version: version}]
	s.mu.RUnlock()
	if !ok {
		return registry.Entry{}, fmt.Errorf("%s@%s: %w", keyID, version, registry.ErrNotFound)
	}
	return e.Clone(), nil
}

// List returns every entry by key id (bytewise), then creation time, then version.
func (s *Store) List(ctx context.Context) ([]registry.Entry, error) {
	if s.closed.Load() {
		return nil, registry.ErrClosed
	}
	s.refresh(ctx, false)
	s.mu.RLock()
	out := make([]registry.Entry, 0, len(s.index))
	for _, e := range s.index {
		out = append(out, e.Clone())
	}
	s.mu.RUnlock()
	sortEntries(out)
	return out, nil
}

func sortEntries(es []registry.Entry) {
	slices.SortFunc(es, func(a, b registry.Entry) int {
		return cmp.Or(strings.Compare(a.KeyID, b.KeyID), a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.Version, b.Version))
	})
}

// Create adds an entry, or fails with ErrExists.
func (s *Store) Create(ctx context.Context, e registry.Entry) error {
	e, err := registry.PrepareCreate(e, s.opt.clock())
	if err != nil {
		return err
	}
	_, err = s.write(ctx, func(index map[dek.Ref]registry.Entry) (registry.Entry, []registry.Change, error) {
		if _, ok := index[e.Ref()]; ok {
			return registry.Entry{}, nil, fmt.Errorf("%s: %w", e.Ref(), registry.ErrExists)
		}
		index[e.Ref()] = e
		return e, []registry.Change{{Kind: registry.ChangeCreated, KeyID: e.KeyID, Version: e.Version, State: e.State}}, nil
	})
	return err
}

// Update applies fn to the stored entry under the exclusive file lock, on the
// file as it is now (re-read under the lock), and saves the result.
func (s *Store) Update(ctx context.Context, keyID, version string, fn func(*registry.Entry) error) (registry.Entry, error) {
	ref := dek.Ref{KeyID: keyID, Version: version}
	return s.write(ctx, func(index map[dek.Ref]registry.Entry) (registry.Entry, []registry.Change, error) {
		old, ok := index[ref]
		if !ok {
			return registry.Entry{}, nil, fmt.Errorf("%s: %w", ref, registry.ErrNotFound)
		}
		next, changed, err := registry.ApplyUpdate(old, s.opt.clock(), fn)
		if err != nil || !changed {
			return next, nil, err
		}
		index[ref] = next
		return next, []registry.Change{{Kind: registry.ChangeUpdated, KeyID: keyID, Version: version, State: next.State}}, nil
	})
}

// write runs op on a copy of the current index under the exclusive lock and,
// when op reports changes, writes the file once and publishes them.
func (s *Store) write(ctx context.Context, op func(map[dek.Ref]registry.Entry) (registry.Entry, []registry.Change, error)) (registry.Entry, error) {
	if s.closed.Load() {
		return registry.Entry{}, registry.ErrClosed
	}
	s.ioMu.Lock()
	if err := fsutil.Lock(ctx, s.lockf, fsutil.Exclusive); err != nil {
		s.ioMu.Unlock()
		return registry.Entry{}, fmt.Errorf("registry file %s: lock: %w", s.path, err)
	}
	// Re-read whatever another process wrote: the read-modify-write must
	// start from the file, never from a possibly stale index.
	changes, err := s.reloadLocked(true)
	var result registry.Entry
	if err == nil {
		s.mu.RLock()
		index := maps.Clone(s.index)
		s.mu.RUnlock()
		var chs []registry.Change
		result, chs, err = op(index)
		if err == nil && len(chs) > 0 {
			if err = s.writeFile(index); err == nil {
				changes = append(changes, chs...)
			}
		}
	}
	fsutil.Unlock(s.lockf)
	s.hub.Publish(changes...) // under ioMu: see refresh
	s.ioMu.Unlock()
	if err != nil {
		return registry.Entry{}, err
	}
	return result.Clone(), nil
}

// writeFile replaces the registry with index atomically and adopts it as the
// loaded index. The caller holds ioMu and the exclusive lock.
func (s *Store) writeFile(index map[dek.Ref]registry.Entry) error {
	doc := fileDoc{Format: Format, Entries: slices.AppendSeq(make([]registry.Entry, 0, len(index)), maps.Values(index))}
	sortEntries(doc.Entries)
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("registry file %s: encode: %w", s.path, err)
	}
	data = append(data, '\n')
	if err := fsutil.WriteAtomic(s.path, s.tmpPrefix(), data, fileMode); err != nil {
		return fmt.Errorf("registry file %s: %w", s.path, err)
	}
	fi, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("registry file %s: %w", s.path, err)
	}
	if index == nil {
		index = map[dek.Ref]registry.Entry{}
	}
	s.mu.Lock()
	s.index, s.ident = index, identOf(fi)
	s.mu.Unlock()
	return nil
}

// Watch streams changes made through any handle in any process.
func (s *Store) Watch(ctx context.Context) (<-chan registry.Change, error) {
	if s.closed.Load() {
		return nil, registry.ErrClosed
	}
	return s.hub.Subscribe(ctx)
}

// Close stops the file watch, closes every Watch channel and releases the
// lock file. Safe to call more than once.
func (s *Store) Close() error {
	var err error
	s.once.Do(func() {
		s.closed.Store(true)
		close(s.stop)
		s.wg.Wait()
		s.hub.Close()
		s.ioMu.Lock()
		err = s.lockf.Close()
		s.ioMu.Unlock()
	})
	return err
}
