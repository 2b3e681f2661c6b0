package bench

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/config"
)

// The Kafka drain's daemon configuration is one decryptd accepts: the
// agreed kafka input section, the drain's sinks.
func TestKafkaDaemonConfigLoads(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	text := kafkaDaemonConfig(dir, []string{"127.0.0.1:9092"}, "bench-decryptd-1", 1024, filepath.Join(dir, "root.json"), filepath.Join(dir, "registry.json"))
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	if cfg.Input.Type != config.InputKafka || cfg.Kafka.Group != "bench-decryptd-1" || cfg.Kafka.Topics[0] != kafkaTopic || cfg.Kafka.MaxInFlight != 1024 {
		t.Fatalf("loaded %+v %+v", cfg.Input, cfg.Kafka)
	}
}

// TestKafkaDrainSmall runs the Kafka drain on a tiny backlog: both sides
// drain every record, decryptd dead-letters none and unwraps each key
// once.
func TestKafkaDrainSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := KafkaDrain(ctx, KafkaDrainOptions{Dir: t.TempDir(), Messages: 2000, Devices: 20, Partitions: 4, Rounds: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Runs) != 2 || res.Runs[0].Side != "bare" || res.Runs[1].Side != "decryptd" {
		t.Fatalf("runs %+v", res.Runs)
	}
	d := res.Runs[1]
	if d.Delivered < 2000 || d.DeadLetters != 0 || d.KMSUnwraps != uint64(res.DistinctKeys) {
		t.Fatalf("decryptd run %+v, want 2000 delivered, none dead-lettered, %d unwraps", d, res.DistinctKeys)
	}
	if d.KeysSeconds <= 0 || d.KeysSeconds > d.Seconds {
		t.Errorf("keys loaded after %v s of a %v s drain", d.KeysSeconds, d.Seconds)
	}
	if res.Ratio <= 0 || res.BareMedian <= 0 {
		t.Fatalf("ratio %v of %v", res.Ratio, res.BareMedian)
	}
}
