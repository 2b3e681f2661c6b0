package rotation

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/rekey"
)

// Ops is what the controller needs of keyops; *keyops.Ops satisfies it.
type Ops interface {
	List(ctx context.Context) ([]registry.Entry, error)
	RotateKeyFrom(ctx context.Context, keyID string, versions []registry.Entry, trigger, why string) (registry.Entry, bool, error)
	UnwrapForRekey(ctx context.Context, e registry.Entry, deviceID string) ([]byte, error)
	NoteRekey(ctx context.Context, ref dek.Ref, failed bool) error
	RevokeExpired(ctx context.Context, es []registry.Entry) ([]keyops.Outcome, error)
	RootRotate(ctx context.Context, id string) (kms.RootKey, error)
	Rewrap(ctx context.Context, progress keyops.RewrapProgress) (keyops.RewrapResult, error)
}

// RootState remembers when the root key was last rotated and whether the
// rewrap that follows is done (KMSRootState derives both from the KMS and
// the registry). Optional: without it the controller does no root
// rotation.
type RootState interface {
	Load(ctx context.Context) (last time.Time, rewrapPending bool, err error)
	Save(ctx context.Context, last time.Time, rewrapPending bool) error
}

// entriesLoader is a RootState that can use the registry listing the scan
// already made instead of listing it again.
type entriesLoader interface {
	LoadFrom(ctx context.Context, es []registry.Entry) (last time.Time, rewrapPending bool, err error)
}

// ControllerOptions configure a Controller.
type ControllerOptions struct {
	Policy    Policy
	Ops       Ops       // required
	Lease     Lease     // required
	Publisher Publisher // required
	RootState RootState // optional
	// RootKeyID names the root key to rotate (empty: the only one there
	// is; Key Protect: the configured one).
	RootKeyID string
	// TopicPattern: rekey topic ({device_type}, {device_id}); default
	// rekey.DefaultTopic. DeviceType fills {device_type} (default "device").
	TopicPattern string
	DeviceType   string
	// Workers: rekeys made and sent at once (default 8).
	Workers int
	// LeaseRetry: how often a follower tries to take the lease (default 1s).
	LeaseRetry time.Duration
	Metrics    *Metrics
	Logger     *zap.Logger
	Now        func() time.Time
	Rand       io.Reader
}

// Controller applies the policy while it holds the lease.
type Controller struct {
	o   ControllerOptions
	log *zap.Logger

	mu     sync.Mutex
	leader bool
	paused bool
	status Status
	// waiting is the last reason logged for due keys not starting ("" when
	// none waited), so that the line is written when it changes, not every
	// scan.
	waiting string
	// takenUp: operator rotations already counted by this controller, so
	// that a delivery whose attempt could not be recorded (the registry
	// failed) is not counted again at the next scan.
	takenUp map[dek.Ref]bool
}

// Status is what the last scan found.
type Status struct {
	Leader     bool
	Paused     bool
	Keys       int
	Pending    int
	Stragglers []string // key ids
	Rotated    int      // rotations started by the last scan
	// Waiting says why due keys did not start at the last scan ("" when
	// none waited), and WaitUntil until when, when that is known.
	Waiting   string
	WaitUntil time.Time
	Budget    Budget
	At        time.Time
}

// NewController checks o.
func NewController(o ControllerOptions) (*Controller, error) {
	if o.Ops == nil || o.Lease == nil || o.Publisher == nil {
		return nil, errors.New("rotation: ControllerOptions.Ops, Lease and Publisher are required")
	}
	p, err := o.Policy.WithDefaults()
	if err != nil {
		return nil, err
	}
	o.Policy = p
	if o.TopicPattern == "" {
		o.TopicPattern = rekey.DefaultTopic
	}
	if o.DeviceType == "" {
		o.DeviceType = "device"
	}
	if o.Workers <= 0 {
		o.Workers = 8
	}
	if o.LeaseRetry <= 0 {
		o.LeaseRetry = time.Second
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.Metrics == nil {
		o.Metrics, _ = NewMetrics(nil)
	}
	return &Controller{o: o, log: o.Logger.With(zap.String("component", "rotation"))}, nil
}

// Leader reports whether this controller holds the lease.
func (c *Controller) Leader() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leader
}

// Status returns what the last scan found.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Leader, s.Paused = c.leader, c.paused
	return s
}

