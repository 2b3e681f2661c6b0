package e2etest

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/config"
)

func TestParseMetricsSumHas(t *testing.T) {
	text := `# HELP decryptd_x_total x
# TYPE decryptd_x_total counter
decryptd_x_total{sink="a",outcome="ok"} 2
decryptd_x_total{sink="b",outcome="ok"} 3
decryptd_lat_seconds_count 7
decryptd_up{name="q\"uote,d"} 1 1700000000
`
	m, err := ParseMetrics(text)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"decryptd_x_total", nil, 5},
		{"decryptd_x_total", []string{"sink", "b"}, 3},
		{"decryptd_x_total", []string{"sink", "c"}, 0},
		{"decryptd_lat_seconds_count", nil, 7},
		{"decryptd_up", []string{"name", `q"uote,d`}, 1},
		{"decryptd_absent", nil, 0},
	}
	for _, tc := range tests {
		if got := m.Sum(tc.name, tc.labels...); got != tc.want {
			t.Errorf("Sum(%s, %v) = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if !m.Has("decryptd_lat_seconds_count") || m.Has("decryptd_absent") {
		t.Error("Has: wrong answer")
	}
	if _, err := ParseMetrics("decryptd_novalue\n"); err == nil {
		t.Error("a line without a value parsed")
	}
}

func TestCounts(t *testing.T) {
	got := Counts([]string{"a", "b", "a"})
	if want := map[string]int{"a": 2, "b": 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("Counts = %v, want %v", got, want)
	}
}

// WriteConfig's file is one the daemon's loader accepts, with the
// defaults it documents.
func TestWriteConfigLoads(t *testing.T) {
	dir := t.TempDir()
	f := NewFiles(t, dir, "r1")
	yaml := WriteConfig(t, f, Config{
		Input:    "input:\n  type: kafka\nkafka:\n  brokers: [\"127.0.0.1:9092\"]\n  group: g\n  topics: [t]\n  allow_plaintext: true\n",
		KMS:      LocalKMS(RootKeyPath(dir)),
		Registry: RegistryPath(dir),
		Shutdown: "20s",
	})
	if _, err := CreateLocalRoot(dir, "root"); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(f.Config)
	if err != nil || string(data) != yaml {
		t.Fatalf("config file = %q, %v; want what WriteConfig returned", data, err)
	}
	for _, want := range []string{FileSink("records", f.Records), "shutdown_timeout: 20s\n", f.DeadLetter} {
		if !strings.Contains(yaml, want) {
			t.Errorf("config lacks %q:\n%s", want, yaml)
		}
	}
	if _, err := config.Load(f.Config, func(string) (string, bool) { return "", false }); err != nil {
		t.Fatalf("config.Load: %v\n%s", err, yaml)
	}
}
