package spool

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/fileperm"
	"github.com/decryptd/decryptd/internal/fsutil"
	"github.com/decryptd/decryptd/internal/intake"
)

// Errors of Append.
var (
	// ErrFull: the message would take the spool past Options.MaxBytes. The
	// caller holds the message and retries (backpressure); nothing is
	// dropped.
	ErrFull = errors.New("spool: full")
	// ErrClosed: Close was called.
	ErrClosed = errors.New("spool: closed")
)

// Defaults of Options.
const (
	DefaultMaxBytes         = 1 << 30
	DefaultMinBackoff       = 100 * time.Millisecond
	DefaultMaxBackoff       = time.Second
	DefaultConcurrency      = 16
	DefaultMaxInFlight      = 256
	DefaultMaxInFlightBytes = 1 << 20
	maxSegmentBytes         = 64 << 20
	minSegmentBytes         = 1 << 20
	// probeWidth is how many devices the replay loop tries at once while
	// every recent try found the keys unreachable (an outage).
	probeWidth = 2
)

// lockWait bounds the wait for another process's lock on the directory (a
// variable for tests).
var lockWait = 10 * time.Second

// Options configure a Spool. Dir is required.
type Options struct {
	// Dir holds the segment files (created 0700; an existing one, or a file
	// in it, that group or others can access is refused).
	Dir string
	// MaxBytes bounds the segment files' total size (default 1 GiB).
	MaxBytes int64
	// SegmentBytes is the size at which a new segment file is started
	// (default MaxBytes/16, between 1 MiB and 64 MiB).
	SegmentBytes int64
	// MinBackoff and MaxBackoff bound the wait before the replay loop
	// tries a device's key again, doubling, with jitter (defaults 100ms and
	// 1s: a key that resolves again is found within about MaxBackoff).
	MinBackoff, MaxBackoff time.Duration
	// Concurrency bounds the devices replayed at once (default 16).
	Concurrency int
	// MaxInFlight and MaxInFlightBytes bound the replayed messages handed
	// over and not yet done (defaults 256 and 1 MiB of records; one
	// message is handed over whatever its size): while a sink is down, the
	// replay does not read the spool into memory, and what it holds stays
	// within the slack of the memory budget (deploy/README.md).
	MaxInFlight      int
	MaxInFlightBytes int64

	Registerer prometheus.Registerer // nil: metrics kept, not exported
	Logger     *zap.Logger           // nil: no logging
	Now        func() time.Time      // default time.Now
	Rand       func() float64        // jitter, [0, 1); default math/rand/v2
}

// Key is the device stream a message belongs to for ordering: its device
// id, or its topic when the input could not tell the device.
func Key(m intake.Message) string {
	if m.DeviceID != "" {
		return m.DeviceID
	}
	return "\x00topic:" + m.Topic
}

// Spool is a durable queue of messages per device. Create it with Open.
type Spool struct {
	o   Options
	m   *metrics
	log *zap.Logger

	lock *os.File // flock held while open: one process per directory

	mu       sync.Mutex
	segs     map[uint64]*segment
	nextSeq  uint64
	active   *segment // appended to; nil until the first append
	devs     map[string]*device
	ndevs    atomic.Int64 // len(devs), read without mu by Pending's fast path
	bytes    int64        // segment files' total size
	msgs     int64        // records not yet acknowledged
	buf      []byte
	closed   bool
	failed   error // an fsync or write failed: appends refused until restart
	waiters  []func(error)
	unsynced []*segment
	synced   *sync.Cond // signalled when waiters arrive or at Close
	running  int
	// Replayed messages handed over and not yet done; freed is closed
	// (and replaced) when one is done.
	handed      int
	handedBytes int64
	freed       chan struct{}
	outage      bool
	outTries    int
	probeAt     time.Time

	wake       chan struct{}
	syncerDone chan struct{}
}

type segment struct {
	seq   uint64
	f     *os.File
	ack   *os.File // acknowledgement log, opened at the first acknowledgement
	size  int64
	live  int  // records not yet acknowledged
	dirty bool // written since its last fsync
	gone  bool
}

// ref is where one spooled message is: the in-memory index keeps these,
// never payloads.
// 16 bytes per spooled message: a segment is at most SegmentBytes (64 MiB)
// plus one record, so offsets fit 32 bits.
type ref struct {
	seg *segment
	off uint32
	n   uint32
}