// Run tries to lead until ctx ends; while leading, it scans every Tick.
func (c *Controller) Run(ctx context.Context) error {
	defer c.o.Lease.Release()
	for ctx.Err() == nil {
		lost, ok, err := c.o.Lease.TryAcquire(ctx)
		if err != nil && ctx.Err() == nil {
			c.log.Warn("rotation lease unavailable", zap.Error(err))
		}
		if !ok {
			sleepCtx(ctx, c.o.LeaseRetry)
			continue
		}
		c.lead(ctx, lost)
	}
	return nil
}

func (c *Controller) setLeader(on bool) {
	c.mu.Lock()
	c.leader = on
	c.mu.Unlock()
	v := 0.0
	if on {
		v = 1
	}
	c.o.Metrics.leader.Set(v)
}

func (c *Controller) lead(ctx context.Context, lost <-chan struct{}) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-lost:
			cancel()
		case <-lctx.Done():
		}
	}()
	c.setLeader(true)
	defer c.setLeader(false)
	c.log.Info("rotation controller leading")
	tick := time.NewTicker(c.o.Policy.Tick)
	defer tick.Stop()
	for {
		if err := c.Scan(lctx); err != nil && lctx.Err() == nil {
			c.o.Metrics.failures.WithLabelValues("scan").Inc()
			c.log.Warn("rotation scan failed", zap.Error(err))
		}
		select {
		case <-lctx.Done():
			if ctx.Err() == nil {
				c.log.Warn("rotation lease lost; following")
			}
			return
		case <-tick.C:
		}
	}
}

type keyView struct {
	keyID   string
	cur     registry.Entry
	pending *registry.Entry
}

