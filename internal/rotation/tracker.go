package rotation

import (
	"context"
	"errors"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
)

// RegistryView is what the Tracker reads of the registry; registry.Store
// satisfies it.
type RegistryView interface {
	Get(ctx context.Context, keyID, version string) (registry.Entry, error)
	List(ctx context.Context) ([]registry.Entry, error)
	Watch(ctx context.Context) (<-chan registry.Change, error)
}

// Adopter records an adoption and adds message counts; *keyops.Ops
// satisfies it.
type Adopter interface {
	Adopt(ctx context.Context, ref dek.Ref, deviceID string, grace time.Duration) (bool, error)
	AddMessages(ctx context.Context, ref dek.Ref, n uint64) error
}

// TrackerOptions configure a Tracker.
type TrackerOptions struct {
	Registry RegistryView // required
	Adopter  Adopter      // required
	// Grace is the policy's grace period, passed to Adopt.
	Grace time.Duration
	// FlushInterval: how often message counts are added to the registry
	// (default 5m).
	FlushInterval time.Duration
	Metrics       *Metrics // nil: none
	Logger        *zap.Logger
}

const trackerShards = 64

type verState struct {
	pending     atomic.Bool
	decryptOnly atomic.Bool
	group       bool
	count       atomic.Uint64 // messages since the last flush
	// adopting: devices whose adoption is queued or done (deduplication),
	// under the shard lock.
	adopting map[string]bool
	// known: the registry's view of the version has reached the tracker
	// (set ran). Until then early holds the devices whose records
	// decrypted under it (at most maxEarly), so that set can queue their
	// adoptions if the version turns out to be pending: the backend can
	// decrypt under a new version (the key cache reads the registry) before
	// the change feed tells the tracker it exists, and a group member's
	// device cannot be told from the key id afterwards. Both under the
	// shard lock; known is also read without it.
	known atomic.Bool
	early map[string]bool
}

// maxEarly bounds the devices remembered for a version the tracker has not
// heard of yet; past it a device's adoption waits for its next message.
const maxEarly = 4096

type trackerShard struct {
	mu sync.RWMutex
	m  map[dek.Ref]*verState
}

type adoptReq struct {
	ref      dek.Ref
	deviceID string
}

// Tracker watches decrypted records for adoption of pending versions and
// counts messages per version. Observe is safe for concurrent use and cheap.
type Tracker struct {
	o      TrackerOptions
	seed   maphash.Seed
	shards [trackerShards]trackerShard
	queue  chan adoptReq
	log    *zap.Logger
}

