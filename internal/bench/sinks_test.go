package bench

import (
	"context"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/testutil/pgtest"
)

// TestSinkDrainSmall runs the sink drain on a tiny backlog: every sink
// drains everything, and both analytics sinks get a ratio.
func TestSinkDrainSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := SinkDrain(ctx, SinkDrainOptions{Dir: t.TempDir(), Messages: 1000, Devices: 20, Rounds: 1, PostgresDSN: pgtest.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Runs) != 3 {
		t.Fatalf("runs: %+v", res.Runs)
	}
	for _, k := range []string{"kafka", "postgres"} {
		if r := res.Ratios[k]; r <= 0 || len(res.RoundRatios[k]) != 1 {
			t.Errorf("%s: ratio %v, rounds %v", k, r, res.RoundRatios[k])
		}
	}
}
