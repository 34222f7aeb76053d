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
//   - b is one valid JSON object (RFC 8259) and valid UTF-8, escapes
//     included: a lone surrogate such as "\ud800" is refused, where
//     encoding/json would put U+FFFD in its place;
//   - no object, at any depth, has two members of the same name, once
//     escapes are undone ("sub" and "s\u0075b" are the same name);
//   - names are handed over exactly as written (unescaped), so that a
//     caller matching "sub" is not handed "SUB", which encoding/json would
//     put in a field tagged "sub".
//
// member is called for every member of the top-level object, in order,
// with its name and its value as raw JSON; an error from it ends the read.
// Objects and arrays nest at most maxJSONDepth deep. FuzzStrictObject holds
// it to encoding/json: it accepts nothing that json.Valid refuses, and
// hands over the members that json.Unmarshal finds.
func strictObject(b []byte, member func(name, value []byte) error) error {
	if !utf8.Valid(b) {
		return errJSON
	}
	s := jsonScan{b: b}
	s.space()
	if s.peek() != '{' {
		return errJSONNotObject
	}
	if err := s.object(member, 1); err != nil {
		return err
	}
	s.space()
	if s.i != len(b) {
		return errJSON
	}
	return nil
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

// jsonScan reads JSON, checking its syntax as it goes.
type jsonScan struct {
	b []byte
	i int
}

// peek is the byte at s.i, or 0 at the end (0 is nowhere valid in JSON
// outside a string, and str refuses it inside).
func (s *jsonScan) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
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

// object reads the object at s.i (its '{'), reporting its members to
// member if it is not nil.
func (s *jsonScan) object(member func(name, value []byte) error, depth int) error {
	if depth > maxJSONDepth {
		return errJSONDepth
	}
	s.i++ // {
	var small [16][]byte
	names := small[:0]
	var many map[string]struct{}
	s.space()
	if s.peek() == '}' {
		s.i++
		return nil
	}
	for {
		if s.peek() != '"' {
			return errJSON
		}
		name, err := s.str()
		if err != nil {
			return err
		}
		// Duplicates: a linear search while the object is small, a map
		// beyond, so that a large object costs no more than linear time.
		if many == nil && len(names) < len(small) {
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
		if s.peek() != ':' {
			return errJSON
		}
		s.i++
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
		switch s.peek() {
		case ',':
			s.i++
			s.space()
		case '}':
			s.i++
			return nil
		default:
			return errJSON
		}
	}
}

// value reads the value at s.i, of an object or array at depth.
func (s *jsonScan) value(depth int) error {
	switch c := s.peek(); c {
	case '{':
		return s.object(nil, depth+1)
	case '[':
		if depth+1 > maxJSONDepth {
			return errJSONDepth
		}
		s.i++
		s.space()
		if s.peek() == ']' {
			s.i++
			return nil
		}
		for {
			if err := s.value(depth + 1); err != nil {
				return err
			}
			s.space()
			switch s.peek() {
			case ',':
				s.i++
				s.space()
			case ']':
				s.i++
				return nil
			default:
				return errJSON
			}
		}
	case '"':
		_, err := s.str()
		return err
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	default:
		if c == '-' || c >= '0' && c <= '9' {
			return s.number()
		}
		return errJSON
	}
}

func (s *jsonScan) literal(lit string) error {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return errJSON
	}
	s.i += len(lit)
	return nil
}

// number reads -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *jsonScan) number() error {
	if s.peek() == '-' {
		s.i++
	}
	switch c := s.peek(); {
	case c == '0':
		s.i++
	case c >= '1' && c <= '9':
		s.digits()
	default:
		return errJSON
	}
	if s.peek() == '.' {
		s.i++
		if !s.digits() {
			return errJSON
		}
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.i++
		if c := s.peek(); c == '+' || c == '-' {
			s.i++
		}
		if !s.digits() {
			return errJSON
		}
	}
	return nil
}

// digits skips [0-9]* and reports whether there was one.
func (s *jsonScan) digits() bool {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

// str reads the string at s.i (its opening quote) and returns its
// contents: the bytes between the quotes when it holds no escape, else the
// unescaped text.
func (s *jsonScan) str() ([]byte, error) {
	s.i++ // "
	start := s.i
	escaped := false
	for {
		if s.i >= len(s.b) {
			return nil, errJSON
		}
		c := s.b[s.i]
		if c == '"' {
			break
		}
		if c < 0x20 {
			return nil, errJSON
		}
		if c != '\\' {
			s.i++
			continue
		}
		escaped = true
		switch s.peekAt(1) {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			s.i += 2
			continue
		case 'u':
		default:
			return nil, errJSON
		}
		r := s.hexAt(2)
		s.i += 6
		switch {
		case r < 0:
			return nil, errJSON
		case r >= 0xdc00 && r <= 0xdfff:
			return nil, errJSONSurrogate
		case r >= 0xd800 && r <= 0xdbff:
			// Must be followed by the low half of the pair.
			if s.peekAt(0) != '\\' || s.peekAt(1) != 'u' {
				return nil, errJSONSurrogate
			}
			if lo := s.hexAt(2); lo < 0xdc00 || lo > 0xdfff {
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

func (s *jsonScan) peekAt(n int) byte {
	if s.i+n < len(s.b) {
		return s.b[s.i+n]
	}
	return 0
}

// hexAt is the value of the four hexadecimal digits at s.i+n, or -1.
func (s *jsonScan) hexAt(n int) rune {
	if s.i+n+4 > len(s.b) {
		return -1
	}
	var r rune
	for _, c := range s.b[s.i+n : s.i+n+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
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