// Scan runs one pass of the policy. Exported for tests and `dekctl
// rotate`'s immediate delivery; only call it while holding the lease.
func (c *Controller) Scan(ctx context.Context) error {
	now := c.o.Now()
	p := c.o.Policy
	es, err := c.o.Ops.List(ctx)
	if err != nil {
		return err
	}
	byKey := map[string][]registry.Entry{}
	counts := map[dek.State]int{}
	var order []string
	devKeys := map[string]registry.Entry{} // device id -> its current own key
	for _, e := range es {
		counts[e.State]++
		if _, ok := byKey[e.KeyID]; !ok {
			order = append(order, e.KeyID)
		}
		byKey[e.KeyID] = append(byKey[e.KeyID], e)
	}
	for _, st := range []dek.State{dek.StateActive, dek.StateDecryptOnly, dek.StateRevoked, dek.StateShredded} {
		c.o.Metrics.versions.WithLabelValues(string(st)).Set(float64(counts[st]))
	}
	var keys []keyView
	for _, id := range order {
		if strings.HasPrefix(id, pseudonymKeyPrefix) {
			continue // no device holds it: rotated by the operator (dekctl pseudonym rotate)
		}
		var kv keyView
		kv.keyID = id
		found := false
		for i, e := range byKey[id] { // oldest first
			if e.State != dek.StateActive {
				continue
			}
			if e.Rotation.Pending {
				kv.pending = &byKey[id][i]
				continue
			}
			kv.cur, found = e, true
		}
		if !found {
			continue
		}
		keys = append(keys, kv)
		if d := deviceOfKey(id); d != "" {
			devKeys[d] = kv.cur
		}
	}

	// 1. Revoke what has served its grace period.
	outs, err := c.o.Ops.RevokeExpired(ctx, es)
	for _, o := range outs {
		if o.Changed {
			c.o.Metrics.revoked.Inc()
			c.log.Info("rotation version revoked", zap.String("key_id", o.Ref.KeyID), zap.String("key_version", o.Ref.Version),
				zap.String("reason", "grace period after its successor's adoption is over"))
		}
	}
	if err != nil {
		c.o.Metrics.failures.WithLabelValues("revoke").Inc()
		c.log.Warn("rotation: revoking expired versions failed", zap.Error(err))
	}

	// Forget counted operator rotations that are pending no more.
	c.mu.Lock()
	if len(c.takenUp) > 0 {
		still := map[dek.Ref]bool{}
		for _, kv := range keys {
			if kv.pending != nil {
				still[kv.pending.Ref()] = true
			}
		}
		for ref := range c.takenUp {
			if !still[ref] {
				delete(c.takenUp, ref)
			}
		}
	}
	c.mu.Unlock()

	// 2. Pending rotations: retry, count stragglers and failures.
	var jobs []job
	var stragglers []string
	failing := 0
	pending := 0
	for _, kv := range keys {
		if kv.pending == nil {
			continue
		}
		pending++
		r := kv.pending.Rotation
		if isStraggler(*kv.pending, now, p.RetryInterval) {
			stragglers = append(stragglers, kv.keyID)
		} else if r.RekeyFailures > 0 && r.RekeyFailures == r.RekeyAttempts {
			failing++
		}
		if r.LastRekeyAt.IsZero() || now.Sub(r.LastRekeyAt) >= p.RetryInterval {
			jobs = append(jobs, job{kv: kv, pending: *kv.pending})
		}
	}

	// 3. Pause or resume the rollout.
	paused, why := pauseState(pending, len(stragglers), failing, p)
	c.mu.Lock()
	wasPaused := c.paused
	c.paused = paused
	c.mu.Unlock()
	if paused != wasPaused {
		fields := []zap.Field{zap.String("reason", why), zap.Int("pending", pending),
			zap.Int("stragglers", len(stragglers)), zap.Int("failing", failing)}
		if paused {
			c.log.Error("rotation rollout paused: no new rotation starts until enough devices adopt or deliveries succeed", fields...)
		} else {
			c.log.Info("rotation rollout resumed", fields...)
		}
	}
	c.o.Metrics.paused.Set(b2f(paused))
	c.o.Metrics.pending.Set(float64(pending))
	c.o.Metrics.stragglers.Set(float64(len(stragglers)))

	// 4. Start rotations that are due, within the budget.
	budget := budgetOf(es, len(keys), now, p)
	left := budget.Left()
	type due struct {
		kv      keyView
		trigger string
	}
	var dues []due
	for _, kv := range keys {
		if kv.pending != nil {
			continue
		}
		switch {
		case kv.cur.Rotation.Messages >= p.MessageLimit:
			dues = append(dues, due{kv, keyops.TriggerMessages})
		case now.Sub(kv.cur.CreatedAt) >= p.MaxAge:
			dues = append(dues, due{kv, keyops.TriggerAge})
		}
	}
	sort.SliceStable(dues, func(i, j int) bool { return dues[i].kv.cur.CreatedAt.Before(dues[j].kv.cur.CreatedAt) })
	held := 0
	for _, d := range dues {
		if d.trigger == keyops.TriggerAge {
			if paused || left == 0 {
				held++
				continue
			}
			left--
		}
		jobs = append(jobs, job{kv: d.kv, trigger: d.trigger, versions: byKey[d.kv.keyID], reason: startReason(d.trigger, d.kv.cur, now, p)})
	}
	waiting, until := waitReason(held, paused, why, budgetAfter(es, len(keys), now, p, budget.Left()-left))
	c.noteWaiting(waiting, until, held)

	// 5. Start the rotations and deliver.
	started := c.deliver(ctx, jobs, devKeys)

	// 6. Root key schedule and rewrap.
	c.rootSchedule(ctx, now, es)

	c.mu.Lock()
	c.status = Status{Keys: len(keys), Pending: pending, Stragglers: stragglers, Rotated: started,
		Waiting: waiting, WaitUntil: until, Budget: budget, At: now}
	c.mu.Unlock()
	return ctx.Err()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// waitReason says why held due keys wait, and until when if known.
func waitReason(held int, paused bool, pauseWhy string, b Budget) (string, time.Time) {
	switch {
	case held == 0:
		return "", time.Time{}
	case paused:
		return "rollout paused: " + pauseWhy, time.Time{}
	}
	return fmt.Sprintf("the share per window is spent: %d of %d age-driven rotations started in the window", b.Used, b.Limit), b.NextAt
}

// noteWaiting logs, when it changes, why due keys wait.
func (c *Controller) noteWaiting(reason string, until time.Time, held int) {
	c.mu.Lock()
	changed := reason != c.waiting
	c.waiting = reason
	c.mu.Unlock()
	if !changed || reason == "" {
		return
	}
	fields := []zap.Field{zap.Int("due", held), zap.String("reason", reason)}
	if !until.IsZero() {
		fields = append(fields, zap.String("until", until.UTC().Format(time.RFC3339)))
	}
	c.log.Info("rotation due keys waiting", fields...)
}

type job struct {
	kv       keyView
	pending  registry.Entry
	trigger  string           // set: start the rotation first
	reason   string           // why, in words, for trigger
	versions []registry.Entry // the key's versions, for trigger
}

// deliver runs the jobs on the workers and returns how many rotations it
// started.
func (c *Controller) deliver(ctx context.Context, jobs []job, devKeys map[string]registry.Entry) int {
	var started atomic.Int64
	ch := make(chan job)
	var wg sync.WaitGroup
	for range min(c.o.Workers, max(len(jobs), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range ch {
				if j.trigger != "" {
					e, created, err := c.o.Ops.RotateKeyFrom(ctx, j.kv.keyID, j.versions, j.trigger, "policy: "+j.reason)
					if err != nil {
						c.o.Metrics.failures.WithLabelValues("rotate").Inc()
						c.log.Warn("rotation: starting a rotation failed", zap.String("key_id", j.kv.keyID), zap.Error(err))
						continue
					}
					if created {
						started.Add(1)
						c.startedLog(e, j.trigger, j.reason)
					}
					j.pending = e
				} else if j.pending.Rotation.Trigger == keyops.TriggerOperator && j.pending.Rotation.RekeyAttempts == 0 && c.takeUp(j.pending.Ref()) {
					// Started by dekctl rotate, which only writes the
					// registry: counted and logged once, when the leader
					// takes it up for its first delivery.
					c.startedLog(j.pending, keyops.TriggerOperator, startReason(keyops.TriggerOperator, j.kv.cur, c.o.Now(), c.o.Policy))
				}
				c.sendJob(ctx, j, devKeys)
			}
		}()
	}
	for _, j := range jobs {
		select {
		case ch <- j:
		case <-ctx.Done():
		}
	}
	close(ch)
	wg.Wait()
	return int(started.Load())
}

// takeUp reports whether ref was not counted yet, and marks it counted.
func (c *Controller) takeUp(ref dek.Ref) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.takenUp[ref] {
		return false
	}
	if c.takenUp == nil {
		c.takenUp = map[dek.Ref]bool{}
	}
	c.takenUp[ref] = true
	return true
}

