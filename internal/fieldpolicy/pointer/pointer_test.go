package pointer

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		bad  bool
	}{
		{"", nil, false},
		{"/", []string{""}, false},
		{"/data/heart_rate", []string{"data", "heart_rate"}, false},
		{"/a~1b/c~0d", []string{"a/b", "c~d"}, false},
		{"/data/readings/*/note", []string{"data", "readings", "*", "note"}, false},
		{"data", nil, true},
		{"/a~2", nil, true},
		{"/a~", nil, true},
		{"/" + strings.Repeat("a/", 70), nil, true},
	} {
		p, err := Parse(tc.in)
		if tc.bad {
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("Parse(%q): got %v, want ErrSyntax", tc.in, err)
			}
			continue
		}
		if err != nil || strings.Join(p.Tokens, "|") != strings.Join(tc.want, "|") || p.String() != tc.in {
			t.Errorf("Parse(%q) = %q, %v; want %q", tc.in, p.Tokens, err, tc.want)
		}
	}
}

func TestGet(t *testing.T) {
	var doc any
	_ = json.Unmarshal([]byte(`{"data":{"hr":72,"r":[{"n":"x"},{"n":"y"}],"a/b":1}}`), &doc)
	for in, want := range map[string]any{"/data/hr": 72.0, "/data/r/1/n": "y", "/data/a~1b": 1.0} {
		if v, ok := MustParse(in).Get(doc); !ok || v != want {
			t.Errorf("Get(%s) = %v, %v; want %v", in, v, ok, want)
		}
	}
	for _, in := range []string{"/data/none", "/data/r/2/n", "/data/r/01/n", "/data/hr/x"} {
		if _, ok := MustParse(in).Get(doc); ok {
			t.Errorf("Get(%s) found something", in)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "/", "/a/b", "/a~0~1", "/*/x", "a", "/~2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := Parse(s)
		if err != nil {
			return
		}
		// Escaping the tokens again gives back the text parsed.
		var b strings.Builder
		for _, tok := range p.Tokens {
			b.WriteString("/" + Escape(tok))
		}
		if b.String() != s {
			t.Fatalf("round trip of %q gave %q", s, b.String())
		}
	})
}
