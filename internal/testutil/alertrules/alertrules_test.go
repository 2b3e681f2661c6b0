package alertrules

import (
	"os"
	"path/filepath"
	"testing"
)

func TestExprs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	rules := `groups:
- name: a
  rules:
  - alert: Up
    expr: up == 0
  - record: job:up:sum
    expr: sum(up)
- name: b
  rules:
  - alert: Paused
    expr: decryptd_rotation_paused == 1
`
	if err := os.WriteFile(path, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	got := Exprs(t, path)
	if len(got) != 2 || got["Up"] != "up == 0" || got["Paused"] != "decryptd_rotation_paused == 1" {
		t.Fatalf("Exprs: %v", got)
	}
}
