package keyops

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
)

// List returns every entry, ordered by key id then creation time. Needs
// Registry.
func (op *Ops) List(ctx context.Context) ([]registry.Entry, error) {
	if err := op.needRegistry(); err != nil {
		return nil, err
	}
	es, err := op.o.Registry.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list registry: %w", err)
	}
	return es, nil
}

// KeyInfo is an entry as `dekctl list --json` shows it: no ciphertext.
type KeyInfo struct {
	KeyID          string    `json:"key_id"`
	Version        string    `json:"key_version"`
	State          dek.State `json:"state"`
	RootKeyID      string    `json:"root_key_id,omitempty"`
	RootKeyVersion string    `json:"root_key_version,omitempty"`
	Devices        []string  `json:"devices"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`
	StateChangedAt time.Time `json:"state_changed_at"`
}

// Info describes e without its ciphertext.
func Info(e registry.Entry) KeyInfo {
	devs := e.Devices
	if devs == nil {
		devs = []string{}
	}
	return KeyInfo{
		KeyID: e.KeyID, Version: e.Version, State: e.State,
		RootKeyID: e.Wrapped.RootKeyID, RootKeyVersion: e.Wrapped.RootKeyVersion,
		Devices: devs, CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt, StateChangedAt: e.StateChangedAt,
	}
}

// WriteJSON writes the entries as a JSON array of KeyInfo.
func WriteJSON(w io.Writer, es []registry.Entry) error {
	out := make([]KeyInfo, len(es))
	for i, e := range es {
		out[i] = Info(e)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// WriteTable writes the entries as an aligned table: key id, version, state,
// root key/version, devices count, created.
func WriteTable(w io.Writer, es []registry.Entry) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY ID\tVERSION\tSTATE\tROOT KEY\tDEVICES\tCREATED")
	for _, e := range es {
		root := "-"
		if e.Wrapped.RootKeyID != "" {
			root = e.Wrapped.RootKeyID + "/" + e.Wrapped.RootKeyVersion
		}
		devs := strconv.Itoa(len(e.Devices))
		if dek.IsDeviceKeyID(e.KeyID) && len(e.Devices) == 0 {
			devs = "-" // a device's own key: only that device
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.KeyID, e.Version, e.State, root, devs,
			e.CreatedAt.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

// Outcome is what an operation did to one key version.
type Outcome struct {
	Ref    dek.Ref
	Before dek.State
	After  dek.State
	// Changed is false when the version already was in the target state
	// (or, for a revoke, shredded): nothing was written.
	Changed bool
	// WrappedSHA256 is, for a shred, the hex SHA-256 of the destroyed
	// wrapped DEK (the ciphertext), which the audit event also records.
	WrappedSHA256 string
	Err           error
}

// Revoke revokes the selected versions (a device's versions, a key's, or
// one): messages under them fail with key_revoked once the daemons' caches
// see the change (the registry's change feed). The wrapped DEK is kept, so
// a mistaken revoke can be undone. Versions already revoked or shredded are
// left as they are. Needs Registry, Audit.
func (op *Ops) Revoke(ctx context.Context, sel Selector) ([]Outcome, error) {
	if err := op.needRegistry(); err != nil {
		return nil, err
	}
	es, err := op.selectEntries(ctx, sel)
	if err != nil {
		return nil, err
	}
	var outs []Outcome
	var errs []error
	for _, e := range es {
		out := Outcome{Ref: e.Ref(), Before: e.State, After: e.State}
		if e.State == dek.StateRevoked || e.State == dek.StateShredded {
			outs = append(outs, out)
			continue
		}
		start := op.o.Now()
		got, err := op.o.Registry.Update(ctx, e.KeyID, e.Version, func(cur *registry.Entry) error {
			out.Before = cur.State
			if cur.State != dek.StateShredded {
				cur.State = dek.StateRevoked
			}
			return nil
		})
		if err == nil {
			out.After, out.Changed = got.State, got.State != out.Before
		} else {
			got = e
		}
		aerr := op.record(ctx, audit.ActionRevoke, e.Ref(), got.Wrapped, start, err, "was "+string(out.Before))
		out.Err = joinAudit(err, aerr)
		if out.Err != nil {
			errs = append(errs, fmt.Errorf("revoke %s: %w", e.Ref(), out.Err))
		}
		outs = append(outs, out)
	}
	return outs, errors.Join(errs...)
}

// Shred crypto-shreds the selected versions: the wrapped DEK is destroyed
// (its bytes zeroed, the entry a tombstone in state shredded that keeps the
// name, the root key that had wrapped it and the time), so no message under
// it can ever be decrypted again, by anyone. Daemons drop the key from their
// caches on the change event. The audit event records the SHA-256 of the
// destroyed ciphertext. There is no way back. Needs Registry, Audit.
func (op *Ops) Shred(ctx context.Context, sel Selector) ([]Outcome, error) {
	if err := op.needRegistry(); err != nil {
		return nil, err
	}
	es, err := op.selectEntries(ctx, sel)
	if err != nil {
		return nil, err
	}
	var outs []Outcome
	var errs []error
	for _, e := range es {
		out := Outcome{Ref: e.Ref(), Before: e.State, After: e.State}
		if e.State == dek.StateShredded {
			outs = append(outs, out)
			continue
		}
		start := op.o.Now()
		got, err := op.o.Registry.Update(ctx, e.KeyID, e.Version, func(cur *registry.Entry) error {
			out.Before = cur.State
			if cur.State == dek.StateShredded {
				return nil
			}
			sum := sha256.Sum256(cur.Wrapped.Ciphertext)
			out.WrappedSHA256 = hex.EncodeToString(sum[:])
			clear(cur.Wrapped.Ciphertext)
			cur.Wrapped.Ciphertext = nil
			cur.State = dek.StateShredded
			return nil
		})
		if err == nil {
			out.After, out.Changed = got.State, got.State != out.Before
		} else {
			got = e
			out.WrappedSHA256 = ""
		}
		if err == nil && !out.Changed {
			// Shredded by someone else between our read and our update.
			outs = append(outs, out)
			continue
		}
		detail := "was " + string(out.Before)
		if out.WrappedSHA256 != "" {
			detail += " wrapped_sha256=" + out.WrappedSHA256
		}
		aerr := op.record(ctx, audit.ActionShred, e.Ref(), got.Wrapped, start, err, detail)
		out.Err = joinAudit(err, aerr)
		if out.Err != nil {
			errs = append(errs, fmt.Errorf("shred %s: %w", e.Ref(), out.Err))
		}
		outs = append(outs, out)
	}
	return outs, errors.Join(errs...)
}

// VerifyAudit checks the audit log's hash chain from r: the number of lines
// that verified, and a *audit.ChainError (naming the line) when it is broken.
func VerifyAudit(r io.Reader) (int, error) { return audit.Verify(r) }
