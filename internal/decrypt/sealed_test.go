package decrypt

import (
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/seal"
)

// A record says which of its data values arrived encrypted: all of it
// (shape A), each sealed field (shape B), nothing (shape B without sealed
// fields).
func TestRecordSealed(t *testing.T) {
	k := newKit(t, Options{})
	a, err := k.open(k.shapeA(t, k.env, `{"hr":72}`), false)
	if err != nil || strings.Join(a.Sealed, ",") != "" || len(a.Sealed) != 1 {
		t.Fatalf("shape A: Sealed %q, %v; want [\"\"]", a.Sealed, err)
	}
	b, err := k.open(k.shapeB(t, k.env,
		seal.Field{Name: "patient_id", Value: []byte(`"P-1"`), Seal: true},
		seal.Field{Name: "hr", Value: []byte(`72`)},
		seal.Field{Name: "a/b", Value: []byte(`{"x":1}`), Seal: true}), false)
	if err != nil || strings.Join(b.Sealed, ",") != "/patient_id,/a~1b" {
		t.Fatalf("shape B: Sealed %q, %v", b.Sealed, err)
	}
	env := k.env
	env.KeyVersion = ""
	c, err := k.open(k.shapeB(t, env, seal.Field{Name: "hr", Value: []byte(`72`)}), false)
	if err != nil || c.Sealed != nil {
		t.Fatalf("shape B without sealed fields: Sealed %q, %v", c.Sealed, err)
	}
}
