package fieldpolicy

import (
	"testing"

	"github.com/decryptd/decryptd/internal/sink"
)

// BenchmarkApply: the demo's analytics policy on a shape B record with two
// sealed fields (a pseudonym each time).
func BenchmarkApply(b *testing.B) {
	p, err := New(Config{PseudonymKey: "a", Encrypted: Drop, Rules: []Rule{
		{"/data/patient_id", Pseudonymize}, {"/data/note", Drop}, {"/metadata", Drop}, {"/data/heart_rate", Keep},
	}}, fakePseudo{})
	if err != nil {
		b.Fatal(err)
	}
	r := sink.Record{ID: "r1", DeviceID: "sensor-001", JSON: []byte(rec), Sealed: []string{"/patient_id", "/note"}}
	b.ReportAllocs()
	b.SetBytes(int64(len(rec)))
	for b.Loop() {
		if _, err := p.Apply(b.Context(), r); err != nil {
			b.Fatal(err)
		}
	}
}
