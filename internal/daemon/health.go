package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/health"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// What /healthz and /readyz mean (the package doc and docs/runbooks.md,
// "Health and readiness", say the same):
//
//   - /healthz: 200 while the process serves HTTP, from before the parts
//     are built (a start that waits for PostgreSQL or the KMS is alive)
//     until the server stops. Liveness only: it never fails for a
//     dependency, so that an outage of one does not restart every replica
//     (a restart empties the key cache). Its JSON body says whether the
//     daemon is degraded and why (health.Report), with the phase.
//   - /readyz: 200 only when this replica makes progress for someone:
//     built, every input connected and subscribed, not shutting down, and
//     at least one record sink up. A KMS or registry outage leaves it
//     ready: devices whose keys are cached keep flowing (the others wait,
//     never dead-lettered), and an unready replica would only stall
//     rollouts without helping. Every record sink down, nothing can be
//     delivered for anyone: not ready.

// healthzBody is /healthz's JSON.
type healthzBody struct {
	// Phase: "starting" (building: waiting for PostgreSQL or the KMS, at
	// most), "running" or "stopping".
	Phase string `json:"phase"`
	health.Report
}

func (d *Daemon) phase() string {
	switch {
	case d.stopping.Load():
		return "stopping"
	case !d.built.Load():
		return "starting"
	}
	return "running"
}

func (d *Daemon) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	b, err := json.Marshal(healthzBody{Phase: d.phase(), Report: d.health.Report()})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(append(b, '\n'))
}

func (d *Daemon) serveReadyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	why := d.notReadyReason()
	if why != "" {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, why+"\n")
		return
	}
	_, _ = io.WriteString(w, "ready\n")
}

// notReadyReason says why /readyz fails, or "" when ready.
func (d *Daemon) notReadyReason() string {
	switch {
	case d.stopping.Load():
		return "shutting down"
	case !d.built.Load():
		r := d.health.Report()
		var waiting []string
		for _, c := range []health.Cause{health.Registry, health.KMS} {
			if r.Causes[c].Degraded {
				waiting = append(waiting, string(c))
			}
		}
		if len(waiting) > 0 {
			return "starting: waiting for " + strings.Join(waiting, " and ")
		}
		return "starting"
	}
	if name := d.notReady(); name != "" {
		return name + " not connected and subscribed"
	}
	if d.everySinkDown() {
		return "every sink down: no record can be delivered"
	}
	return ""
}

// everySinkDown: every configured record sink is down (the dead-letter
// sink does not count: it takes no records).
func (d *Daemon) everySinkDown() bool {
	s := d.health.Report().Causes[health.Sink]
	down := 0
	for _, p := range s.Parts {
		if p != DeadLetterSinkName {
			down++
		}
	}
	return len(d.o.Config.Sinks) > 0 && down >= len(d.o.Config.Sinks)
}

// brokerProbe is the broker cause: an input not connected and subscribed
// (before the inputs exist, and while stopping, nothing is claimed).
func (d *Daemon) brokerProbe() (bool, string) {
	if !d.built.Load() || d.stopping.Load() {
		return false, ""
	}
	if name := d.notReady(); name != "" {
		return true, name + " not connected"
	}
	return false, ""
}

// kmsHealth reports every KMS unwrap the key cache makes to the tracker:
// a transient failure (unreachable, 5xx, 429, timeout) marks the KMS
// degraded; any answer (a key, or a refusal) clears it.
type kmsHealth struct {
	keycache.Unwrapper
	h *health.Tracker
}

func (k kmsHealth) Unwrap(ctx context.Context, w kms.Wrapped, aad []string) ([]byte, error) {
	b, err := k.Unwrapper.Unwrap(ctx, w, aad)
	switch {
	case err == nil || !errors.Is(err, kms.ErrTransient):
		k.h.Set(health.KMS, "", false, "")
	case ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded):
		// Not the caller leaving (a cancelled lookup says nothing of the
		// KMS); a deadline is the KMS not answering.
		k.h.Set(health.KMS, "", true, "unreachable")
	}
	return b, err
}

