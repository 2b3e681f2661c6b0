package decrypt

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math/rand/v2"
	"testing"
)

func TestPlainASCII8(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	special := []byte{'"', '\\', 0x00, 0x1f, 0x20, 0x21, 0x7f, 0x80, 0xff, '[', ']', 'A'}
	for range 200000 {
		var b [8]byte
		for i := range b {
			if rng.IntN(4) == 0 {
				b[i] = special[rng.IntN(len(special))]
			} else {
				b[i] = byte(rng.IntN(256))
			}
		}
		want := true
		for _, c := range b {
			if c == '"' || c == '\\' || c < 0x20 || c >= 0x80 {
				want = false
			}
		}
		if got := plainASCII8(binary.LittleEndian.Uint64(b[:])); got != want {
			t.Fatalf("plainASCII8(%q) = %v, want %v", b, got, want)
		}
	}
}

// TestScannerStrict checks the scanner against RFC 8259 and the spec's
// extra rules: valid JSON passes, everything else fails, and a member name
// repeated in any one object fails.
func TestScannerStrict(t *testing.T) {
	cases := []struct {
		name string
		in   string
		ok   bool
	}{
		{"empty object", `{}`, true},
		{"whitespace", " \t\r\n{ \"a\" : [ 1 , 2 ] }\n", true},
		{"numbers", `[0,-0,1.5,-1.25e+10,1E-5,12345678901234567890123]`, true},
		{"literals", `[true,false,null]`, true},
		{"escapes", `["\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"]`, true},
		{"utf8", `["été 😀"]`, true},
		{"same name in sibling objects", `[{"a":1},{"a":2}]`, true},
		{"same name at different depths", `{"a":{"a":{"a":1}}}`, true},
		{"empty", ``, false},
		{"only whitespace", `  `, false},
		{"trailing comma object", `{"a":1,}`, false},
		{"trailing comma array", `[1,]`, false},
		{"leading zero", `[01]`, false},
		{"negative leading zero", `[-01]`, false},
		{"bare minus", `[-]`, false},
		{"fraction without digits", `[1.]`, false},
		{"exponent without digits", `[1e]`, false},
		{"plus sign", `[+1]`, false},
		{"hex", `[0x10]`, false},
		{"NaN", `[NaN]`, false},
		{"single quotes", `['a']`, false},
		{"control char", "[\"a\x01b\"]", false},
		{"raw tab in string", "[\"a\tb\"]", false},
		{"invalid utf8", "[\"\xff\"]", false},
		{"overlong utf8", "[\"\xc0\xaf\"]", false},
		{"utf8 surrogate", "[\"\xed\xa0\x80\"]", false},
		{"lone high surrogate", `["\ud800"]`, false},
		{"lone low surrogate", `["\udc00"]`, false},
		{"high surrogate then non-low", `["\ud800\u0041"]`, false},
		{"bad escape", `["\x"]`, false},
		{"short unicode escape", `["\u12"]`, false},
		{"unterminated string", `["abc`, false},
		{"unterminated object", `{"a":1`, false},
		{"missing colon", `{"a" 1}`, false},
		{"missing value", `{"a":}`, false},
		{"non-string name", `{1:2}`, false},
		{"trailing garbage", `{} x`, false},
		{"two values", `{}{}`, false},
		{"BOM", "\xef\xbb\xbf{}", false},
		{"bad literal", `[tru]`, false},
		{"repeated name", `{"a":1,"a":2}`, false},
		{"repeated name nested", `{"x":[{"b":1,"c":2,"b":3}]}`, false},
		{"repeated name via escape", `{"a":1,"\u0061":2}`, false},
		{"repeated name both escaped", `{"\u00e9":1,"\u00E9":2}`, false},
		{"repeated name escaped vs raw utf8", `{"é":1,"\u00e9":2}`, false},
		{"repeated name in big object", `{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k17":17,"k18":18,"k3":19}`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var s scanner
			_, _, err := s.document([]byte(c.in), false)
			if (err == nil) != c.ok {
				t.Fatalf("document(%q) error %v, want ok=%v", c.in, err, c.ok)
			}
			// Where encoding/json has an opinion on validity (it allows
			// repeated names and lone surrogates), it must agree.
			if c.ok && !json.Valid([]byte(c.in)) {
				t.Fatalf("scanner accepted what encoding/json rejects")
			}
		})
	}
}