// NewTracker returns a Tracker; Run feeds it.
func NewTracker(o TrackerOptions) (*Tracker, error) {
	if o.Registry == nil || o.Adopter == nil {
		return nil, errors.New("rotation: TrackerOptions.Registry and Adopter are required")
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	t := &Tracker{o: o, seed: maphash.MakeSeed(), queue: make(chan adoptReq, 4096), log: o.Logger.With(zap.String("component", "rotation"))}
	for i := range t.shards {
		t.shards[i].m = map[dek.Ref]*verState{}
	}
	return t, nil
}

func (t *Tracker) shard(keyID, version string) *trackerShard {
	var h maphash.Hash
	h.SetSeed(t.seed)
	h.WriteString(keyID)
	h.WriteByte(0)
	h.WriteString(version)
	return &t.shards[h.Sum64()%trackerShards]
}

// Observe is told of every record that decrypted. A record under a pending
// version queues its device's adoption (once).
func (t *Tracker) Observe(keyID, version, deviceID string) {
	if keyID == "" {
		return
	}
	ref := dek.Ref{KeyID: keyID, Version: version}
	s := t.shard(keyID, version)
	s.mu.RLock()
	v := s.m[ref]
	s.mu.RUnlock()
	if v == nil {
		s.mu.Lock()
		if v = s.m[ref]; v == nil {
			v = &verState{}
			s.m[ref] = v
		}
		s.mu.Unlock()
	}
	v.count.Add(1)
	if v.decryptOnly.Load() && t.o.Metrics != nil {
		t.o.Metrics.decryptOnlyMessages.Inc()
	}
	if v.pending.Load() {
		t.queueAdoption(s, v, ref, deviceID)
		return
	}
	if !v.known.Load() && deviceID != "" {
		t.noteEarly(s, v, ref, deviceID)
	}
}

// noteEarly remembers deviceID for a version whose registry entry has not
// reached the tracker yet, or queues its adoption if set marked the
// version pending in the meantime (checked under the shard lock, which set
// holds while it takes the early devices).
func (t *Tracker) noteEarly(s *trackerShard, v *verState, ref dek.Ref, deviceID string) {
	s.mu.Lock()
	if v.pending.Load() {
		s.mu.Unlock()
		t.queueAdoption(s, v, ref, deviceID)
		return
	}
	if !v.known.Load() && len(v.early) < maxEarly {
		if v.early == nil {
			v.early = map[string]bool{}
		}
		v.early[deviceID] = true
	}
	s.mu.Unlock()
}

func (t *Tracker) queueAdoption(s *trackerShard, v *verState, ref dek.Ref, deviceID string) {
	s.mu.Lock()
	if v.adopting[deviceID] {
		s.mu.Unlock()
		return
	}
	if v.adopting == nil {
		v.adopting = map[string]bool{}
	}
	v.adopting[deviceID] = true
	s.mu.Unlock()
	select {
	case t.queue <- adoptReq{ref, deviceID}:
	default:
		// Full: forget it, the device's next message queues it again.
		s.mu.Lock()
		delete(v.adopting, deviceID)
		s.mu.Unlock()
	}
}

// ObservingOpener wraps the decryption core so that every record that
// opened is observed (after its tag verified: a forged message cannot
// adopt a version).
type ObservingOpener struct {
	Opener interface {
		Open(ctx context.Context, m decrypt.Message) (decrypt.Record, error)
		TryOpen(m decrypt.Message) (decrypt.Record, error)
		Forget(r decrypt.Record)
	}
	Tracker *Tracker
}

// Open opens m and observes the record.
func (o ObservingOpener) Open(ctx context.Context, m decrypt.Message) (decrypt.Record, error) {
	rec, err := o.Opener.Open(ctx, m)
	if err == nil {
		o.Tracker.Observe(rec.KeyID, rec.KeyVersion, rec.DeviceID)
	}
	return rec, err
}

// TryOpen opens m without waiting and observes the record; Observe never
// blocks either.
func (o ObservingOpener) TryOpen(m decrypt.Message) (decrypt.Record, error) {
	rec, err := o.Opener.TryOpen(m)
	if err == nil {
		o.Tracker.Observe(rec.KeyID, rec.KeyVersion, rec.DeviceID)
	}
	return rec, err
}

// Forget passes through.
func (o ObservingOpener) Forget(r decrypt.Record) { o.Opener.Forget(r) }

// set records what the registry says of e.
func (t *Tracker) set(e registry.Entry) {
	ref := e.Ref()
	s := t.shard(e.KeyID, e.Version)
	s.mu.Lock()
	v := s.m[ref]
	if v == nil {
		v = &verState{}
		s.m[ref] = v
	}
	wasPending := v.pending.Load()
	pending := e.Rotation.Pending && e.State == dek.StateActive
	v.group = len(e.Devices) > 0
	v.decryptOnly.Store(e.State == dek.StateDecryptOnly)
	v.pending.Store(pending)
	var replay []string
	if pending && !wasPending {
		// Records decrypted before we learned it is pending (the change
		// reached us after the key cache read the version): adopt now,
		// for the devices that sent them.
		if v.count.Load() > 0 && !v.group {
			replay = append(replay, deviceOfKey(e.KeyID))
		}
		for d := range v.early {
			if !v.group || contains(e.Devices, d) {
				replay = append(replay, d)
			}
		}
	}
	v.early = nil
	v.known.Store(true)
	if pending && v.group {
		// Forget devices the registry does not list as adopted yet, so a
		// lost update is retried by their next message.
		for d := range v.adopting {
			if !contains(e.Rotation.AdoptedBy, d) {
				delete(v.adopting, d)
			}
		}
	}
	if !pending {
		v.adopting = nil
	}
	s.mu.Unlock()
	for _, d := range replay {
		if d != "" {
			t.queueAdoption(s, v, ref, d)
		}
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func deviceOfKey(keyID string) string {
	d, _ := dek.DeviceOfKeyID(keyID)
	return d
}

// Pending returns how many versions the tracker holds as pending.
func (t *Tracker) Pending() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		for _, v := range s.m {
			if v.pending.Load() {
				n++
			}
		}
		s.mu.RUnlock()
	}
	return n
}

// Run loads the registry, follows its change feed, runs the adoption
// workers and flushes the message counts, until ctx ends (then it flushes
// once more).
func (t *Tracker) Run(ctx context.Context) error {
	if err := t.loadAll(ctx); err != nil {
		return err
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.adoptLoop(ctx)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t.flushLoop(ctx)
	}()
	t.watch(ctx)
	wg.Wait()
	return nil
}

func (t *Tracker) loadAll(ctx context.Context) error {
	es, err := t.o.Registry.List(ctx)
	if err != nil {
		return err
	}
	for _, e := range es {
		t.set(e)
	}
	return nil
}

func (t *Tracker) watch(ctx context.Context) {
	for ctx.Err() == nil {
		ch, err := t.o.Registry.Watch(ctx)
		if err != nil {
			t.log.Warn("rotation tracker: change feed unavailable, retrying", zap.Error(err))
			sleepCtx(ctx, time.Second)
			continue
		}
		// Anything changed before the subscription is caught by a reload.
		if err := t.loadAll(ctx); err != nil && ctx.Err() == nil {
			t.log.Warn("rotation tracker: registry reload failed", zap.Error(err))
		}
		for ch := range ch {
			switch ch.Kind {
			case registry.ChangeReset:
				if err := t.loadAll(ctx); err != nil && ctx.Err() == nil {
					t.log.Warn("rotation tracker: registry reload failed", zap.Error(err))
				}
			default:
				e, err := t.o.Registry.Get(ctx, ch.KeyID, ch.Version)
				if err == nil {
					t.set(e)
				}
			}
		}
	}
}

func (t *Tracker) adoptLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-t.queue:
			done, err := t.o.Adopter.Adopt(ctx, r.ref, r.deviceID, t.o.Grace)
			if err != nil {
				if ctx.Err() == nil {
					t.log.Warn("rotation: recording an adoption failed; the next message retries", zap.String("key_id", r.ref.KeyID), zap.String("key_version", r.ref.Version), zap.Error(err))
					if t.o.Metrics != nil {
						t.o.Metrics.failures.WithLabelValues("adopt").Inc()
					}
				}
				s := t.shard(r.ref.KeyID, r.ref.Version)
				s.mu.Lock()
				if v := s.m[r.ref]; v != nil {
					delete(v.adopting, r.deviceID)
				}
				s.mu.Unlock()
				continue
			}
			if done {
				if t.o.Metrics != nil {
					t.o.Metrics.adoptions.Inc()
				}
				t.adoptedLog(ctx, r)
			}
		}
	}
}

