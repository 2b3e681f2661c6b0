package intake_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The processing side depends on the intake contract only: no input
// package and no input's client library in its import graph, so a new
// input (Kafka) is added beside MQTT without touching it.
func TestProcessingSideImportsNoInput(t *testing.T) {
	forbidden := []string{
		"github.com/decryptd/decryptd/internal/consumer",
		"github.com/decryptd/decryptd/internal/kafkainput",
		"github.com/eclipse/paho.mqtt.golang",
	}
	for _, pkg := range []string{"pipeline", "decrypt", "sink", "keycache"} {
		path := "github.com/decryptd/decryptd/internal/" + pkg
		out, err := exec.Command("go", "list", "-deps", path).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", path, err, out)
		}
		deps := strings.Fields(string(out))
		if !contains(deps, "github.com/decryptd/decryptd/internal/intake") && pkg != "keycache" {
			t.Errorf("%s does not depend on intake; the list looks wrong:\n%s", pkg, out)
		}
		for _, d := range deps {
			for _, f := range forbidden {
				if d == f || strings.HasPrefix(d, f+"/") {
					t.Errorf("%s imports %s", pkg, d)
				}
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
