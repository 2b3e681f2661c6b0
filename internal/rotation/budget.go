package rotation

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/registry"
)

// Budget is the policy's share per window as the registry records it: how
// many age-started rotations the window allows (Limit, at least one), how
// many started within the window that ends now (Used), and, when none is
// left, when the oldest of them leaves the window and the next may start
// (NextAt). Rotations started by an operator or by the message limit do
// not count. Read from the registry, the budget is the same for every
// leader, survives restarts and lease handovers, and is what `dekctl
// rotation status` reports.
type Budget struct {
	Limit  int       `json:"limit"`
	Used   int       `json:"used"`
	NextAt time.Time `json:"next_at,omitzero"`
}

// Left is how many age-started rotations may start now.
func (b Budget) Left() int { return max(b.Limit-b.Used, 0) }

// countsAgainstBudget reports whether e is a version an age-driven
// rotation made (a version made before triggers were recorded counts too:
// the budget errs on the side of rotating slower).
func countsAgainstBudget(e registry.Entry) bool {
	switch e.Rotation.Trigger {
	case keyops.TriggerAge:
		return true
	case "":
		return e.Rotation.Supersedes != ""
	}
	return false
}

// budgetOf computes the budget at now for a fleet of keys keys (p has its
// defaults).
func budgetOf(es []registry.Entry, keys int, now time.Time, p Policy) Budget {
	return budgetAfter(es, keys, now, p, 0)
}

// budgetAfter is budgetOf once extra more rotations started at now.
func budgetAfter(es []registry.Entry, keys int, now time.Time, p Policy, extra int) Budget {
	b := Budget{Limit: max(int(math.Floor(p.SharePerWindow*float64(keys)+1e-9)), 1)}
	from := now.Add(-p.ShareWindow)
	var starts []time.Time
	for _, e := range es {
		if countsAgainstBudget(e) && e.CreatedAt.After(from) {
			starts = append(starts, e.CreatedAt)
		}
	}
	for range extra {
		starts = append(starts, now)
	}
	b.Used = len(starts)
	if b.Used >= b.Limit {
		sort.Slice(starts, func(i, j int) bool { return starts[i].Before(starts[j]) })
		b.NextAt = starts[b.Used-b.Limit].Add(p.ShareWindow)
	}
	return b
}

// pauseState is the rollout's pause rule: more than PauseThreshold of the
// pending rotations are stragglers or failed their last delivery, once at
// least PauseMinSample are pending.
func pauseState(pending, stragglers, failing int, p Policy) (paused bool, reason string) {
	ratio := 0.0
	if pending > 0 {
		ratio = float64(stragglers+failing) / float64(pending)
	}
	paused = pending >= p.PauseMinSample && ratio > p.PauseThreshold
	if paused {
		reason = fmt.Sprintf("%d of %d pending rotations are stragglers (%d) or failed delivery (%d), over pause_threshold %g",
			stragglers+failing, pending, stragglers, failing, p.PauseThreshold)
	} else if pending < p.PauseMinSample {
		reason = fmt.Sprintf("%d pending rotations, under pause_min_sample %d", pending, p.PauseMinSample)
	} else {
		reason = fmt.Sprintf("%d of %d pending rotations are stragglers or failed delivery, within pause_threshold %g",
			stragglers+failing, pending, p.PauseThreshold)
	}
	return paused, reason
}

// startReason says in words why a rotation starts (the info log line).
func startReason(trigger string, cur registry.Entry, now time.Time, p Policy) string {
	switch trigger {
	case keyops.TriggerAge:
		return fmt.Sprintf("%s is %s old (max_dek_age %s)", cur.Version, roughly(now.Sub(cur.CreatedAt)), ShortDuration(p.MaxAge))
	case keyops.TriggerMessages:
		return fmt.Sprintf("%d messages decrypted under %s (message_limit %d)", cur.Rotation.Messages, cur.Version, p.MessageLimit)
	case keyops.TriggerOperator:
		return "requested by an operator (dekctl rotate)"
	}
	return trigger
}

// roughly writes an age in whole hours (whole minutes under an hour).
func roughly(d time.Duration) string {
	if d >= time.Hour {
		return ShortDuration(d.Round(time.Hour))
	}
	return ShortDuration(d.Round(time.Minute))
}
