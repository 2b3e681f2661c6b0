package recordfile

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	id1, id2 := strings.Repeat("a", 64), strings.Repeat("b", 64)
	tests := []struct {
		name, content string
		want          Lines
	}{
		{"empty", "", Lines{}},
		{"records in order, repeats kept", `{"id":"` + id1 + `"}` + "\n" + `{"id":"` + id2 + `"}` + "\n" + `{"id":"` + id1 + `"}` + "\n", Lines{IDs: []string{id1, id2, id1}}},
		{"torn last line", `{"id":"` + id1 + `"}` + "\n" + `{"id":"bb`, Lines{IDs: []string{id1}, Torn: 1}},
		{"short id is no record", `{"id":"abc"}` + "\n", Lines{Torn: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "records.jsonl")
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := Read(p)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Read = %+v, want %+v", got, tc.want)
			}
		})
	}
	if got, err := Read(filepath.Join(t.TempDir(), "missing")); err != nil || len(got.IDs)+got.Torn != 0 {
		t.Errorf("missing file: %+v, %v; want empty, nil", got, err)
	}
}
