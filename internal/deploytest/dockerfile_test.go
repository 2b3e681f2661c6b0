package deploytest

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDockerfile: every base image is pinned by tag and digest, the final
// stage's user is the number the pod runs as (TestPodSecurity), and the
// build context leaves out the repository's history and local secrets.
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	from := regexp.MustCompile(`(?m)^FROM\s+(\S+)`)
	froms := from.FindAllStringSubmatch(string(data), -1)
	if len(froms) < 2 {
		t.Fatalf("want a build and a runtime stage, got %d FROM lines", len(froms))
	}
	pin := regexp.MustCompile(`^[^:@\s]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$`)
	for _, f := range froms {
		if !pin.MatchString(f[1]) {
			t.Errorf("FROM %s: not pinned by tag and digest", f[1])
		}
	}
	users := regexp.MustCompile(`(?m)^USER\s+(\S+)`).FindAllStringSubmatch(string(data), -1)
	if len(users) == 0 || users[len(users)-1][1] != "65532:65532" {
		t.Errorf("USER %v, want 65532:65532 (numeric, so runAsNonRoot can verify it)", users)
	}
	ignore, err := os.ReadFile("../../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(string(ignore), "\n") {
		lines[strings.TrimSpace(l)] = true
	}
	for _, want := range []string{".git", "var/", "*.pem", "*.key", "root-key.json", "*.jsonl", "*.log"} {
		if !lines[want] {
			t.Errorf(".dockerignore does not leave out %s", want)
		}
	}
}