// registryHealth reports the key cache's registry reads and change feed
// to the tracker: a read that fails other than "no such version" marks the
// registry degraded (part "lookup"); a feed that cannot be opened, part
// "changes".
type registryHealth struct {
	registry.Store
	h *health.Tracker
}

func (r registryHealth) Get(ctx context.Context, keyID, version string) (registry.Entry, error) {
	e, err := r.Store.Get(ctx, keyID, version)
	switch {
	case err == nil || errors.Is(err, registry.ErrNotFound) || errors.Is(err, registry.ErrShredded):
		r.h.Set(health.Registry, "lookup", false, "")
	case errors.Is(err, registry.ErrClosed):
	case ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded):
		r.h.Set(health.Registry, "lookup", true, "unreachable")
	}
	return e, err
}

func (r registryHealth) Watch(ctx context.Context) (<-chan registry.Change, error) {
	ch, err := r.Store.Watch(ctx)
	switch {
	case err == nil:
		r.h.Set(health.Registry, "changes", false, "")
	case ctx.Err() == nil && !errors.Is(err, registry.ErrClosed):
		r.h.Set(health.Registry, "changes", true, "change feed unreachable")
	}
	return ch, err
}

// probeKMS asks Key Protect for the configured root key's newest version
// (two reads) before the daemon starts, so that a KMS down at start is
// waited for (retryStart) rather than found by the first device. It
// returns nil when the KMS answered at all, and an error for retryStart to
// wait on (kms.ErrTransient) or to end the start with (kmsPermanent).
func probeKMS(ctx context.Context, cfg config.KMS, p kms.Provider) error {
	rc, ok := p.(kms.RootClock)
	if cfg.Provider != config.ProviderKeyProtect || !ok {
		return nil // the local provider is a file, read by OpenKMS
	}
	_, _, _, err := rc.NewestRootVersion(ctx)
	if err == nil || errors.Is(err, kms.ErrTransient) || kmsPermanent(err) {
		return err
	}
	// Any other refusal is an answer: the KMS is reachable. Unwraps say
	// more, per key.
	return nil
}

// recheckEvery is how often a degraded KMS or registry is asked again
// by the daemon itself. The traffic clears a cause on its next success;
// without traffic (the failing device went quiet, every other key is
// cached) nothing would, and the cause would stay degraded after the
// outage ended.
const recheckEvery = 15 * time.Second

// probeKeyID names no key (registry key ids are device ids): a Get for it
// answers "no such version" from a reachable registry.
const probeKeyID = "decryptd-health-probe"

// recheck runs recheckOnce every recheckEvery until ctx ends.
func (d *Daemon) recheck(ctx context.Context) {
	t := time.NewTicker(recheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.recheckOnce(ctx)
		}
	}
}

// recheckOnce asks a degraded KMS (Key Protect: the root key's newest
// version) and a registry degraded by its lookups (a Get for a key that
// does not exist) whether they answer again, and clears the cause when
// they do. It only clears: failures are the traffic's to report.
func (d *Daemon) recheckOnce(ctx context.Context) {
	r := d.health.Report()
	if r.Causes[health.KMS].Degraded {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if probeKMS(pctx, d.o.Config.KMS, d.parts.kms) == nil {
			d.health.Set(health.KMS, "", false, "")
		}
		cancel()
	}
	if r.Causes[health.Registry].Degraded {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if _, err := d.parts.store.Get(pctx, probeKeyID, "v0"); err == nil || errors.Is(err, registry.ErrNotFound) {
			d.health.Set(health.Registry, "lookup", false, "")
		}
		cancel()
	}
}

// whyUnfinished adds to a shutdown step's error what was degraded at the
// time (messages waiting for keys while the KMS was unreachable, records
// held for a sink that was down), so that the error names what did not
// finish and why rather than only that the deadline passed.
func (d *Daemon) whyUnfinished(err error) error {
	r := d.health.Report()
	var why []string
	for _, c := range health.Causes {
		if s := r.Causes[c]; s.Degraded {
			why = append(why, string(c)+" "+s.Reason)
		}
	}
	if len(why) == 0 {
		return err
	}
	return fmt.Errorf("%w (degraded meanwhile: %s)", err, strings.Join(why, "; "))
}
