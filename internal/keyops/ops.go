package keyops

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// Registry is what keyops needs of the DEK registry; registry.Store
// satisfies it.
type Registry interface {
	Get(ctx context.Context, keyID, version string) (registry.Entry, error)
	Create(ctx context.Context, e registry.Entry) error
	Update(ctx context.Context, keyID, version string, fn func(*registry.Entry) error) (registry.Entry, error)
	List(ctx context.Context) ([]registry.Entry, error)
}

// Auditor appends one event to the audit log; *audit.Writer satisfies it.
type Auditor interface {
	Append(ctx context.Context, e audit.Event) (audit.Event, error)
}

// Options wire an Ops. Which fields an operation needs is said on it; a
// missing one fails that operation, not New.
type Options struct {
	KMS      kms.Provider    // provision, import, rewrap
	Roots    kms.RootManager // root create/rotate/list; rewrap's newest-version lookup (optional there)
	Registry Registry        // every key operation
	Audit    Auditor         // every operation that changes something (required)
	// Operator names who ran the operation (e.g. "alice@host"); added to
	// every event's detail. Optional.
	Operator string
	// Rand is the source of new DEKs (default crypto/rand.Reader).
	Rand io.Reader
	// Now is the clock (default time.Now).
	Now func() time.Time
	// RewrapWorkers is how many rewraps run at once (default 4).
	RewrapWorkers int
	// ProvisionWorkers is how many KMS calls and registry writes
	// ProvisionMany runs at once (default 16).
	ProvisionWorkers int
}

// Ops runs key operations.
type Ops struct {
	o Options
}

// New returns an Ops. Audit is required: no key operation goes unrecorded.
func New(o Options) (*Ops, error) {
	if o.Audit == nil {
		return nil, errors.New("keyops: Options.Audit is required")
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.RewrapWorkers <= 0 {
		o.RewrapWorkers = 4
	}
	return &Ops{o: o}, nil
}

// Errors callers switch on (dekctl's exit codes).
var (
	// ErrInvalidArgument: a name outside its alphabet, a missing or
	// conflicting argument, an import file that does not validate.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: no key version matches.
	ErrNotFound = errors.New("not found")
)

// DEKSize is the size of a DEK (AES-256).
const DEKSize = 32

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidArgument, fmt.Sprintf(format, args...))
}

func (op *Ops) needRegistry() error {
	if op.o.Registry == nil {
		return errors.New("keyops: no registry configured")
	}
	return nil
}

func (op *Ops) needKMS() error {
	if op.o.KMS == nil {
		return errors.New("keyops: no KMS configured")
	}
	return op.needRegistry()
}

// record appends one event. start, when set, gives its duration.
func (op *Ops) record(ctx context.Context, action audit.Action, ref dek.Ref, w kms.Wrapped, start time.Time, err error, detail string) error {
	if op.o.Operator != "" {
		if detail != "" {
			detail += " "
		}
		detail += "operator=" + op.o.Operator
	}
	ev := audit.Event{
		Time:           op.o.Now(),
		Action:         action,
		KeyID:          ref.KeyID,
		KeyVersion:     ref.Version,
		RootKeyID:      w.RootKeyID,
		RootKeyVersion: w.RootKeyVersion,
		Result:         audit.ResultOf(err),
		Detail:         detail,
	}
	if !start.IsZero() {
		ev.DurationMS = audit.Millis(op.o.Now().Sub(start))
	}
	// The event is recorded even when the caller's context has ended: an
	// operation that happened must not go unrecorded because of Ctrl-C.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if _, aerr := op.o.Audit.Append(actx, ev); aerr != nil {
		return fmt.Errorf("audit %s %s: %w", action, ref, aerr)
	}
	return nil
}

// joinAudit returns err, or the audit error when err is nil, or both.
func joinAudit(err, aerr error) error {
	if aerr == nil {
		return err
	}
	if err == nil {
		return aerr
	}
	return errors.Join(err, aerr)
}

// versionsOf returns the entries of keyID, oldest first.
func (op *Ops) versionsOf(ctx context.Context, keyID string) ([]registry.Entry, error) {
	all, err := op.o.Registry.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list registry: %w", err)
	}
	var out []registry.Entry
	for _, e := range all {
		if e.KeyID == keyID {
			out = append(out, e)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

// nextVersion names a key's next version "v<N+1>", N being the highest
// "v<digits>" version it has ever had (tombstones included, so a shredded
// version's name is never reused). Versions named otherwise (imported
// "2026-q4") do not count.
func nextVersion(es []registry.Entry) string {
	max := 0
	for _, e := range es {
		if n, ok := vNumber(e.Version); ok && n > max {
			max = n
		}
	}
	return "v" + strconv.Itoa(max+1)
}

func vNumber(v string) (int, bool) {
	if !strings.HasPrefix(v, "v") || len(v) < 2 || len(v) > 10 {
		return 0, false
	}
	n, err := strconv.Atoi(v[1:])
	if err != nil || n < 0 || v[1] == '+' || v[1] == '-' {
		return 0, false
	}
	return n, true
}

// Selector picks key versions: one version (KeyID and Version), every
// version of a key (KeyID), or every version of a device's own key
// (DeviceID: device/<id>).
type Selector struct {
	DeviceID string
	KeyID    string
	Version  string
}

func (s Selector) check() error {
	switch {
	case s.DeviceID != "" && (s.KeyID != "" || s.Version != ""):
		return invalid("give a device id or a key id (and version), not both")
	case s.DeviceID != "":
		if !registry.ValidDeviceID(s.DeviceID) {
			return invalid("device id %q: want %s", clip(s.DeviceID), dek.DeviceIDAlphabet)
		}
	case s.KeyID != "":
		if !registry.ValidKeyID(s.KeyID) {
			return invalid("key id %q: want %s", clip(s.KeyID), dek.KeyIDAlphabet)
		}
		if s.Version != "" && !registry.ValidKeyVersion(s.Version) {
			return invalid("key version %q: want %s", clip(s.Version), dek.KeyVersionAlphabet)
		}
	case s.Version != "":
		return invalid("a version needs its key id")
	default:
		return invalid("give a device id or a key id")
	}
	return nil
}

func (s Selector) String() string {
	switch {
	case s.DeviceID != "":
		return "device " + s.DeviceID
	case s.Version != "":
		return dek.Ref{KeyID: s.KeyID, Version: s.Version}.String()
	}
	return "key " + s.KeyID
}

// selectEntries returns the entries s names, or ErrNotFound.
func (op *Ops) selectEntries(ctx context.Context, s Selector) ([]registry.Entry, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if s.Version != "" {
		e, err := op.o.Registry.Get(ctx, s.KeyID, s.Version)
		if errors.Is(err, registry.ErrNotFound) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, s)
		}
		if err != nil {
			return nil, fmt.Errorf("get %s: %w", s, err)
		}
		return []registry.Entry{e}, nil
	}
	keyID := s.KeyID
	if s.DeviceID != "" {
		keyID = dek.DeviceKeyID(s.DeviceID)
	}
	es, err := op.versionsOf(ctx, keyID)
	if err != nil {
		return nil, err
	}
	if len(es) == 0 {
		return nil, fmt.Errorf("%w: no versions of %s", ErrNotFound, keyID)
	}
	return es, nil
}

// clip bounds user text quoted in an error.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