// startedLog counts a rotation started and writes its info line.
func (c *Controller) startedLog(e registry.Entry, trigger, reason string) {
	c.o.Metrics.rotationsStarted.WithLabelValues(trigger).Inc()
	c.log.Info("rotation started", zap.String("key_id", e.KeyID), zap.String("key_version", e.Version),
		zap.String("supersedes", e.Rotation.Supersedes), zap.String("trigger", trigger), zap.String("reason", reason))
}

// sendJob sends the pending version's rekey to its device, or to every
// group member that has not adopted it, and records the attempt.
func (c *Controller) sendJob(ctx context.Context, j job, devKeys map[string]registry.Entry) {
	type target struct {
		device string
		wrap   registry.Entry
	}
	var ts []target
	if d := deviceOfKey(j.kv.keyID); d != "" {
		ts = append(ts, target{d, j.kv.cur})
	} else {
		for _, d := range j.pending.Devices {
			if contains(j.pending.Rotation.AdoptedBy, d) {
				continue
			}
			w, ok := devKeys[d]
			if !ok {
				w = j.kv.cur // a member without a key of its own holds the group's
			}
			ts = append(ts, target{d, w})
		}
	}
	if len(ts) == 0 {
		return
	}
	newKey, err := c.o.Ops.UnwrapForRekey(ctx, j.pending, ts[0].device)
	failed := false
	if err != nil {
		failed = true
		c.log.Warn("rotation: unwrapping the new version failed", zap.String("key_id", j.kv.keyID), zap.Error(err))
	} else {
		for _, t := range ts {
			if err := c.sendOne(ctx, j.pending, newKey, t.device, t.wrap); err != nil {
				failed = true
				c.log.Warn("rotation: rekey delivery failed", zap.String("key_id", j.kv.keyID), zap.String("device_id", t.device), zap.Error(err))
			} else {
				c.log.Info("rotation rekey sent", zap.String("key_id", j.kv.keyID), zap.String("key_version", j.pending.Version),
					zap.String("device_id", t.device), zap.String("sealed_under", t.wrap.KeyID+"@"+t.wrap.Version),
					zap.Int("attempt", j.pending.Rotation.RekeyAttempts+1))
			}
		}
		clear(newKey)
	}
	if failed {
		c.o.Metrics.rekeysFailed.Inc()
		c.o.Metrics.failures.WithLabelValues("rekey").Inc()
	}
	if err := c.o.Ops.NoteRekey(context.WithoutCancel(ctx), j.pending.Ref(), failed); err != nil {
		c.log.Warn("rotation: recording a rekey attempt failed", zap.Error(err))
	}
}

