package keyops

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
)

// BatchAuditor is an Auditor that can also append many events at once (one
// fsync for the lot); *audit.Writer is one. ProvisionMany uses it when the
// Auditor has it.
type BatchAuditor interface {
	AppendMany(ctx context.Context, es []audit.Event) ([]audit.Event, error)
}

// Audit details, worded as Provision words them for a single device.
func provisionWhy(v *newVersion) string {
	switch {
	case v.devices == nil:
		d, _ := dek.DeviceOfKeyID(v.ref.KeyID)
		return "device " + d
	case len(v.devices) == 1:
		return "group created for device " + v.devices[0]
	}
	return "group created for " + countOf(len(v.devices), "device")
}

func devicesWhy(add []string) string {
	if len(add) == 1 {
		return "device " + add[0] + " added"
	}
	return countOf(len(add), "device") + " added"
}

func exportWhy(j *groupJoin) string {
	if len(j.requested) == 1 {
		return "exported in a credential for device " + j.requested[0]
	}
	return "exported in credentials for " + countOf(len(j.requested), "device")
}

func countOf(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// newEvent builds one audit event as record does (operator in the detail,
// duration from start).
func (op *Ops) newEvent(action audit.Action, ref dek.Ref, w kms.Wrapped, start time.Time, err error, detail string) audit.Event {
	if op.o.Operator != "" {
		if detail != "" {
			detail += " "
		}
		detail += "operator=" + op.o.Operator
	}
	now := op.o.Now()
	ev := audit.Event{
		Time: now, Action: action, KeyID: ref.KeyID, KeyVersion: ref.Version,
		RootKeyID: w.RootKeyID, RootKeyVersion: w.RootKeyVersion,
		Result: audit.ResultOf(err), Detail: detail,
	}
	if !start.IsZero() {
		ev.DurationMS = audit.Millis(now.Sub(start))
	}
	return ev
}

// appendEvents records events, in one AppendMany when the Auditor has it,
// even when ctx has ended (see record).
func (op *Ops) appendEvents(ctx context.Context, events []audit.Event) error {
	if len(events) == 0 {
		return nil
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if ba, ok := op.o.Audit.(BatchAuditor); ok {
		if _, err := ba.AppendMany(actx, events); err != nil {
			return fmt.Errorf("audit %d events: %w", len(events), err)
		}
		return nil
	}
	for _, ev := range events {
		if _, err := op.o.Audit.Append(actx, ev); err != nil {
			return fmt.Errorf("audit %s %s@%s: %w", ev.Action, ev.KeyID, ev.KeyVersion, err)
		}
	}
	return nil
}

// parallel runs fn(ctx, 0..n-1), ProvisionWorkers at a time, and returns
