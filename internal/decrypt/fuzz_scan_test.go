package decrypt

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"
	"unicode/utf8"
)

// FuzzScan checks the scanner against encoding/json on arbitrary bytes, in
// both modes: whatever the scanner accepts, encoding/json calls valid, with
// no member name repeated in any object; and whatever encoding/json calls
// valid the scanner accepts too, unless the spec's stricter rules refuse it
// (invalid UTF-8, a \u escape of a surrogate (checked by the scanner, not
// here), a repeated name, nesting past maxDepth; in message mode a
// top-level value that is not an object). One exception, by design: in
// message mode a top-level encrypted_data string without escapes is
// skipped unchecked (base64String), so the scanner may accept a control
// character or invalid UTF-8 there; the base64 decoder, which parse runs
// before any key is looked up, must then refuse that text, so the message
// is malformed all the same.
func FuzzScan(f *testing.F) {
	for _, s := range []string{
		`{}`, `[]`, `{"a":1,"b":[true,false,null],"c":{"d":"e"}}`, `{"a":1,"a":2}`,
		`{"a":{"x":1},"b":{"x":1}}`, `{"a":{"x":1,"x":2}}`, `{"\u0061":1,"a":2}`,
		`{"a\"b":1}`, `{"n":-0.5e+10}`, `{"n":01}`, `{"s":"\ud83d\ude00"}`, `{"s":"\ud800"}`,
		`"x"`, `1`, ` {"a" : [ 1 , 2 ] } `, `{"a":1,}`, `{"abcdefghijklmnopqrstu":1}`,
		`{"encrypted_data":"AAAA","metadata":{"device_id":"d","timestamp":1}}`,
		`{"k":"ENC:AES256:AAAA","l":[{"m":"ENC:AES256:BBBB"}]}`, "{\"a\x01\":1}", "{\"\xff\":1}",
		"{\"encrypted_data\":\"AA\nA\"}", "{\"encrypted_data\":\"AA\xffA\"}", "{\"encrypted_data\":\"AA\x01A\"}",
		`{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17,"a":18}`,
	} {
		f.Add([]byte(s))
	}
	var s scanner
	f.Fuzz(func(t *testing.T, buf []byte) {
		for _, collect := range []bool{false, true} {
			_, _, err := s.document(buf, collect)
			valid := json.Valid(buf) && uniqueNames(buf)
			if err == nil && !valid && !(collect && sealedTextRefused(&s)) {
				t.Fatalf("collect=%v: scanner accepted what encoding/json refuses (or a repeated name)", collect)
			}
			if err != nil && valid && utf8.Valid(buf) && !bytes.Contains(buf, []byte(`\u`)) &&
				bytes.Count(buf, []byte("["))+bytes.Count(buf, []byte("{")) < maxDepth &&
				(!collect || bytes.HasPrefix(bytes.TrimLeft(buf, " \t\r\n"), []byte("{"))) {
				t.Fatalf("collect=%v: scanner refused valid JSON: %v", collect, err)
			}
		}
	})
}

// sealedTextRefused reports whether the last document s scanned has a
// top-level encrypted_data string whose raw text the base64 decoder
// refuses.
func sealedTextRefused(s *scanner) bool {
	ed := s.get(knownEncryptedData)
	if ed == nil || ed.kind != kindString {
		return false
	}
	_, err := appendBase64(nil, s.buf[ed.val.start+1:ed.val.end-1])
	return err != nil
}

// uniqueNames reports whether no object of the valid JSON text buf repeats
// a member name (after unescaping).
func uniqueNames(buf []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(buf))
	type frame struct {
		obj   bool
		isKey bool
		names map[string]bool
	}
	var stack []frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return true
		}
		if err != nil {
			return true // not valid JSON: json.Valid decides
		}
		top := len(stack) - 1
		if top >= 0 && stack[top].obj {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:top]
				continue
			}
			if stack[top].isKey {
				name := tok.(string)
				if stack[top].names[name] {
					return false
				}
				stack[top].names[name] = true
				stack[top].isKey = false
				continue
			}
			stack[top].isKey = true
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, frame{obj: true, isKey: true, names: map[string]bool{}})
		case json.Delim('['):
			stack = append(stack, frame{})
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
	}
}
