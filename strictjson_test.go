package wsauth

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestStrictObject(t *testing.T) {
	deep := strings.Repeat(`{"a":`, maxJSONDepth) + "1" + strings.Repeat("}", maxJSONDepth)
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`{}`, true},
		{` {"sub":"a","aud":["x","y"],"n":{"a":[1,{"b":null}]},"e":1e3} `, true},
		{`{"sub":"\ud83d\ude00","s":"\"\\\/\b\f\n\r\t\u00e9"}`, true},
		{deep, true},
		{`{"a":` + deep + `}`, false},
		{`{"a":` + strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth) + `}`, false},
		{`null`, false},
		{`[]`, false},
		{`"x"`, false},
		{`{"a":1} {}`, false},
		{`{"a":1,}`, false},
		{`{"a":01}`, false},
		{`{"a":1,"a":1}`, false},
		{`{"sub":"a","s\u0075b":"b"}`, false},
		{`{"n":{"x":1,"y":2,"x":3}}`, false},
		{`{"n":[{"x":1,"x":1}]}`, false},
		{"{\"sub\":\"a\xff\"}", false},
		{"{\"s\xffb\":1}", false},
		{`{"sub":"\ud800"}`, false},
		{`{"sub":"\udc00"}`, false},
		{`{"sub":"\ud800\u0041"}`, false},
		{`{"sub":"\ud800\n"}`, false},
		{`{"\ud800":1}`, false},
		{`{"a":tru}`, false},
		{`{"a":nul}`, false},
		{`{"a":-}`, false},
		{`{"a":1.}`, false},
		{`{"a":1e}`, false},
		{`{"a":1e+5,"b":-0.5E-3,"c":[true,false,null]}`, true},
		{`{"a":"\x"}`, false},
		{`{"a":"\u00g0"}`, false},
		{"{\"a\":\"\x01\"}", false},
		{`{"a" 1}`, false},
		{`{"a":1 "b":2}`, false},
		{`{"a":[1 2]}`, false},
		{`{"a":1`, false},
		{`{"a":"x`, false},
		{`{1:1}`, false},
		{`{"a":1}x`, false},
	} {
		err := strictObject([]byte(tc.in), func(name, value []byte) error { return nil })
		if (err == nil) != tc.ok {
			t.Errorf("%.60q: error %v, want ok %v", tc.in, err, tc.ok)
		}
	}
}

// TestStrictObjectManyMembers: duplicates are found past the linear search.
func TestStrictObjectManyMembers(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{`)
	for i := range 100 {
		b.WriteString(`"m` + strings.Repeat("x", i) + `":1,`)
	}
	ok := b.String() + `"last":1}`
	if err := strictObject([]byte(ok), nil); err != nil {
		t.Fatal(err)
	}
	for _, dup := range []string{`"m":2}`, `"mxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx":2}`} {
		if err := strictObject([]byte(b.String()+dup), nil); err != errJSONDuplicate {
			t.Errorf("duplicate %s: %v", dup, err)
		}
	}
}

// FuzzStrictObject holds strictObject to encoding/json: it accepts only
// valid UTF-8 JSON objects, and hands over exactly the members that
// encoding/json finds, with the same values, each name once.
func FuzzStrictObject(f *testing.F) {
	for _, s := range []string{`{}`, `{"sub":"a","aud":["x"],"exp":1}`, `{"a":{"b":[1,2,{"c":"\u00e9"}]}}`,
		`{"s\u0075b":"x","sub":"y"}`, `{"a":"\ud83d\ude00"}`, `{"a":"\ud800"}`, "{\"a\":\"\xff\"}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got := map[string][]byte{}
		err := strictObject(b, func(name, value []byte) error {
			if _, dup := got[string(name)]; dup {
				t.Fatalf("%q: member %q handed over twice", b, name)
			}
			got[string(name)] = bytes.Clone(value)
			return nil
		})
		var want map[string]json.RawMessage
		if json.Unmarshal(b, &want) != nil || want == nil || !utf8.Valid(b) {
			if err == nil {
				t.Fatalf("%q: accepted, encoding/json or UTF-8 refuses it", b)
			}
			return
		}
		if err != nil {
			if err != errJSONDuplicate && err != errJSONSurrogate && err != errJSONDepth {
				t.Fatalf("%q: %v, but encoding/json finds a valid object", b, err)
			}
			return // stricter: duplicates, surrogates, depth
		}
		if len(got) != len(want) {
			t.Fatalf("%q: %d members, encoding/json finds %d", b, len(got), len(want))
		}
		for k, v := range want {
			if !bytes.Equal(got[k], v) {
				t.Fatalf("%q: member %q is %q, encoding/json has %q", b, k, got[k], v)
			}
		}
	})
}
