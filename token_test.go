package wsauth

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestQueryValue(t *testing.T) {
	cases := []struct {
		raw, key, want string
		n              int
		stripped       string
	}{
		{"token=abc", "token", "abc", 1, ""},
		{"a=1&token=abc&b=2", "token", "abc", 1, "a=1&b=2"},
		{"a=1&tok%65n=abc", "token", "abc", 1, "a=1"},
		{"token=a%2Bb+c", "token", "a+b c", 1, ""},
		{"tokens=x&token=y", "token", "y", 1, "tokens=x"},
		{"token=1&token=2", "token", "1", 2, ""},
		{"token=&token=2", "token", "", 2, ""},
		{"token=1&tok%65n=2", "token", "1", 2, ""},
		{"a=1&token", "token", "", 1, "a=1"},
		{"a=1", "token", "", 0, "a=1"},
		{"&&token=z&&", "token", "z", 1, ""},
		{"token=a&x=1;token=b", "token", "a", 2, ""},
		{"x=1;token=b&y=2", "token", "", 1, "y=2"},
		{"x=1;y=2", "token", "", 0, "x=1;y=2"},
	}
	for _, tc := range cases {
		if got, n := queryValue(tc.raw, tc.key); got != tc.want || n != tc.n {
			t.Errorf("queryValue(%q, %q) = %q, %d, want %q, %d", tc.raw, tc.key, got, n, tc.want, tc.n)
		}
		if got := removeQueryParam(tc.raw, tc.key); got != tc.stripped {
			t.Errorf("removeQueryParam(%q, %q) = %q, want %q", tc.raw, tc.key, got, tc.stripped)
		}
	}
}

func TestOrigins(t *testing.T) {
	m, err := compileOrigins([]string{"https://app.example.com", "https://*.example.org", "http://localhost:8080/"})
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]bool{
		"https://app.example.com":       true,
		"https://APP.example.com":       true,
		"http://app.example.com":        false,
		"https://app.example.com:444":   false,
		"https://a.example.org":         true,
		"https://a.b.example.org":       true,
		"https://example.org":           false,
		"https://evil.com/.example.org": false,
		"https://evilexample.org":       false,
		"https://x:1@a.example.org":     false,
		"http://localhost:8080":         true,
		"null":                          false,
		"":                              false,
	}
	for origin, want := range cases {
		if got := m.allowed(origin); got != want {
			t.Errorf("allowed(%q) = %v, want %v", origin, got, want)
		}
	}
	for _, bad := range []string{"example.com", "https://", "https://a.*.com", "https://*", "https://app.example.com/path"} {
		if _, err := compileOrigins([]string{bad}); err == nil {
			t.Errorf("compileOrigins(%q): no error", bad)
		}
	}
}

// FuzzTokenSources: whatever the request, extraction does not panic, and
// after strip a source holds no value at all: not the token, nor an empty
// or repeated value that another reader might take for one, and net/http
// finds no cookie of that name.
func FuzzTokenSources(f *testing.F) {
	f.Add("token=abc&x=1", "Bearer abc", "a=1; ws=abc", "access_token, abc, chat")
	f.Add("tok%65n=a%2Bb", "bearer  x", "ws=", ",,access_token")
	f.Add("", "", "", "access_token")
	f.Add("token=&token=abc", "Bearer abc", "ws =abc; ws=\"def\"", "access_token, a, access_token, b")
	f.Add("token", "Basic abc", " ws\t=abc", "access_token")
	sources, _, err := compileSources([]TokenSource{
		{Source: "query"}, {Source: "header"}, {Source: "cookie", Name: "ws"}, {Source: "subprotocol"},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, query, auth, cookie, protocols string) {
		r := httptest.NewRequest(http.MethodGet, "/ws", nil)
		r.URL.RawQuery = query
		r.Header.Set("Authorization", auth)
		r.Header.Set("Cookie", cookie)
		r.Header.Set("Sec-WebSocket-Protocol", protocols)
		for i := range sources {
			s := &sources[i]
			tok, n := s.read(r)
			if n == 0 {
				if tok != "" {
					t.Errorf("%s: token %q from no value", s.kind, tok)
				}
				continue
			}
			s.strip(r)
			if again, n := s.read(r); n != 0 {
				t.Errorf("%s: %d values (%q) still there after strip (token was %q)", s.kind, n, again, tok)
			}
			if c, err := r.Cookie("ws"); s.kind == sourceCookie && err == nil {
				t.Errorf("cookie ws=%q still there after strip", c.Value)
			}
		}
	})
}

func TestFrameHeader(t *testing.T) {
	var buf [maxFrameHeader]byte
	cases := []struct {
		in      []byte
		op      byte
		length  int64
		masked  bool
		wantErr bool
	}{
		{[]byte{0x81, 0x85, 1, 2, 3, 4}, opText, 5, true, false},
		{[]byte{0x82, 126, 0x01, 0x00}, opBinary, 256, false, false},
		{[]byte{0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0}, opBinary, 65536, false, false},
		{[]byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0}, 0, 0, false, true}, // length MSB set
		{[]byte{0x09, 0x00}, 0, 0, false, true},                           // fragmented ping
		{[]byte{0x89, 126, 0, 200}, 0, 0, false, true},                    // control frame over 125
		{[]byte{0x81}, 0, 0, false, true},                                 // short
	}
	for _, tc := range cases {
		h, err := readFrameHeader(bytes.NewReader(tc.in), &buf)
		if (err != nil) != tc.wantErr {
			t.Errorf("% x: err = %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if err == nil && (h.opcode != tc.op || h.length != tc.length || h.masked != tc.masked) {
			t.Errorf("% x: got op %d len %d masked %v", tc.in, h.opcode, h.length, h.masked)
		}
	}

	frame := appendCloseFrame(nil, 4001, "expired")
	if want := []byte{0x88, 9, 0x0F, 0xA1, 'e', 'x', 'p', 'i', 'r', 'e', 'd'}; !bytes.Equal(frame, want) {
		t.Errorf("close frame = % x, want % x", frame, want)
	}
	if long := appendCloseFrame(nil, 1008, strings.Repeat("x", 300)); len(long) != 2+125 {
		t.Errorf("close frame with a long reason is %d bytes, want 127", len(long))
	}
}

// FuzzFrameHeader: any bytes give a header or an error, never a panic, a
// negative length or an oversized control frame.
func FuzzFrameHeader(f *testing.F) {
	f.Add([]byte{0x81, 0x85, 1, 2, 3, 4})
	f.Add([]byte{0x82, 127, 0xff, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var buf [maxFrameHeader]byte
		h, err := readFrameHeader(bytes.NewReader(b), &buf)
		if err != nil {
			return
		}
		if h.length < 0 || (h.opcode >= opClose && (h.length > 125 || !h.fin)) {
			t.Errorf("% x: accepted header %+v", b, h)
		}
	})
}
