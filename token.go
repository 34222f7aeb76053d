package wsauth

import (
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/caddyserver/caddy/v2"
)

// TokenSource is one place a token is read from.
type TokenSource struct {
	// One of query, header, cookie, subprotocol, first_message.
	Source string `json:"source"`

	// The query parameter (default: token), header (default:
	// Authorization), cookie (required), subprotocol marker (default:
	// access_token) or first message type (default: auth).
	Name string `json:"name,omitempty"`

	// For header: the authentication scheme before the token. Default:
	// Bearer for the Authorization header, none for other headers.
	Scheme string `json:"scheme,omitempty"`

	// For first_message: how long the client has to send its auth
	// message after the handshake. Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

type sourceKind uint8

const (
	sourceQuery sourceKind = iota
	sourceHeader
	sourceCookie
	sourceSubprotocol
	sourceFirstMessage
)

var sourceNames = [...]string{
	sourceQuery:        "query",
	sourceHeader:       "header",
	sourceCookie:       "cookie",
	sourceSubprotocol:  "subprotocol",
	sourceFirstMessage: "first_message",
}

func (k sourceKind) String() string { return sourceNames[k] }

// tokenSource is a TokenSource compiled at provision.
type tokenSource struct {
	kind   sourceKind
	name   string // query param, canonical header key, cookie name or marker
	scheme string // header scheme, without the space
}

const (
	defaultQueryParam = "token"
	defaultMarker     = "access_token"
	headerProtocol    = "Sec-Websocket-Protocol"
)

var defaultSources = []tokenSource{
	{kind: sourceQuery, name: defaultQueryParam},
	{kind: sourceHeader, name: "Authorization", scheme: "Bearer"},
}

// compileSources compiles the sources that are read from the request, and
// first_message, which is tried after all of them. It applies
// checkTokenSources first, so that it never compiles what the rules refuse.
func compileSources(cfg []TokenSource) ([]tokenSource, *firstMessage, error) {
	if len(cfg) == 0 {
		return defaultSources, nil, nil
	}
	if err := checkTokenSources(cfg); err != nil {
		return nil, nil, err
	}
	out := make([]tokenSource, 0, len(cfg))
	var fm *firstMessage
	for _, s := range cfg {
		var ts tokenSource
		switch s.Source {
		case "first_message":
			fm = &firstMessage{typ: cmpOr(s.Name, defaultFirstMessageType), timeout: time.Duration(s.Timeout)}
			if fm.timeout <= 0 {
				fm.timeout = defaultFirstMessageTimeout
			}
			continue
		case "query":
			ts = tokenSource{kind: sourceQuery, name: cmpOr(s.Name, defaultQueryParam)}
		case "header":
			name := textproto.CanonicalMIMEHeaderKey(cmpOr(s.Name, "Authorization"))
			scheme := s.Scheme
			if scheme == "" && name == "Authorization" {
				scheme = "Bearer"
			}
			ts = tokenSource{kind: sourceHeader, name: name, scheme: scheme}
		case "cookie":
			ts = tokenSource{kind: sourceCookie, name: s.Name}
		case "subprotocol":
			ts = tokenSource{kind: sourceSubprotocol, name: cmpOr(s.Name, defaultMarker)}
		}
		out = append(out, ts)
	}
	return out, fm, nil
}

// checkTokenSource applies the rules for a source's values, for the
// Caddyfile and JSON alike: a known source; a header, cookie or
// subprotocol that no request can carry is a configuration error, not a
// source that never yields. An empty name is the default, except for a
// cookie, which has none. checkTokenSources adds the rules across sources.
func checkTokenSource(s TokenSource) error {
	switch s.Source {
	case "query", "first_message":
	case "cookie":
		if s.Name == "" {
			return fmt.Errorf("token_source cookie: missing cookie name")
		}
	case "header", "subprotocol":
	default:
		return fmt.Errorf("token_source: unknown source %q (want query, header, cookie, subprotocol or first_message)", s.Source)
	}
	if s.Scheme != "" && s.Source != "header" {
		return fmt.Errorf("token_source %s: scheme applies to header only", s.Source)
	}
	switch s.Source {
	case "header":
		if s.Name != "" && !httpguts.ValidHeaderFieldName(s.Name) {
			return fmt.Errorf("token_source header: %q is not a valid header field name", s.Name)
		}
		// RFC 7235: auth-scheme = token.
		if s.Scheme != "" && !httpguts.ValidHeaderFieldName(s.Scheme) {
			return fmt.Errorf("token_source header: scheme %q is not a valid authentication scheme (a token: no spaces or separators)", s.Scheme)
		}
	case "cookie":
		// RFC 6265: cookie-name = token; net/http skips other names.
		if s.Name != "" && !httpguts.ValidHeaderFieldName(s.Name) {
			return fmt.Errorf("token_source cookie: %q is not a valid cookie name (a token: no spaces or separators)", s.Name)
		}
	case "subprotocol":
		// RFC 6455: each protocol is a token; the header is split on
		// commas and spaces are trimmed.
		if s.Name != "" && !httpguts.ValidHeaderFieldName(s.Name) {
			return fmt.Errorf("token_source subprotocol: marker %q is not a valid subprotocol (a token: no spaces, commas or separators)", s.Name)
		}
	}
	if s.Timeout != 0 && s.Source != "first_message" {
		return fmt.Errorf("token_source %s: timeout applies to first_message only", s.Source)
	}
	if s.Timeout < 0 || time.Duration(s.Timeout) > maxFirstMessageTimeout {
		return fmt.Errorf("token_source %s: timeout must be between 0 and %s", s.Source, maxFirstMessageTimeout)
	}
	return nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// extract returns the token from the first source that has one. A source
// that holds more than one token value (two token parameters, two
// Authorization lines, the marker twice) is refused: the upstream could read
// another value than the one verified. Cookies are the exception, since
// browsers send two cookies of one name when they were set for two paths:
// the first is verified, as net/http reads it, and the others never go on.
func extract(r *http.Request, sources []tokenSource) (string, *tokenSource, error) {
	for i := range sources {
		s := &sources[i]
		tok, n := s.read(r)
		if n > 1 && s.kind != sourceCookie {
			return "", s, errRepeatedToken
		}
		if tok != "" {
			return tok, s, nil
		}
	}
	return "", nil, nil
}

var errRepeatedToken = errString("more than one token value in one source")

// read returns the token s yields from r, and how many values for s the
// request holds, empty ones included: whatever read counts, strip removes.
func (s *tokenSource) read(r *http.Request) (string, int) {
	switch s.kind {
	case sourceQuery:
		return queryValue(r.URL.RawQuery, s.name)
	case sourceHeader:
		var tok string
		n, others := 0, 0
		for _, v := range r.Header[s.name] {
			if s.scheme == "" {
				v = strings.TrimSpace(v)
			} else if len(v) > len(s.scheme) && v[len(s.scheme)] == ' ' && strings.EqualFold(v[:len(s.scheme)], s.scheme) {
				v = strings.TrimSpace(v[len(s.scheme)+1:])
			} else {
				others++ // another scheme, or another spelling of it
				continue
			}
			if n++; n == 1 {
				tok = v
			}
		}
		if n > 0 {
			// Next to a token, any other line of the header is a value the
			// upstream might read instead (Basic, or "Bearer\t...").
			n += others
		}
		return tok, n
	case sourceCookie:
		n := 0
		for _, line := range r.Header["Cookie"] {
			for part := range strings.SplitSeq(line, ";") {
				if cookieName(part) == s.name {
					n++
				}
			}
		}
		if n == 0 {
			return "", 0
		}
		if c, err := r.Cookie(s.name); err == nil {
			return c.Value, n
		}
		return "", n
	case sourceSubprotocol:
		n := 0
		next := false
		var tok string
		eachProtocol(r.Header[headerProtocol], func(p string) bool {
			if next && n == 1 {
				tok = p
			}
			next = p == s.name
			if next {
				n++
			}
			return true
		})
		return tok, n
	}
	return "", 0
}

// cookieName is the name of one "name=value" part of a Cookie header, as
// net/http reads it: trimmed of ASCII spaces, so that "session =x" is the
// cookie session.
func cookieName(part string) string {
	name, _, _ := strings.Cut(textproto.TrimString(part), "=")
	return textproto.TrimString(name)
}

// strip removes every value of s from r, so that what goes upstream does
// not hold the token. With strip_token off, keepOnly makes a cookie source
// pass on the verified value alone.
func (s *tokenSource) strip(r *http.Request) {
	switch s.kind {
	case sourceQuery:
		r.URL.RawQuery = removeQueryParam(r.URL.RawQuery, s.name)
		// Caddy's handlers log RequestURI, not URL.
		if path, _, ok := strings.Cut(r.RequestURI, "?"); ok {
			if r.URL.RawQuery != "" {
				path += "?" + r.URL.RawQuery
			}
			r.RequestURI = path
		}
	case sourceHeader:
		r.Header.Del(s.name)
	case sourceCookie:
		s.keepCookie(r, "")
	case sourceSubprotocol:
		var kept []string
		skip := false
		eachProtocol(r.Header[headerProtocol], func(p string) bool {
			switch {
			case skip:
				skip = false
			case p == s.name:
				skip = true
			default:
				kept = append(kept, p)
			}
			return true
		})
		if len(kept) == 0 {
			r.Header.Del(headerProtocol)
		} else {
			r.Header[headerProtocol] = []string{strings.Join(kept, ", ")}
		}
	}
}

// keepCookie removes every cookie named s.name from r and, if value is not
// empty, adds it back once.
func (s *tokenSource) keepCookie(r *http.Request, value string) {
	var kept []string
	for _, line := range r.Header["Cookie"] {
		for part := range strings.SplitSeq(line, ";") {
			if part = textproto.TrimString(part); part != "" && cookieName(part) != s.name {
				kept = append(kept, part)
			}
		}
	}
	if value != "" {
		kept = append(kept, s.name+"="+value)
	}
	if len(kept) == 0 {
		r.Header.Del("Cookie")
	} else {
		r.Header["Cookie"] = []string{strings.Join(kept, "; ")}
	}
}

// eachProtocol calls fn for every entry of the comma-separated
// Sec-WebSocket-Protocol header lines, until fn returns false.
func eachProtocol(lines []string, fn func(string) bool) {
	for _, line := range lines {
		for line != "" {
			var p string
			p, line, _ = strings.Cut(line, ",")
			if p = strings.TrimSpace(p); p != "" && !fn(p) {
				return
			}
		}
	}
}

// queryValue returns the first value of key in a raw query string without
// building a url.Values map, and how many times key appears. Go splits a
// query at "&" only, but some servers also split at ";": a key after a
// ";" counts (so that a second token there is refused and stripped), but
// is never read as the token.
func queryValue(raw, key string) (string, int) {
	var tok string
	n := 0
	for raw != "" {
		var seg string
		seg, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(seg, "=")
		if strings.IndexByte(v, ';') >= 0 {
			n += semicolonKeys(v, key)
		}
		if k != key && !(strings.Contains(k, "%") && unescape(k) == key) {
			continue
		}
		if n++; n > 1 {
			continue
		}
		// Two IndexByte scans, vectorized, rather than ContainsAny, which
		// tests a token's every byte against a set.
		if strings.IndexByte(v, '%') >= 0 || strings.IndexByte(v, '+') >= 0 {
			v = unescape(v)
		}
		tok = v
	}
	return tok, n
}

// semicolonKeys counts the parts after a ";" in v whose key is key.
func semicolonKeys(v, key string) int {
	n := 0
	_, rest, _ := strings.Cut(v, ";")
	for rest != "" {
		var part string
		part, rest, _ = strings.Cut(rest, ";")
		if k, _, _ := strings.Cut(part, "="); k == key || strings.Contains(k, "%") && unescape(k) == key {
			n++
		}
	}
	return n
}

func removeQueryParam(raw, key string) string {
	var b strings.Builder
	for rest := raw; rest != ""; {
		var seg string
		seg, rest, _ = strings.Cut(rest, "&")
		k, v, _ := strings.Cut(seg, "=")
		if k == key || (strings.Contains(k, "%") && unescape(k) == key) || seg == "" ||
			strings.IndexByte(v, ';') >= 0 && semicolonKeys(v, key) > 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(seg)
	}
	return b.String()
}

func unescape(s string) string {
	u, err := url.QueryUnescape(s)
	if err != nil {
		return ""
	}
	return u
}