// adoptedLog writes the info lines of an adoption: the version adopted,
// and the version it superseded turning decrypt_only until its grace
// period ends.
func (t *Tracker) adoptedLog(ctx context.Context, r adoptReq) {
	t.log.Info("rotation version adopted", zap.String("key_id", r.ref.KeyID), zap.String("key_version", r.ref.Version),
		zap.String("device_id", r.deviceID))
	e, err := t.o.Registry.Get(ctx, r.ref.KeyID, r.ref.Version)
	if err != nil || e.Rotation.Supersedes == "" {
		return
	}
	t.log.Info("rotation version decrypt_only", zap.String("key_id", r.ref.KeyID), zap.String("key_version", e.Rotation.Supersedes),
		zap.String("superseded_by", r.ref.Version), zap.String("revoke_after", e.Rotation.AdoptedAt.Add(t.o.Grace).UTC().Format(time.RFC3339)),
		zap.String("reason", "superseded; late and buffered messages still decrypt until the grace period ends"))
}

func (t *Tracker) flushLoop(ctx context.Context) {
	tick := time.NewTicker(t.o.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			t.Flush(fctx)
			cancel()
			return
		case <-tick.C:
			t.Flush(ctx)
		}
	}
}

// Flush adds every version's message count since the last flush to the
// registry. A failed add is put back for the next flush.
func (t *Tracker) Flush(ctx context.Context) {
	type item struct {
		ref dek.Ref
		v   *verState
	}
	var items []item
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		for ref, v := range s.m {
			if v.count.Load() > 0 {
				items = append(items, item{ref, v})
			}
		}
		s.mu.RUnlock()
	}
	for _, it := range items {
		n := it.v.count.Swap(0)
		if n == 0 {
			continue
		}
		if err := t.o.Adopter.AddMessages(ctx, it.ref, n); err != nil {
			if !errors.Is(err, registry.ErrNotFound) {
				it.v.count.Add(n)
			}
			if ctx.Err() != nil {
				return
			}
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
