package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
)

// KeyProvisioner makes one device's credential; *keyops.Ops (the code
// behind dekctl provision) satisfies it, and so does *Bulk.
type KeyProvisioner interface {
	Provision(ctx context.Context, req keyops.ProvisionRequest) (keyops.Credential, error)
}

// BulkProvisioner makes many credentials at once. Provision uses it when
// its KeyProvisioner also implements it (Bulk does), since one registry
// write per device makes a 100,000-device fleet take hours on the file
// registry.
type BulkProvisioner interface {
	ProvisionMany(ctx context.Context, reqs []keyops.ProvisionRequest) ([]keyops.Credential, error)
}

// ProvisionOptions name the fleet.
type ProvisionOptions struct {
	// Prefix starts every device id (default "sim-"); ids are Prefix and a
	// zero-padded index, e.g. sim-000042.
	Prefix string
	// First is the index of the first device (default 0).
	First int
	// GroupSize, when positive, gives devices group keys instead of keys of
	// their own: consecutive runs of GroupSize devices share
	// group/<Prefix>group-<k>.
	GroupSize int
	// Workers bounds the concurrent Provision calls when the provisioner is
	// not a BulkProvisioner (default 8).
	Workers int
	// Progress, when set, is called now and then with the count done.
	Progress func(done, total int)
}

// DeviceID names the i-th device of a fleet of n.
func DeviceID(prefix string, i, n int) string {
	width := len(strconv.Itoa(max(n-1, 0)))
	width = max(width, 6)
	s := strconv.Itoa(i)
	if len(s) < width {
		s = strings.Repeat("0", width-len(s)) + s
	}
	return prefix + s
}

// Requests lists the provisioning requests of n devices named by opts.
func Requests(n int, opts ProvisionOptions) ([]keyops.ProvisionRequest, error) {
	if n <= 0 {
		return nil, errors.New("fleet: provision needs a positive device count")
	}
	if opts.Prefix == "" {
		opts.Prefix = "sim-"
	}
	last := opts.First + n
	reqs := make([]keyops.ProvisionRequest, n)
	for i := range reqs {
		idx := opts.First + i
		reqs[i].DeviceID = DeviceID(opts.Prefix, idx, last)
		if opts.GroupSize > 0 {
			reqs[i].Group = opts.Prefix + "group-" + strconv.Itoa(idx/opts.GroupSize)
		}
		if !registry.ValidDeviceID(reqs[i].DeviceID) {
			return nil, fmt.Errorf("fleet: device id %q: want %s", reqs[i].DeviceID, dek.DeviceIDAlphabet)
		}
	}
	return reqs, nil
}

// Provision makes credentials for n devices through p: in one call when p
// is a BulkProvisioner, else one Provision per device, opts.Workers at a
// time. On error, the credentials made so far are wiped and the devices
// already provisioned stay in the registry (provisioning them again makes
// a new version). The caller wipes the result (NewFleet does).
func Provision(ctx context.Context, n int, p KeyProvisioner, opts ProvisionOptions) ([]keyops.Credential, error) {
	reqs, err := Requests(n, opts)
	if err != nil {
		return nil, err
	}
	if b, ok := p.(BulkProvisioner); ok {
		creds, err := b.ProvisionMany(ctx, reqs)
		if err != nil {
			return nil, err
		}
		if opts.Progress != nil {
			opts.Progress(len(creds), n)
		}
		return creds, nil
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = 8
	}
	if opts.GroupSize > 0 {
		// keyops adds a device to a group's active version, or creates
		// it: concurrent first members would each create a version.
		workers = 1
	}
	creds := make([]keyops.Credential, n)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next, done atomic.Int64
		wg         sync.WaitGroup
		mu         sync.Mutex
		firstErr   error
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				c, err := p.Provision(ctx, reqs[i])
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("fleet: provision %s: %w", reqs[i].DeviceID, err)
					}
					mu.Unlock()
					cancel()
					return
				}
				creds[i] = c
				if d := done.Add(1); opts.Progress != nil && (d%1000 == 0 || int(d) == n) {
					opts.Progress(int(d), n)
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		for i := range creds {
			creds[i].Wipe()
		}
		return nil, firstErr
	}
	return creds, nil
}

// Registry is what Bulk needs of the DEK registry; registry.Store
// satisfies it. One that also implements registry.BulkCreator (both
// backends do) stores every new entry in one call.
type Registry interface {
	Create(ctx context.Context, e registry.Entry) error
	Update(ctx context.Context, keyID, version string, fn func(*registry.Entry) error) (registry.Entry, error)
	List(ctx context.Context) ([]registry.Entry, error)
}

// keyopsRegistry gives a Registry the Get that keyops.Registry has (and
// ProvisionMany does not call), keeping its CreateMany visible.
func keyopsRegistry(r Registry) keyops.Registry {
	if kr, ok := r.(keyops.Registry); ok {
		return kr
	}
	if bc, ok := r.(BulkCreator); ok {
		return bulkNoGet{noGet{r}, bc}
	}
	return noGet{r}
}

type noGet struct{ Registry }

func (noGet) Get(_ context.Context, keyID, version string) (registry.Entry, error) {
	return registry.Entry{}, fmt.Errorf("fleet: registry without Get: %s@%s: %w", keyID, version, registry.ErrNotFound)
}

type bulkNoGet struct {
	noGet
	BulkCreator
}

// BulkCreator is the registry's bulk path (registry.BulkCreator).
type BulkCreator = registry.BulkCreator

// Bulk provisions many devices through keyops.Ops.ProvisionMany: the
// semantics and audit trail of dekctl provision (keyops.Ops.Provision) with
// one registry listing, Workers concurrent KMS calls, one CreateMany and
// one audit append per step, so 100,000 devices take seconds.
type Bulk struct {
	KMS      kms.Provider
	Registry Registry
	Audit    keyops.Auditor // required: no key operation goes unrecorded
	Operator string         // added to every audit event's detail
	Rand     io.Reader      // new DEKs (default crypto/rand.Reader)
	Now      func() time.Time
	Workers  int // concurrent KMS calls and registry writes (default 16)
}

var (
	_ KeyProvisioner  = (*Bulk)(nil)
	_ BulkProvisioner = (*Bulk)(nil)
	_ KeyProvisioner  = (*keyops.Ops)(nil)
)

// Provision makes one device's credential (ProvisionMany of one).
func (b *Bulk) Provision(ctx context.Context, req keyops.ProvisionRequest) (keyops.Credential, error) {
	cs, err := b.ProvisionMany(ctx, []keyops.ProvisionRequest{req})
	if err != nil {
		return keyops.Credential{}, err
	}
	return cs[0], nil
}

// ProvisionMany makes the credentials of reqs, in their order (see
// keyops.Ops.ProvisionMany). Requests must name distinct devices. The
// caller wipes the result.
func (b *Bulk) ProvisionMany(ctx context.Context, reqs []keyops.ProvisionRequest) ([]keyops.Credential, error) {
	if b.KMS == nil || b.Registry == nil || b.Audit == nil {
		return nil, errors.New("fleet: Bulk needs KMS, Registry and Audit")
	}
	workers := b.Workers
	if workers <= 0 {
		workers = 16
	}
	ops, err := keyops.New(keyops.Options{KMS: b.KMS, Registry: keyopsRegistry(b.Registry), Audit: b.Audit, Operator: b.Operator,
		Rand: b.Rand, Now: b.Now, ProvisionWorkers: workers})
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	creds, err := ops.ProvisionMany(ctx, reqs, nil)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	return creds, nil
}
