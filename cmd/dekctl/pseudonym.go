package main

import (
	"context"
	"fmt"
)

// pseudonym runs `dekctl pseudonym rotate NAME`: create (v1) or rotate the
// pseudonymization key pseudonym/NAME that field policies use.
func (c *cli) pseudonym(ctx context.Context, args []string) error {
	if len(args) < 2 || args[0] != "rotate" {
		return usagef("pseudonym: want 'pseudonym rotate NAME'")
	}
	name := args[1]
	fs := c.flags("pseudonym rotate")
	if err := parse(fs, args[2:]); err != nil {
		return err
	}
	return c.withOps(ctx, need{kms: true, registry: true}, false, func(w *wired) error {
		e, err := w.ops.RotatePseudonymKey(ctx, name)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "%s %s active (every daemon moves to it within seconds; tokens change)\n", e.KeyID, e.Version)
		return nil
	})
}
