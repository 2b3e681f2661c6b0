package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/fieldpolicy"
	"github.com/decryptd/decryptd/internal/keycache"
	"github.com/decryptd/decryptd/internal/pseudonym"
	"github.com/decryptd/decryptd/internal/sink"
)

// withPolicy puts the sink's field policy, if any, in front of sk, loading
// its pseudonymization key (shared between sinks naming the same key) and
// writing the policy to the audit log: every policy in force is on record
// from the start.
func (p *parts) withPolicy(ctx context.Context, s config.Sink, sk sink.Sink) (sink.Sink, error) {
	if s.Policy == nil || s.Policy.IsZero() {
		return sk, nil
	}
	var ps fieldpolicy.Pseudonymizer
	if s.Policy.NeedsPseudonyms() {
		k, err := p.pseudonymKey(ctx, s.Policy.PseudonymKey)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		ps = k
	}
	pol, err := fieldpolicy.New(*s.Policy, ps)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if err := p.auditPolicy(ctx, s.Name, *s.Policy); err != nil {
		return nil, err
	}
	return fieldpolicy.Wrap(sk, pol), nil
}

func (p *parts) pseudonymKey(ctx context.Context, name string) (*pseudonym.Key, error) {
	if k, ok := p.pseudonyms[name]; ok {
		return k, nil
	}
	k, err := pseudonym.Open(ctx, pseudonym.Options{Registry: p.store, KMS: p.kms, Audit: keycache.AuditFunc(p.recordUnwrap)}, name)
	if err != nil {
		return nil, err
	}
	if p.pseudonyms == nil {
		p.pseudonyms = map[string]*pseudonym.Key{}
	}
	p.pseudonyms[name] = k
	// Follow rotations for as long as the daemon runs.
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = k.Run(runCtx, 5*time.Second) }()
	p.onClose("pseudonymization key", func() error { cancel(); <-done; return k.Close() })
	return k, nil
}

// auditPolicy writes one event for the policy (its defaults and key) and
// one per rule, so that a long policy fits the audit log's line bounds.
func (p *parts) auditPolicy(ctx context.Context, sinkName string, c config.Policy) error {
	enc := c.Encrypted
	if enc == "" {
		enc = fieldpolicy.Keep
	}
	evs := []audit.Event{{Action: fieldpolicy.AuditAction, KeyID: pseudonymKeyID(c.PseudonymKey), Result: "in_force",
		Detail: fmt.Sprintf("sink %s: %d rules, encrypted fields: %s", sinkName, len(c.Rules), enc)}}
	for i, r := range c.Rules {
		evs = append(evs, audit.Event{Action: fieldpolicy.AuditAction, Result: "in_force",
			Detail: fmt.Sprintf("sink %s rule %d: %s %s", sinkName, i, r.Action, r.Pointer)})
	}
	for _, ev := range evs {
		ev.Time = time.Now()
		if _, err := p.audit.Append(ctx, ev); err != nil {
			return fmt.Errorf("audit field policy of sink %s: %w", sinkName, err)
		}
	}
	return nil
}

func pseudonymKeyID(name string) string {
	if name == "" {
		return ""
	}
	return pseudonym.KeyID(name)
}
