package grafana

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "write the dashboards' JSON files")

// TestGenerated: each committed JSON file is exactly what Boards builds.
func TestGenerated(t *testing.T) {
	for _, b := range Boards() {
		want, err := JSON(b)
		if err != nil {
			t.Fatal(err)
		}
		if *update {
			if err := os.WriteFile(b.File, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(b.File)
		if err != nil {
			t.Fatalf("%v (generate it: go test ./deploy/grafana -run TestGenerated -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what Boards builds: regenerate with go test ./deploy/grafana -run TestGenerated -update", b.File)
		}
	}
}

// TestBoards: unique ids, titles and files; every panel has a title, a
// unit and at least one query, every query a legend; every query goes
// through the datasource variable in the JSON.
func TestBoards(t *testing.T) {
	seen := map[string]bool{}
	for _, b := range Boards() {
		for _, k := range []string{b.UID, b.Title, b.File} {
			if seen[k] {
				t.Errorf("%q used twice", k)
			}
			seen[k] = true
		}
		if len(b.Panels) == 0 {
			t.Errorf("%s: no panels", b.UID)
		}
		for _, p := range b.Panels {
			if p.Title == "" || p.Unit == "" || len(p.Queries) == 0 {
				t.Errorf("%s: panel %+v lacks a title, unit or query", b.UID, p)
			}
			for _, q := range p.Queries {
				if q.Legend == "" || !strings.Contains(q.Expr, "decryptd_") {
					t.Errorf("%s/%s: query %+v: want a legend and a decryptd metric", b.UID, p.Title, q)
				}
			}
		}
		data, err := JSON(b)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Panels []struct {
				Targets []struct {
					Datasource struct{ UID string } `json:"datasource"`
					Expr       string               `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal(data, &d); err != nil {
			t.Fatal(err)
		}
		if len(d.Panels) != len(b.Panels) {
			t.Fatalf("%s: %d panels in JSON, %d defined", b.UID, len(d.Panels), len(b.Panels))
		}
		for _, p := range d.Panels {
			for _, q := range p.Targets {
				if q.Datasource.UID != "${datasource}" || q.Expr == "" {
					t.Errorf("%s: target %+v: want the datasource variable and an expr", b.UID, q)
				}
			}
		}
	}
}
