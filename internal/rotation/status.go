package rotation

import (
	"fmt"
	"sort"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
)

// FleetStatus is the fleet's rotation state as the registry records it
// (what `dekctl rotation status` shows). Keys are counted once each: a key
// with a pending rotation is pending or a straggler, otherwise current.
type FleetStatus struct {
	At time.Time `json:"at"`
	// Keys: keys with an active version.
	Keys       int `json:"keys"`
	Current    int `json:"current"`
	Pending    int `json:"pending"`
	Stragglers int `json:"stragglers"`
	// Due: current keys whose version is at or past the policy's max age
	// or message limit (their rotation starts within the budget).
	Due int `json:"due"`
	// Versions counts DEK versions by state (active, decrypt_only,
	// revoked, shredded).
	Versions map[string]int `json:"versions"`
	// Ages is the distribution of the current versions' ages: ten buckets
	// of a tenth of MaxAge each, then one for MaxAge and older.
	Ages   []AgeBucket   `json:"ages"`
	MaxAge time.Duration `json:"-"`
	// StragglerKeys names the stragglers (sorted).
	StragglerKeys []string `json:"straggler_keys,omitempty"`
	// DueByAge are the Due keys whose rotation the budget and the pause
	// hold back (those due by the message limit start regardless).
	DueByAge int `json:"due_by_age"`
	// Budget is the share per window as the registry records it.
	Budget Budget `json:"budget"`
	// Paused: the rollout pauses itself by the controller's rule
	// (PauseReason says why, or why not).
	Paused      bool   `json:"paused"`
	PauseReason string `json:"pause_reason"`
	// Waiting says why due keys wait ("" when none does), and WaitUntil
	// until when (zero while a pause lasts: until devices adopt).
	Waiting   string    `json:"waiting,omitempty"`
	WaitUntil time.Time `json:"wait_until,omitzero"`
}

// AgeBucket is one bar of the age distribution: ages in [From, To), or
// From and older when To is zero.
type AgeBucket struct {
	Label       string  `json:"label"`
	FromSeconds float64 `json:"from_seconds"`
	ToSeconds   float64 `json:"to_seconds,omitempty"`
	Count       int     `json:"count"`
}

// AgeBuckets is the number of buckets in FleetStatus.Ages.
const AgeBuckets = 11

// isStraggler is the controller's rule: a pending version not adopted
// after its first retry.
func isStraggler(pending registry.Entry, now time.Time, retry time.Duration) bool {
	return now.Sub(pending.CreatedAt) > retry && pending.Rotation.RekeyAttempts > 1
}

// Summarize computes the fleet's status from the registry's entries at
// now under policy p (zero fields: defaults).
func Summarize(es []registry.Entry, now time.Time, p Policy) (FleetStatus, error) {
	p, err := p.WithDefaults()
	if err != nil {
		return FleetStatus{}, err
	}
	st := FleetStatus{At: now, MaxAge: p.MaxAge, Versions: map[string]int{}}
	for _, s := range []dek.State{dek.StateActive, dek.StateDecryptOnly, dek.StateRevoked, dek.StateShredded} {
		st.Versions[string(s)] = 0
	}
	width := p.MaxAge / 10
	for i := range AgeBuckets {
		b := AgeBucket{FromSeconds: (width * time.Duration(i)).Seconds()}
		if i < AgeBuckets-1 {
			b.ToSeconds = (width * time.Duration(i+1)).Seconds()
			b.Label = ShortDuration(width*time.Duration(i)) + "-" + ShortDuration(width*time.Duration(i+1))
		} else {
			b.Label = ">=" + ShortDuration(p.MaxAge)
		}
		st.Ages = append(st.Ages, b)
	}

	type view struct {
		cur     *registry.Entry
		pending *registry.Entry
	}
	keys := map[string]*view{}
	for i := range es { // ordered by key id, then creation: the last active wins
		e := &es[i]
		st.Versions[string(e.State)]++
		if e.State != dek.StateActive {
			continue
		}
		v := keys[e.KeyID]
		if v == nil {
			v = &view{}
			keys[e.KeyID] = v
		}
		if e.Rotation.Pending {
			v.pending = e
		} else {
			v.cur = e
		}
	}
	failing := 0
	for id, v := range keys {
		if v.cur == nil {
			continue // only a pending version: not a rotation this tool made
		}
		st.Keys++
		switch {
		case v.pending != nil && isStraggler(*v.pending, now, p.RetryInterval):
			st.Stragglers++
			st.StragglerKeys = append(st.StragglerKeys, id)
		case v.pending != nil:
			st.Pending++
			if r := v.pending.Rotation; r.RekeyFailures > 0 && r.RekeyFailures == r.RekeyAttempts {
				failing++
			}
		default:
			st.Current++
			switch {
			case v.cur.Rotation.Messages >= p.MessageLimit:
				st.Due++
			case now.Sub(v.cur.CreatedAt) >= p.MaxAge:
				st.Due++
				st.DueByAge++
			}
		}
		age := max(now.Sub(v.cur.CreatedAt), 0)
		i := int(age / width)
		if width <= 0 || i >= AgeBuckets-1 {
			i = AgeBuckets - 1
		}
		st.Ages[i].Count++
	}
	sort.Strings(st.StragglerKeys)
	st.Budget = budgetOf(es, st.Keys, now, p)
	st.Paused, st.PauseReason = pauseState(st.Pending+st.Stragglers, st.Stragglers, failing, p)
	switch left := st.Budget.Left(); {
	case st.DueByAge == 0:
	case st.Paused:
		st.Waiting = "rollout paused: " + st.PauseReason + "; resumes once enough of them adopt or their deliveries succeed"
	case left == 0:
		st.Waiting = fmt.Sprintf("the share per window is spent (share_per_day): %d of %d age-driven rotations started in the last %s",
			st.Budget.Used, st.Budget.Limit, ShortDuration(p.ShareWindow))
		st.WaitUntil = st.Budget.NextAt
	case st.DueByAge > left:
		after := budgetAfter(es, st.Keys, now, p, left)
		st.Waiting = fmt.Sprintf("%d of the %d due start at the leader's next scan; the share per window (share_per_day) allows %d more, %d of %d used in the last %s",
			left, st.DueByAge, left, st.Budget.Used, st.Budget.Limit, ShortDuration(p.ShareWindow))
		st.WaitUntil = after.NextAt
	}
	return st, nil
}

// ShortDuration writes d in its largest whole unit: 3d, 12h, 30m, 45s
// (or Go's form when no unit divides it).
func ShortDuration(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	case d%time.Second == 0:
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return d.String()
}