type device struct {
	key     string
	q       []ref // not yet handed over, in append order
	busy    bool  // a replay worker owns it
	next    time.Time
	attempt int
	headAt  int64 // receive time (Unix ns) of q[0], for the oldest-age gauge
}

// Open opens (creating it if needed) the spool in o.Dir, reading back every
// message a previous process left there: a torn or corrupt record (a crash
// during its write) ends its segment, which is truncated there (logged and
// counted in decryptd_spool_torn_records_total).
func Open(o Options) (*Spool, error) {
	if o.Dir == "" {
		return nil, errors.New("spool: Options.Dir is required")
	}
	if o.MaxBytes < 0 || o.SegmentBytes < 0 || o.MinBackoff < 0 || o.MaxBackoff < 0 || o.Concurrency < 0 || o.MaxInFlight < 0 || o.MaxInFlightBytes < 0 {
		return nil, errors.New("spool: Options must not be negative")
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.SegmentBytes == 0 {
		o.SegmentBytes = min(max(o.MaxBytes/16, minSegmentBytes), maxSegmentBytes)
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		return nil, fmt.Errorf("spool: MaxBackoff %s is below MinBackoff %s", o.MaxBackoff, o.MinBackoff)
	}
	if o.Concurrency == 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.MaxInFlightBytes == 0 {
		o.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	s := &Spool{
		o:          o,
		log:        o.Logger.With(zap.String("component", "spool")),
		segs:       map[uint64]*segment{},
		devs:       map[string]*device{},
		wake:       make(chan struct{}, 1),
		syncerDone: make(chan struct{}),
		nextSeq:    1,
	}
	s.synced = sync.NewCond(&s.mu)
	s.freed = make(chan struct{})
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	fi, err := os.Stat(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("spool: %s is not a directory", o.Dir)
	}
	if p := fi.Mode().Perm(); p&0o077 != 0 {
		return nil, fmt.Errorf("spool: directory %s: %w: mode %04o lets group or others reach the spooled messages; chmod 700 %s (or point spool.dir at a directory decryptd creates itself)",
			o.Dir, fileperm.ErrExposed, p, o.Dir)
	}
	if err := s.takeLock(); err != nil {
		return nil, err
	}
	m, err := newMetrics(o.Registerer, s)
	if err != nil {
		s.lock.Close()
		return nil, err
	}
	s.m = m
	if err := s.load(); err != nil {
		s.closeFiles()
		return nil, err
	}
	go s.syncer()
	if s.msgs > 0 {
		s.log.Info("spool reopened; replaying its messages", zap.Int64("messages", s.msgs), zap.Int64("bytes", s.bytes), zap.Int("devices", len(s.devs)))
	}
	return s, nil
}

func (s *Spool) takeLock() error {
	p := filepath.Join(s.o.Dir, "LOCK")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if fi, err := f.Stat(); err != nil || fileperm.Private(p, fi.Mode()) != nil {
		f.Close()
		if err == nil {
			err = fileperm.Private(p, fi.Mode())
		}
		return fmt.Errorf("spool: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), lockWait)
	defer cancel()
	if err := fsutil.Lock(ctx, f, fsutil.Exclusive); err != nil {
		f.Close()
		return fmt.Errorf("spool: %s is in use by another process: %w", s.o.Dir, err)
	}
	s.lock = f
	return nil
}

func segName(seq uint64) string { return fmt.Sprintf("%016x.seg", seq) }
func ackName(seq uint64) string { return fmt.Sprintf("%016x.ack", seq) }

// load reads back the segments of a previous process.
func (s *Spool) load() error {
	ents, err := os.ReadDir(s.o.Dir)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	var seqs []uint64
	acks := map[uint64]bool{}
	for _, e := range ents {
		name := e.Name()
		base, ext, ok := strings.Cut(name, ".")
		seq, perr := strconv.ParseUint(base, 16, 64)
		if !ok || perr != nil || len(base) != 16 || (ext != "seg" && ext != "ack") {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		if err := fileperm.Private(filepath.Join(s.o.Dir, name), fi.Mode()); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		if ext == "seg" {
			seqs = append(seqs, seq)
		} else {
			acks[seq] = true
		}
		s.nextSeq = max(s.nextSeq, seq+1)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for _, seq := range seqs {
		if err := s.loadSegment(seq); err != nil {
			return err
		}
		delete(acks, seq)
	}
	for seq := range acks { // an acknowledgement log whose segment is gone
		_ = os.Remove(filepath.Join(s.o.Dir, ackName(seq)))
	}
	return nil
}

func (s *Spool) loadSegment(seq uint64) error {
	path := filepath.Join(s.o.Dir, segName(seq))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	seg := &segment{seq: seq, f: f}
	acked, err := readAcks(filepath.Join(s.o.Dir, ackName(seq)))
	if err != nil {
		f.Close()
		return err
	}
	r := bufio.NewReaderSize(f, 256<<10)
	hdr := make([]byte, len(segMagic))
	if _, err := io.ReadFull(r, hdr); err != nil || string(hdr) != segMagic {
		// Cut short before its header was written, or not ours: an empty
		// segment is dropped; anything else is refused.
		if fi, serr := f.Stat(); serr == nil && fi.Size() < int64(len(segMagic)) && string(hdr[:fi.Size()]) == segMagic[:fi.Size()] {
			f.Close()
			s.m.torn.Inc()
			s.log.Warn("spool segment without a whole header (a crash as it was created): removed", zap.String("segment", segName(seq)))
			_ = os.Remove(path)
			_ = os.Remove(filepath.Join(s.o.Dir, ackName(seq)))
			return nil
		}
		f.Close()
		return fmt.Errorf("spool: %s: not a spool segment", path)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("spool: %w", err)
	}
	size := fi.Size()
	off := int64(len(segMagic))
	var rec []byte
	type loaded struct {
		key string
		r   ref
		at  int64
	}
	var found []loaded
	for {
		h, err := r.Peek(recHeader)
		if len(h) == 0 && errors.Is(err, io.EOF) {
			break
		}
		n, herr := recordHeader(h)
		if herr == nil && off+int64(recHeader+n) > size {
			herr = fmt.Errorf("%w: record of %d bytes at %d runs past the end (%d)", errTorn, recHeader+n, off, size)
		}
		if herr == nil {
			rec = append(rec[:0], make([]byte, recHeader+n)...)
			if _, err := io.ReadFull(r, rec); err != nil {
				herr = fmt.Errorf("%w: record cut short", errTorn)
			}
		}
		var m intake.Message
		if herr == nil {
			m, herr = decodeRecord(rec)
		}
		if herr != nil {
			s.m.torn.Inc()
			s.log.Warn("spool segment ends in a torn or corrupt record (a crash during its write, before it was acknowledged): truncated there",
				zap.String("segment", segName(seq)), zap.Int64("offset", off), zap.Int64("bytes_dropped", size-off), zap.Error(herr))
			if err := f.Truncate(off); err != nil {
				f.Close()
				return fmt.Errorf("spool: truncate %s: %w", path, err)
			}
			if err := f.Sync(); err != nil {
				f.Close()
				return fmt.Errorf("spool: %w", err)
			}
			break
		}
		if !acked[off] {
			var ns int64
			if !m.ReceivedAt.IsZero() {
				ns = m.ReceivedAt.UnixNano()
			}
			found = append(found, loaded{Key(m), ref{seg: seg, off: uint32(off), n: uint32(len(rec))}, ns})
		}
		off += int64(len(rec))
	}
	seg.size = off
	seg.live = len(found)
	if seg.live == 0 {
		f.Close()
		_ = os.Remove(path)
		_ = os.Remove(filepath.Join(s.o.Dir, ackName(seq)))
		return nil
	}
	s.segs[seq] = seg
	s.bytes += seg.size
	s.msgs += int64(seg.live)
	now := s.o.Now()
	for _, l := range found {
		d := s.devs[l.key]
		if d == nil {
			d = &device{key: l.key, next: now}
			s.devs[l.key] = d
			s.ndevs.Add(1)
		}
		if len(d.q) == 0 {
			d.headAt = l.at
		}
		d.q = append(d.q, l.r)
	}
	return nil
}

// An acknowledgement log holds one entry per acknowledged record: u64
// offset | u32 CRC-32C of those 8 bytes. It is written, not fsynced: it
// survives a process crash (the page cache keeps it), and losing it in a
// machine crash only replays acknowledged messages again.
const ackLen = 12

func readAcks(path string) (map[int64]bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	acked := map[int64]bool{}
	for ; len(b) >= ackLen; b = b[ackLen:] {
		if crc32.Checksum(b[:8], castagnoli) == binary.LittleEndian.Uint32(b[8:]) {
			acked[int64(binary.LittleEndian.Uint64(b))] = true
		}
	}
	return acked, nil
}

// Idle reports whether no device has messages waiting in the spool; it
// takes no lock.
func (s *Spool) Idle() bool { return s.ndevs.Load() == 0 }

// Pending reports whether messages of key's device wait in the spool: a
// later message of that device must then be appended behind them.
func (s *Spool) Pending(key string) bool {
	if s.ndevs.Load() == 0 {
		return false // the common case: no lock on the hot path
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.devs[key] != nil
}

// Append writes m to the spool under its device key (Key(m)) and returns
// true once it is written; durable is called, on another goroutine, once
// it is fsynced (nil) or the fsync failed. With ifPending it appends only
// when the device has messages in the spool already, and otherwise returns
// false, nil having done nothing. It returns false and ErrFull when m does
// not fit, ErrClosed after Close, or the error that disabled the spool (a
// failed write or fsync). Appends of one device are replayed in the order
// they were made. m.Payload is not kept.
func (s *Spool) Append(m intake.Message, ifPending bool, durable func(error)) (bool, error) {
	if ifPending && s.ndevs.Load() == 0 {
		return false, nil // nothing spooled: no lock on the common path
	}
	key := Key(m)
	if m.ReceivedAt.IsZero() {
		m.ReceivedAt = s.o.Now()
	}
	n := int64(recordLen(m))
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return false, ErrClosed
	case s.failed != nil:
		return false, s.failed
	}
	d := s.devs[key]
	if ifPending && d == nil {
		return false, nil
	}
	if s.bytes+n > s.o.MaxBytes {
		s.m.full.Inc()
		return false, ErrFull
	}
	if s.active == nil || (s.active.size+n > s.o.SegmentBytes && s.active.live > 0) {
		if err := s.rotate(); err != nil {
			s.fail(err)
			return false, s.failed
		}
		if s.bytes+n > s.o.MaxBytes {
			s.m.full.Inc()
			return false, ErrFull
		}
	}
	seg := s.active
	s.buf = appendRecord(s.buf[:0], m)
	if _, err := seg.f.WriteAt(s.buf, seg.size); err != nil {
		_ = seg.f.Truncate(seg.size)
		s.fail(fmt.Errorf("write %s: %w", segName(seg.seq), err))
		return false, s.failed
	}
	if cap(s.buf) > 1<<20 {
		s.buf = nil
	}
	r := ref{seg: seg, off: uint32(seg.size), n: uint32(n)}
	seg.size += n
	seg.live++
	s.bytes += n
	s.msgs++
	s.m.appends.Inc()
	if !seg.dirty {
		seg.dirty = true
		s.unsynced = append(s.unsynced, seg)
	}
	if d == nil {
		d = &device{key: key, next: s.o.Now().Add(s.o.MinBackoff)}
		s.devs[key] = d
		s.ndevs.Add(1)
		s.kick()
	}
	if len(d.q) == 0 {
		d.headAt = m.ReceivedAt.UnixNano()
	}
	d.q = append(d.q, r)
	s.waiters = append(s.waiters, durable)
	s.synced.Signal()
	return true, nil
}

// rotate starts a new active segment (mu held).
func (s *Spool) rotate() error {
	seq := s.nextSeq
	path := filepath.Join(s.o.Dir, segName(seq))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create segment: %w", err)
	}
	if _, err := f.Write([]byte(segMagic)); err != nil {
		f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("create segment: %w", err)
	}
	// The segment's directory entry must be durable before anything in it
	// is acknowledged.
	if err := f.Sync(); err != nil {
		f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("create segment: %w", err)
	}
	if err := fsutil.SyncDir(s.o.Dir); err != nil {
		f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("create segment: %w", err)
	}
	s.nextSeq++
	old := s.active
	seg := &segment{seq: seq, f: f, size: int64(len(segMagic))}
	s.segs[seq] = seg
	s.bytes += seg.size
	s.active = seg
	if old != nil {
		s.maybeRemove(old)
	}
	return nil
}

// fail disables appends (mu held): what was written may not be durable.
func (s *Spool) fail(err error) {
	if s.failed == nil {
		s.failed = fmt.Errorf("spool: disabled until restart: %w", err)
		s.log.Error("spool write or fsync failed; new key-pending messages wait in the pipeline as without a spool", zap.Error(err))
	}
}

// syncer is the group commit: one fsync covers every append made while
// the previous one ran.
func (s *Spool) syncer() {
	defer close(s.syncerDone)
	s.mu.Lock()
	for {
		for len(s.waiters) == 0 && !s.closed {
			s.synced.Wait()
		}
		if len(s.waiters) == 0 && s.closed {
			s.mu.Unlock()
			return
		}
		segs, ws := s.unsynced, s.waiters
		s.unsynced, s.waiters = nil, nil
		s.mu.Unlock()
		var err error
		for _, seg := range segs {
			if e := seg.f.Sync(); e != nil && err == nil {
				err = fmt.Errorf("fsync %s: %w", segName(seg.seq), e)
			}
		}
		s.mu.Lock()
		if err != nil {
			s.fail(err)
			err = s.failed
		}
		for _, seg := range segs {
			seg.dirty = false
			s.maybeRemove(seg)
		}
		s.mu.Unlock()
		for _, w := range ws {
			if w != nil {
				w(err)
			}
		}
		s.mu.Lock()
	}
}

// ack removes an acknowledged record: an entry in its segment's
// acknowledgement log, and the segment itself once nothing in it is live.
func (s *Spool) ack(r ref) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seg := r.seg
	if seg.gone {
		return
	}
	seg.live--
	s.msgs--
	if seg.live > 0 || seg == s.active {
		if seg.ack == nil && !s.closed {
			f, err := os.OpenFile(filepath.Join(s.o.Dir, ackName(seg.seq)), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
			if err != nil {
				s.log.Warn("spool acknowledgement log: cannot open (acknowledged messages of this segment would be replayed again after a restart)", zap.Error(err))
			}
			seg.ack = f
		}
		if seg.ack != nil {
			var b [ackLen]byte
			binary.LittleEndian.PutUint64(b[:], uint64(r.off))
			binary.LittleEndian.PutUint32(b[8:], crc32.Checksum(b[:8], castagnoli))
			_, _ = seg.ack.Write(b[:])
		}
	}
	s.maybeRemove(seg)
}

// maybeRemove deletes seg once nothing in it is live nor waiting for an
// fsync (mu held); the active segment goes too, so an empty spool has no
// segment files.
func (s *Spool) maybeRemove(seg *segment) {
	if seg.gone || seg.live > 0 || seg.dirty || s.closed {
		return
	}
	seg.gone = true
	if seg == s.active {
		s.active = nil
	}
	delete(s.segs, seg.seq)
	s.bytes -= seg.size
	seg.f.Close()
	if seg.ack != nil {
		seg.ack.Close()
	}
	_ = os.Remove(filepath.Join(s.o.Dir, segName(seg.seq)))
	_ = os.Remove(filepath.Join(s.o.Dir, ackName(seg.seq)))
}

// read reads back the message at r.
func (s *Spool) read(r ref) (intake.Message, error) {
	b := make([]byte, r.n)
	if _, err := r.seg.f.ReadAt(b, int64(r.off)); err != nil {
		return intake.Message{}, fmt.Errorf("spool: read %s at %d: %w", segName(r.seg.seq), r.off, err)
	}
	return decodeRecord(b)
}

// Stats is what the spool holds.
type Stats struct {
	Messages int64 // not yet acknowledged
	Bytes    int64 // segment files' total size
	Devices  int   // devices with messages not yet handed over
	Segments int
}

// Stats returns what the spool holds now.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Messages: s.msgs, Bytes: s.bytes, Devices: len(s.devs), Segments: len(s.segs)}
}

// oldest returns the receive time of the oldest message not yet handed
// over (zero when none).
func (s *Spool) oldest() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var o int64
	for _, d := range s.devs {
		if len(d.q) > 0 && (o == 0 || d.headAt < o) {
			o = d.headAt
		}
	}
	return o
}

// Close waits for the appends made so far to be fsynced (their durable
// callbacks run) and closes the files; what is still spooled stays on disk
// for the next Open. Run must have returned. Safe to call more than once.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.synced.Broadcast()
	s.mu.Unlock()
	<-s.syncerDone
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeFiles()
	return s.failed
}

func (s *Spool) closeFiles() {
	for _, seg := range s.segs {
		seg.f.Close()
		if seg.ack != nil {
			seg.ack.Close()
		}
	}
	if s.lock != nil {
		fsutil.Unlock(s.lock)
		s.lock.Close()
	}
}

func (s *Spool) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}