func (c *Controller) sendOne(ctx context.Context, pending registry.Entry, newKey []byte, deviceID string, wrap registry.Entry) error {
	// The generation (docs/rekey-v1.md, amendment 1) lets the device refuse
	// a replayed older rekey: rotation names versions v<N>, N counting up.
	gen, ok := rekey.GenerationOf(pending.Version)
	if !ok {
		return fmt.Errorf("%s: version name carries no generation (want v<N>)", pending.Ref())
	}
	wk, err := c.o.Ops.UnwrapForRekey(ctx, wrap, deviceID)
	if err != nil {
		return err
	}
	aead, err := gcm(wk)
	clear(wk)
	if err != nil {
		return err
	}
	h := rekey.Header{DeviceID: deviceID, KeyID: pending.KeyID, NewVersion: pending.Version,
		WrapKeyID: wrap.KeyID, WrapKeyVersion: wrap.Version, Generation: gen}
	msg, err := rekey.Seal(c.o.Rand, aead, h, newKey, c.o.Now())
	if err != nil {
		return err
	}
	topic := rekey.Topic(c.o.TopicPattern, c.o.DeviceType, deviceID)
	if err := c.o.Publisher.Publish(ctx, topic, msg); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	c.o.Metrics.rekeysSent.Inc()
	return nil
}

func gcm(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// rootSchedule rotates the root key when its policy age is reached, and
// runs (or resumes) the rewrap of every DEK after it, counting failures.
func (c *Controller) rootSchedule(ctx context.Context, now time.Time, es []registry.Entry) {
	if c.o.RootState == nil || c.o.Policy.RootRotationOff {
		return
	}
	var last time.Time
	var rewrapPending bool
	var err error
	if l, ok := c.o.RootState.(entriesLoader); ok {
		last, rewrapPending, err = l.LoadFrom(ctx, es)
	} else {
		last, rewrapPending, err = c.o.RootState.Load(ctx)
	}
	if err != nil {
		c.log.Warn("rotation: reading the root rotation state failed", zap.Error(err))
		return
	}
	if last.IsZero() {
		// First run: the schedule starts now.
		_ = c.o.RootState.Save(ctx, now, false)
		c.o.Metrics.rootKeyAge.Set(0)
		return
	}
	c.o.Metrics.rootKeyAge.Set(now.Sub(last).Seconds())
	if now.Sub(last) >= c.o.Policy.RootMaxAge {
		if _, err := c.o.Ops.RootRotate(ctx, c.o.RootKeyID); err != nil {
			c.o.Metrics.failures.WithLabelValues("root_rotate").Inc()
			c.log.Error("rotation: root key rotation failed", zap.Error(err))
			return
		}
		c.log.Info("rotation: root key rotated; rewrapping every DEK")
		last, rewrapPending = now, true
		c.o.Metrics.rootKeyAge.Set(0)
		if err := c.o.RootState.Save(ctx, last, true); err != nil {
			c.log.Error("rotation: saving the root rotation state failed", zap.Error(err))
		}
	}
	if !rewrapPending {
		return
	}
	res, err := c.RewrapNow(ctx)
	if err != nil {
		c.log.Error("rotation: rewrap after root rotation incomplete; retried next scan",
			zap.Int("failed", len(res.Failures)), zap.Int("rewrapped", res.Rewrapped), zap.Error(err))
		return
	}
	_ = c.o.RootState.Save(ctx, last, false)
}

// RewrapNow runs the (resumable) rewrap once and counts its failures in
// the metrics.
func (c *Controller) RewrapNow(ctx context.Context) (keyops.RewrapResult, error) {
	res, err := c.o.Ops.Rewrap(ctx, nil)
	if n := len(res.Failures); n > 0 {
		c.o.Metrics.rewrapFailures.Add(float64(n))
		c.o.Metrics.failures.WithLabelValues("rewrap").Inc()
	}
	c.o.Metrics.rewrapFailing.Set(b2f(err != nil))
	return res, err
}

// pseudonymKeyPrefix starts the ids of pseudonymization keys (package
// pseudonym), which no device uses: device key rotation leaves them alone.
const pseudonymKeyPrefix = "pseudonym/"

// KeyIDsOf names what `dekctl rotate` selects: a device's key, a group's,
// or every key with an active version (pseudonymization keys excepted).
func KeyIDsOf(es []registry.Entry, device, group string, all bool) []string {
	seen := map[string]bool{}
	var out []string
	for _, e := range es {
		if e.State != dek.StateActive || seen[e.KeyID] || strings.HasPrefix(e.KeyID, pseudonymKeyPrefix) {
			continue
		}
		if all || (device != "" && e.KeyID == dek.DeviceKeyID(device)) || (group != "" && e.KeyID == "group/"+strings.TrimPrefix(group, "group/")) {
			seen[e.KeyID] = true
			out = append(out, e.KeyID)
		}
	}
	return out
}
