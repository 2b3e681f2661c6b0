package kms

import (
	"context"
	"time"
)

// RootKey describes a root key as the operator sees it; never its material.
type RootKey struct {
	ID       string   `json:"id"`
	Name     string   `json:"name,omitempty"`
	State    string   `json:"state"`
	Versions []string `json:"versions"` // oldest first; the last one wraps
}

// RootManager is the operator's side of a provider: creating and rotating
// root keys (dekctl root ...). The daemon never needs it.
type RootManager interface {
	CreateRoot(ctx context.Context, name string) (RootKey, error)
	RotateRoot(ctx context.Context, id string) (RootKey, error)
	ListRoots(ctx context.Context) ([]RootKey, error)
}

// RootDescriber describes one root key (by id or alias) with its versions
// in one call, cheaper than listing every root key.
type RootDescriber interface {
	DescribeRoot(ctx context.Context, id string) (RootKey, error)
}

// RootClock names the root key version that wraps new DEKs and when it was
// made (its last rotation, or its creation): the schedule of fleet root
// rotation.
type RootClock interface {
	NewestRootVersion(ctx context.Context) (rootKeyID, version string, created time.Time, err error)
}

// RootNamer names the root key (id or alias, as configured) that wraps new
// DEKs.
type RootNamer interface {
	RootKeyID() string
}

// Capabilities is what a provider can do beyond Provider, each nil when it
// cannot. CapabilitiesOf is the one place that discovers them, so callers
// hold a declaration instead of asserting types of their own.
type Capabilities struct {
	Roots    RootManager   // create, rotate and list root keys (dekctl root ...)
	Describe RootDescriber // one root key with its versions
	Clock    RootClock     // the wrapping version and when it was made
	Retire   RootRetirer   // destroy old root versions (retire.go)
	// Replace wraps under another root key, for a provider whose versions
	// cannot be retired one at a time (retire.go).
	Replace RootReplacer
	// RootKeyID is the root key that wraps new DEKs ("" when the provider
	// does not say: the only one there is).
	RootKeyID string
}

// CapabilitiesOf reports what v (a Provider, or a RootManager alone such as
// local.Manager) declares by implementing the interfaces above.
func CapabilitiesOf(v any) Capabilities {
	var c Capabilities
	c.Roots, _ = v.(RootManager)
	c.Describe, _ = v.(RootDescriber)
	c.Clock, _ = v.(RootClock)
	c.Retire, _ = v.(RootRetirer)
	c.Replace, _ = v.(RootReplacer)
	if n, ok := v.(RootNamer); ok {
		c.RootKeyID = n.RootKeyID()
	}
	return c
}

// RootRotation reports whether c can run fleet root rotation: rotate the
// root key (Roots) and tell when it was last rotated (Clock).
func (c Capabilities) RootRotation() bool { return c.Roots != nil && c.Clock != nil }
