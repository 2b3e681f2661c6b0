package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/fleet"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/filestore"
)

// registryFile writes a new file registry in one go. The file registry
// rewrites (and re-reads) its whole file on every Create, so creating
// 5,000 entries one by one is quadratic: minutes at 5,000, hours at
// 100,000. The benchmark's fleet is provisioned through fleet.Bulk (the
// semantics of dekctl provision) into this BulkCreator instead, which
// writes the file in filestore's format once; filestore.Open then checks
// every entry when the daemon loads it.
type registryFile struct {
	path    string
	written bool
}

var _ fleet.BulkCreator = (*registryFile)(nil)

func (r *registryFile) List(context.Context) ([]registry.Entry, error) { return nil, nil }

func (r *registryFile) Create(context.Context, registry.Entry) error {
	return errors.New("bench: registry file takes entries in bulk only")
}

func (r *registryFile) Update(context.Context, string, string, func(*registry.Entry) error) (registry.Entry, error) {
	return registry.Entry{}, errors.New("bench: registry file is written once")
}

func (r *registryFile) CreateMany(_ context.Context, es []registry.Entry) error {
	if r.written {
		return errors.New("bench: registry file already written")
	}
	now := time.Now()
	doc := struct {
		Format  string           `json:"format"`
		Entries []registry.Entry `json:"entries"`
	}{Format: filestore.Format, Entries: make([]registry.Entry, len(es))}
	for i, e := range es {
		p, err := registry.PrepareCreate(e, now)
		if err != nil {
			return err
		}
		doc.Entries[i] = p
	}
	data, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	if err := os.WriteFile(r.path, data, 0o600); err != nil {
		return fmt.Errorf("bench: write registry: %w", err)
	}
	r.written = true
	return nil
}

// countingAuditor stands in for the audit log during provisioning, which
// is set-up, not measured: the real log fsyncs every event, which would
// add minutes to a 100,000-device set-up. The daemon under test writes its
// own audit log, fsyncs included.
type countingAuditor struct{ n atomic.Int64 }

func (a *countingAuditor) Append(_ context.Context, e audit.Event) (audit.Event, error) {
	a.n.Add(1)
	return e, nil
}

// provision makes n device keys (device/<id>, version v1), wrapped by p,
// written to a new file registry at path, and returns the fleet that
// holds their ciphers (the DEKs themselves are wiped).
func provision(ctx context.Context, n int, p kms.Provider, path string, workers int, progress func(done, total int)) (*fleet.Fleet, error) {
	reqs, err := fleet.Requests(n, fleet.ProvisionOptions{Prefix: "dev-"})
	if err != nil {
		return nil, err
	}
	b := &fleet.Bulk{KMS: p, Registry: &registryFile{path: path}, Audit: &countingAuditor{}, Operator: "decryptd-bench", Workers: workers}
	if progress != nil {
		progress(0, n)
	}
	creds, err := b.ProvisionMany(ctx, reqs)
	if err != nil {
		return nil, err
	}
	if progress != nil {
		progress(n, n)
	}
	return fleet.NewFleet(creds, "")
}

var _ keyops.Auditor = (*countingAuditor)(nil)
