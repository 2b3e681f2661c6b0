package kms_test

import (
	"context"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/kms"
)

type fakeRoots struct{}

func (fakeRoots) CreateRoot(context.Context, string) (kms.RootKey, error) { return kms.RootKey{}, nil }
func (fakeRoots) RotateRoot(context.Context, string) (kms.RootKey, error) { return kms.RootKey{}, nil }
func (fakeRoots) ListRoots(context.Context) ([]kms.RootKey, error)        { return nil, nil }

type fakeClock struct{}

func (fakeClock) NewestRootVersion(context.Context) (string, string, time.Time, error) {
	return "r", "1", time.Time{}, nil
}

type fakeDescriber struct{}

func (fakeDescriber) DescribeRoot(context.Context, string) (kms.RootKey, error) {
	return kms.RootKey{}, nil
}

type fakeNamer struct{}

func (fakeNamer) RootKeyID() string { return "root-7" }

type fakeRetirer struct{}

func (fakeRetirer) RetireScope(context.Context, string, string) ([]kms.RootVersion, error) {
	return nil, nil
}
func (fakeRetirer) RetireRootVersion(context.Context, string, string) error { return nil }

type fakeReplacer struct{}

func (fakeReplacer) WithRootKey(string) kms.Provider { return nil }

type fakeAll struct {
	fakeRetirer
	fakeReplacer
	fakeRoots
	fakeClock
	fakeDescriber
	fakeNamer
}

type fakeRootsClock struct {
	fakeRoots
	fakeClock
}

func TestCapabilitiesOf(t *testing.T) {
	for _, tc := range []struct {
		name                            string
		v                               any
		roots, describe, clock, rotates bool
		retire, replace                 bool
		rootID                          string
	}{
		{name: "nothing", v: struct{}{}},
		{name: "nil", v: nil},
		{name: "roots only", v: fakeRoots{}, roots: true},
		{name: "clock only", v: fakeClock{}, clock: true},
		{name: "roots and clock", v: fakeRootsClock{}, roots: true, clock: true, rotates: true},
		{name: "retire only", v: fakeRetirer{}, retire: true},
		{name: "everything", v: fakeAll{}, roots: true, describe: true, clock: true, rotates: true, retire: true, replace: true, rootID: "root-7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := kms.CapabilitiesOf(tc.v)
			if (c.Roots != nil) != tc.roots || (c.Describe != nil) != tc.describe || (c.Clock != nil) != tc.clock {
				t.Fatalf("CapabilitiesOf = roots %v describe %v clock %v, want %v %v %v", c.Roots != nil, c.Describe != nil, c.Clock != nil, tc.roots, tc.describe, tc.clock)
			}
			if (c.Retire != nil) != tc.retire || (c.Replace != nil) != tc.replace {
				t.Fatalf("CapabilitiesOf = retire %v replace %v, want %v %v", c.Retire != nil, c.Replace != nil, tc.retire, tc.replace)
			}
			if c.RootRotation() != tc.rotates || c.RootKeyID != tc.rootID {
				t.Fatalf("RootRotation %v RootKeyID %q, want %v %q", c.RootRotation(), c.RootKeyID, tc.rotates, tc.rootID)
			}
		})
	}
}
