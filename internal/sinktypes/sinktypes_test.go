package sinktypes

import "testing"

func TestRegistry(t *testing.T) {
	r := Registry()
	if got := r.Describe(); got != "file, stdout, mqtt, http, kafka or postgres" {
		t.Fatalf("types %q", got)
	}
	for _, n := range r.Names() {
		typ, _ := r.Lookup(n)
		if typ.NewConfig() == nil {
			t.Errorf("%s: NewConfig returned nil", n)
		}
	}
}
