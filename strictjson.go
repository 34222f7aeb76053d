package wsauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// strictObject reads the JSON object in b as RFC 7519 and RFC 7515 want a
// token's header and claims read, stricter than encoding/json:
//
//   - b is one valid JSON value (encoding/json's scanner decides), an
//     object, and valid UTF-8, escapes included (a lone surrogate such as
//     "\ud800" is refused, where encoding/json would put U+FFFD in its
//     place);
//   - no object, at any depth, has two members of the same name, once
//     escapes are undone ("sub" and "s\u0075b" are the same name);
//   - names are handed over exactly as written (unescaped), so that a
//     caller matching "sub" is not handed "SUB", which encoding/json would
//     put in a field tagged "sub".
//
// member is called for every member of the top-level object, in order,
// with its name and its value as raw JSON; an error from it ends the read.
// Objects and arrays nest at most maxJSONDepth deep.
func strictObject(b []byte, member func(name, value []byte) error) error {
	if !json.Valid(b) || !utf8.Valid(b) {
		return errJSON
	}
	s := jsonScan{b: b}
	s.space()
	if s.i >= len(b) || b[s.i] != '{' {
		return errJSONNotObject
	}
	return s.object(member, 1)
}

var (
	errJSON          = errors.New("invalid JSON")
	errJSONNotObject = errors.New("JSON value is not an object")
	errJSONDuplicate = errors.New("duplicate member name in a JSON object")
	errJSONSurrogate = errors.New("invalid UTF-16 surrogate escape in a JSON string")
	errJSONDepth     = errors.New("JSON nested too deep")
)

// maxJSONDepth bounds the nesting of objects and arrays in a token; real
// tokens nest two or three levels.
const maxJSONDepth = 64

// jsonScan walks JSON that encoding/json has found valid, so it only has to
// find where things end, never to report a syntax error.
type jsonScan struct {
	b []byte
	i int
}

func (s *jsonScan) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// object reads the object at s.i, reporting its members to member if it is
// not nil.
func (s *jsonScan) object(member func(name, value []byte) error, depth int) error {
	if depth > maxJSONDepth {
		return errJSONDepth
	}
	s.i++ // {
	var small [8][]byte
	names := small[:0]
	var many map[string]struct{}
	s.space()
	if s.b[s.i] == '}' {
		s.i++
		return nil
	}
	for {
		s.space()
		name, err := s.str()
		if err != nil {
			return err
		}
		// Duplicates: a linear search while the object is small, a map
		// beyond, so that a large object costs no more than linear time.
		if many == nil && len(names) < 32 {
			for _, n := range names {
				if bytes.Equal(n, name) {
					return errJSONDuplicate
				}
			}
			names = append(names, name)
		} else {
			if many == nil {
				many = make(map[string]struct{}, 2*len(names))
				for _, n := range names {
					many[string(n)] = struct{}{}
				}
			}
			if _, dup := many[string(name)]; dup {
				return errJSONDuplicate
			}
			many[string(name)] = struct{}{}
		}
		s.space()
		s.i++ // :
		s.space()
		start := s.i
		if err := s.value(depth); err != nil {
			return err
		}
		if member != nil {
			if err := member(name, s.b[start:s.i]); err != nil {
				return err
			}
		}
		s.space()
		c := s.b[s.i]
		s.i++ // , or }
		if c == '}' {
			return nil
		}
	}
}

// value skips the value at s.i, checking the objects and strings in it.
func (s *jsonScan) value(depth int) error {
	switch s.b[s.i] {
	case '{':
		return s.object(nil, depth+1)
	case '[':
		if depth+1 > maxJSONDepth {
			return errJSONDepth
		}
		s.i++
		s.space()
		if s.b[s.i] == ']' {
			s.i++
			return nil
		}
		for {
			s.space()
			if err := s.value(depth + 1); err != nil {
				return err
			}
			s.space()
			c := s.b[s.i]
			s.i++ // , or ]
			if c == ']' {
				return nil
			}
		}
	case '"':
		_, err := s.str()
		return err
	}
	// A number, true, false or null: up to the next delimiter.
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return nil
		}
		s.i++
	}
	return nil
}

// str reads the string at s.i and returns its contents: the bytes between
// the quotes when it holds no escape, else the unescaped text.
func (s *jsonScan) str() ([]byte, error) {
	s.i++ // "
	start := s.i
	escaped := false
	for {
		c := s.b[s.i]
		if c == '"' {
			break
		}
		if c != '\\' {
			s.i++
			continue
		}
		escaped = true
		if s.b[s.i+1] != 'u' {
			s.i += 2
			continue
		}
		r := hex4(s.b[s.i+2 : s.i+6])
		s.i += 6
		switch {
		case r >= 0xdc00 && r <= 0xdfff:
			return nil, errJSONSurrogate
		case r >= 0xd800 && r <= 0xdbff:
			// Must be followed by the low half of the pair.
			if s.i+6 > len(s.b) || s.b[s.i] != '\\' || s.b[s.i+1] != 'u' {
				return nil, errJSONSurrogate
			}
			if lo := hex4(s.b[s.i+2 : s.i+6]); lo < 0xdc00 || lo > 0xdfff {
				return nil, errJSONSurrogate
			}
			s.i += 6
		}
	}
	raw := s.b[start:s.i]
	s.i++ // "
	if !escaped {
		return raw, nil
	}
	var text string
	if err := json.Unmarshal(s.b[start-1:s.i], &text); err != nil {
		return nil, errJSON
	}
	return []byte(text), nil
}

// hex4 is the value of four hexadecimal digits (valid, as JSON requires).
func hex4(b []byte) rune {
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// jsonStringBytes decodes a header member that must be a string: null is
// empty, any other non-string an error. The text is v's own bytes when it
// holds no escape.
func jsonStringBytes(v []byte) ([]byte, error) {
	if string(v) == "null" {
		return nil, nil
	}
	if len(v) < 2 || v[0] != '"' {
		return nil, errJSON
	}
	if bytes.IndexByte(v, '\\') < 0 {
		return v[1 : len(v)-1], nil
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return nil, errJSON
	}
	return []byte(s), nil
}
