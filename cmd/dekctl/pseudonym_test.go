package main

import (
	"strings"
	"testing"
)

func TestPseudonymRotate(t *testing.T) {
	_, cfg := setup(t, "")
	must(t, cfg, "root", "create", "--name", "main")
	if out := must(t, cfg, "pseudonym", "rotate", "analytics"); !strings.Contains(out, "pseudonym/analytics v1 active") {
		t.Fatal(out)
	}
	if out := must(t, cfg, "pseudonym", "rotate", "analytics"); !strings.Contains(out, "pseudonym/analytics v2 active") {
		t.Fatal(out)
	}
	list := must(t, cfg, "list")
	if !strings.Contains(list, "pseudonym/analytics") {
		t.Fatalf("list lacks the key:\n%s", list)
	}
	for _, args := range [][]string{{"pseudonym"}, {"pseudonym", "create", "x"}, {"pseudonym", "rotate", "bad name"}} {
		if r := runT(t, nil, append([]string{"--config", cfg}, args...)...); r.code != 2 {
			t.Errorf("dekctl %v: exit %d, want 2 (usage)\n%s", args, r.code, r.stderr)
		}
	}
}