func TestScannerDepth(t *testing.T) {
	var s scanner
	deep := func(n int) []byte {
		b := make([]byte, 0, 2*n)
		for range n {
			b = append(b, '[')
		}
		for range n {
			b = append(b, ']')
		}
		return b
	}
	if _, _, err := s.document(deep(maxDepth), false); err != nil {
		t.Fatalf("depth %d: %v", maxDepth, err)
	}
	if _, _, err := s.document(deep(maxDepth+1), false); err == nil {
		t.Fatalf("depth %d accepted", maxDepth+1)
	}
}

func TestSealedPointers(t *testing.T) {
	msg := `{"device_id":"d","a/b":"ENC:AES256:x","t~":{"x":["ENC:AES256:y",{"é":"ENC:AES256:z"}]},"\u0045NC":"\u0045NC:AES256:w","n":"ENC:AES25"}`
	var s scanner
	if _, _, err := s.document([]byte(msg), true); err != nil {
		t.Fatal(err)
	}
	want := []struct{ ptr, text string }{
		{"/a~1b", "x"}, {"/t~0/x/0", "y"}, {"/t~0/x/1/é", "z"}, {"/ENC", "w"},
	}
	if len(s.sealed) != len(want) {
		t.Fatalf("%d sealed, want %d", len(s.sealed), len(want))
	}
	for i, w := range want {
		if got := string(s.sealed[i].ptr); got != w.ptr {
			t.Errorf("sealed[%d] pointer %q, want %q", i, got, w.ptr)
		}
		if got := string(s.sealed[i].text); got != w.text {
			t.Errorf("sealed[%d] text %q, want %q", i, got, w.text)
		}
	}
}

// TestBase64 checks the SEALED text decoder against encoding/base64 on
// every length and alphabet, and on what it must refuse.
func TestBase64(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for n := range 80 {
		raw := make([]byte, n)
		for i := range raw {
			raw[i] = byte(rng.IntN(256))
		}
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			text := enc.EncodeToString(raw)
			got, err := appendBase64([]byte("x"), []byte(text))
			if n == 0 {
				if err != nil || string(got) != "x" {
					t.Fatalf("empty: %q %v", got, err)
				}
				continue
			}
			if err != nil || !bytes.Equal(got[1:], raw) || got[0] != 'x' {
				t.Fatalf("%q: got %x, %v; want %x", text, got, err, raw)
			}
		}
	}
	for _, bad := range []string{"A", "AAAAA", "AA=", "AA=A", "A===", "AAA==", "=", "AA\nAA", "AA AA", "AB+-", "AB/_", "ab*c", "AAAA\x00", "AAé"} {
		if got, err := appendBase64(nil, []byte(bad)); err == nil {
			t.Errorf("%q accepted: %x", bad, got)
		}
	}
}

func TestParseTimestamp(t *testing.T) {
	for _, tc := range []struct {
		text string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"1634567890", 1634567890, true},
		{"1634567890123", 1634567890123, true},
		{"999999999999999999", 999999999999999999, true},
		{"9223372036854775807", 1<<63 - 1, true},
		{"9223372036854775808", 0, false},
		{"10000000000000000000", 0, false},
		{"99999999999999999999", 0, false},
		{"", 0, false},
		{"1a", 0, false},
		{"-1", 0, false},
	} {
		got, err := parseTimestamp([]byte(tc.text))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseTimestamp(%q) = %d, %v; want %d, ok %v", tc.text, got, err, tc.want, tc.ok)
		}
	}
}

// TestPlainEnd checks plainEnd against a byte loop at every start offset of
// random buffers of every length up to 40, special bytes dense and sparse.
func TestPlainEnd(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	special := []byte{'"', '\\', 0x00, 0x1f, 0x7f, 0x80, 0xff}
	for n := range 41 {
		for trial := range 300 {
			b := make([]byte, n)
			for i := range b {
				if rng.IntN(2+trial%16) == 0 {
					b[i] = special[rng.IntN(len(special))]
				} else {
					b[i] = byte(0x20 + rng.IntN(0x5f))
				}
			}
			for p := 0; p <= n; p++ {
				want := p
				for want < n && plainByte[b[want]] != 0 {
					want++
				}
				if got := plainEnd(b, p); got != want {
					t.Fatalf("plainEnd(%q, %d) = %d, want %d", b, p, got, want)
				}
			}
		}
	}
}
