package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/rotation"
)

// rotate starts rotations now: the next version of each selected key is
// created active and pending; the running daemon's rotation controller
// delivers it to the device(s) at its next scan.
func (c *cli) rotate(ctx context.Context, args []string) error {
	fs := c.flags("rotate")
	device := fs.String("device", "", "rotate the key of device ID")
	group := fs.String("group", "", "rotate the group key group/NAME")
	all := fs.Bool("all", false, "rotate every key that has an active version")
	if err := parse(fs, args); err != nil {
		return err
	}
	n := 0
	for _, set := range []bool{*device != "", *group != "", *all} {
		if set {
			n++
		}
	}
	if n != 1 {
		return usagef("rotate: give exactly one of --device ID, --group NAME or --all")
	}
	what := "every key"
	switch {
	case *device != "":
		if !registry.ValidDeviceID(*device) {
			return usagef("rotate: device id %q: want %s", clipArg(*device), dek.DeviceIDAlphabet)
		}
		what = "device " + *device
	case *group != "":
		if !registry.ValidKeyID("group/" + strings.TrimPrefix(*group, "group/")) {
			return usagef("rotate: group %q: not a valid key name", clipArg(*group))
		}
		what = "group " + *group
	}
	return c.withOps(ctx, need{kms: true, registry: true}, false, func(w *wired) error {
		es, err := w.ops.List(ctx)
		if err != nil {
			return err
		}
		ids := rotation.KeyIDsOf(es, *device, *group, *all)
		if len(ids) == 0 {
			return fmt.Errorf("rotate: %w: no active key version for %s", keyops.ErrNotFound, what)
		}
		byKey := map[string][]registry.Entry{}
		for _, e := range es {
			byKey[e.KeyID] = append(byKey[e.KeyID], e)
		}
		type result struct {
			e       registry.Entry
			created bool
			err     error
		}
		results := make([]result, len(ids))
		var wg sync.WaitGroup
		next := make(chan int)
		for range min(8, len(ids)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					e, created, err := w.ops.RotateKeyFrom(ctx, ids[i], byKey[ids[i]], keyops.TriggerOperator, "dekctl rotate")
					results[i] = result{e, created, err}
				}
			}()
		}
		for i := range ids {
			next <- i
		}
		close(next)
		wg.Wait()
		started, already := 0, 0
		var errs []error
		for i, r := range results {
			switch {
			case r.err != nil:
				errs = append(errs, fmt.Errorf("%s: %w", ids[i], r.err))
				fmt.Fprintf(c.stdout, "FAILED %s: %v\n", ids[i], r.err)
			case r.created:
				started++
				fmt.Fprintf(c.stdout, "rotating %s: %s created, pending delivery\n", ids[i], r.e.Version)
			default:
				already++
				fmt.Fprintf(c.stdout, "%s: %s already pending (%d deliveries so far)\n", ids[i], r.e.Version, r.e.Rotation.RekeyAttempts)
			}
		}
		fmt.Fprintf(c.stdout, "%d rotations started, %d already pending, %d failed\n", started, already, len(errs))
		if !w.cfg.Rotation.Enabled {
			fmt.Fprintf(c.stderr, "dekctl: note: rotation.enabled is false in %s: no daemon delivers the new versions until it is enabled\n", c.configPath)
		}
		return errors.Join(errs...)
	})
}

