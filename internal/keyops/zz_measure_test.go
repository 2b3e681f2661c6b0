//go:build measure

package keyops_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/fleet"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms/local"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/registry/filestore"
	"github.com/decryptd/decryptd/internal/registry/pgstore"
	"github.com/decryptd/decryptd/internal/testutil/pgtest"
)

func measureEnv(t *testing.T, backend string) (*local.Provider, registry.Store, *audit.Writer) {
	dir := t.TempDir()
	ctx := context.Background()
	p, err := local.Create(filepath.Join(dir, "root.json"), "root-m")
	if err != nil {
		t.Fatal(err)
	}
	var st registry.Store
	if backend == "file" {
		st, err = filestore.Open(ctx, filepath.Join(dir, "registry.json"))
	} else {
		st, err = pgstore.Open(ctx, pgtest.New(t))
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	aw, err := audit.Open(ctx, filepath.Join(dir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { aw.Close() })
	return p, st, aw
}

// MEASURE=path:backend:n, path one of singles, fleetbulk, many
func TestMeasure(t *testing.T) {
	for _, spec := range []string{os.Getenv("MEASURE")} {
		var path, backend string
		var n int
		fmt.Sscanf(spec, "%s", &path)
		parts := splitColon(spec)
		path, backend = parts[0], parts[1]
		n, _ = strconv.Atoi(parts[2])
		t.Run(spec, func(t *testing.T) {
			p, st, aw := measureEnv(t, backend)
			ctx := context.Background()
			var prov fleet.KeyProvisioner
			switch path {
			case "singles":
				ops, err := keyops.New(keyops.Options{KMS: p, Registry: st, Audit: aw})
				if err != nil {
					t.Fatal(err)
				}
				prov = ops
			case "fleetbulk":
				prov = &fleet.Bulk{KMS: p, Registry: st, Audit: aw}
			default:
				prov = manyProvisioner(t, p, st, aw)
			}
			start := time.Now()
			deadline := 10 * time.Minute
			cctx, cancel := context.WithTimeout(ctx, deadline)
			defer cancel()
			last := time.Now()
			creds, err := fleet.Provision(cctx, n, prov, fleet.ProvisionOptions{Workers: 8, Progress: func(d, total int) {
				if time.Since(last) > 10*time.Second {
					last = time.Now()
					fmt.Printf("  %s: %d/%d after %v\n", spec, d, total, time.Since(start).Round(time.Millisecond))
				}
			}})
			el := time.Since(start)
			if err != nil {
				t.Fatalf("%s: %v after %v", spec, err, el)
			}
			for i := range creds {
				creds[i].Wipe()
			}
			fmt.Printf("MEASURE %s: %d devices in %v (%.0f/s)\n", spec, n, el.Round(time.Millisecond), float64(n)/el.Seconds())
		})
	}
}

func splitColon(s string) []string {
	var out []string
	cur := ""
	for _, c := range s {
		if c == ':' {
			out = append(out, cur)
			cur = ""
			continue
		}
		cur += string(c)
	}
	return append(out, cur)
}