func clipArg(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

func (c *cli) rotationCmd(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "status" {
		return usagef("rotation: want status")
	}
	fs := c.flags("rotation status")
	asJSON := fs.Bool("json", false, "JSON output")
	chart := fs.String("chart", "", "also write a PNG bar chart of the key-age distribution to FILE")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	return c.withOps(ctx, need{registry: true}, false, func(w *wired) error {
		es, err := w.ops.List(ctx)
		if err != nil {
			return err
		}
		st, err := rotation.Summarize(es, c.now(), policyOf(w.cfg.Rotation))
		if err != nil {
			return err
		}
		if *chart != "" {
			var buf bytes.Buffer
			if err := writeChart(&buf, st); err != nil {
				return fmt.Errorf("chart: %w", err)
			}
			if err := os.WriteFile(*chart, buf.Bytes(), 0o644); err != nil {
				return fmt.Errorf("chart: %w", err)
			}
		}
		if *asJSON {
			enc := json.NewEncoder(c.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(statusJSON{FleetStatus: st, MaxAgeSeconds: st.MaxAge.Seconds(), Enabled: w.cfg.Rotation.Enabled})
		}
		return writeStatusText(c.stdout, st, w.cfg.Rotation)
	})
}

type statusJSON struct {
	rotation.FleetStatus
	MaxAgeSeconds float64 `json:"max_dek_age_seconds"`
	Enabled       bool    `json:"rotation_enabled"`
}

// policyOf is the part of the daemon's policy the status needs.
func policyOf(r config.Rotation) rotation.Policy {
	return rotation.Policy{MaxAge: r.MaxDEKAge, GracePeriod: r.GracePeriod, RetryInterval: r.RetryInterval,
		MessageLimit: r.MessageLimit, SharePerWindow: r.SharePerDay, ShareWindow: 24 * time.Hour,
		PauseThreshold: r.PauseThreshold, PauseMinSample: r.PauseMinSample}
}

// statusBar is the width of the longest histogram bar.
const statusBar = 40

// writeStatusText prints the status: counts by state, then the current
// versions' age distribution as a text histogram, then the stragglers.
func writeStatusText(w io.Writer, st rotation.FleetStatus, r config.Rotation) error {
	var b strings.Builder
	on := "no"
	if r.Enabled {
		on = "yes"
	}
	fmt.Fprintf(&b, "Fleet key rotation at %s\n", st.At.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "Policy: max DEK age %s, grace %s, retry %s, message limit %d (rotation enabled: %s)\n\n",
		rotation.ShortDuration(r.MaxDEKAge), rotation.ShortDuration(r.GracePeriod), rotation.ShortDuration(r.RetryInterval), r.MessageLimit, on)
	fmt.Fprintf(&b, "Keys          %6d\n", st.Keys)
	fmt.Fprintf(&b, "  current     %6d  (%d due for rotation)\n", st.Current, st.Due)
	fmt.Fprintf(&b, "  pending     %6d\n", st.Pending)
	fmt.Fprintf(&b, "  stragglers  %6d\n", st.Stragglers)
	fmt.Fprintf(&b, "Versions: active %d, decrypt_only %d, revoked %d, shredded %d\n",
		st.Versions["active"], st.Versions["decrypt_only"], st.Versions["revoked"], st.Versions["shredded"])
	fmt.Fprintf(&b, "Share per day: %d of %d age-driven rotations started in the last 24h\n", st.Budget.Used, st.Budget.Limit)
	if st.Paused {
		fmt.Fprintf(&b, "Rollout: PAUSED: %s\n", st.PauseReason)
	} else {
		fmt.Fprintf(&b, "Rollout: running (%s)\n", st.PauseReason)
	}
	switch {
	case st.Due == 0:
	case !r.Enabled:
		fmt.Fprintf(&b, "Due keys wait: rotation.enabled is false, so no daemon starts them\n")
	case st.Waiting != "":
		fmt.Fprintf(&b, "Due keys wait: %s", st.Waiting)
		if !st.WaitUntil.IsZero() {
			fmt.Fprintf(&b, "; next start at %s (in %s)", st.WaitUntil.UTC().Format(time.RFC3339), rotation.ShortDuration(st.WaitUntil.Sub(st.At).Round(time.Minute)))
		}
		b.WriteString("\n")
	default:
		fmt.Fprintf(&b, "Due keys start at the rotation leader's next scan (rotation.tick %s)\n", rotation.ShortDuration(r.Tick))
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "Age of the current versions\n")
	top := 0
	for _, a := range st.Ages {
		top = max(top, a.Count)
	}
	for _, a := range st.Ages {
		n := 0
		if top > 0 {
			n = (a.Count*statusBar + top - 1) / top // a non-empty bucket shows
		}
		fmt.Fprintf(&b, "  %-9s |%-*s| %d\n", a.Label, statusBar, strings.Repeat("#", n), a.Count)
	}
	if len(st.StragglerKeys) > 0 {
		const show = 10
		list := st.StragglerKeys
		more := ""
		if len(list) > show {
			more = fmt.Sprintf(" and %d more", len(list)-show)
			list = list[:show]
		}
		fmt.Fprintf(&b, "\nStragglers: %s%s\n", strings.Join(list, ", "), more)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
