package wsauth

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestRejections checks each reason of the table, in both modes, through
// a real Caddy: the close code a browser reads, or the HTTP status and its
// WWW-Authenticate header; and that nothing reached the upstream.
func TestRejections(t *testing.T) {
	const origin = "https://app.test"
	cases := []struct {
		name     string
		opts     dialOpts
		code     string // close mode
		status   int    // status mode
		wwwAuth  string
		noOrigin bool
	}{
		{name: "missing", opts: dialOpts{origin: origin}, code: "close 1008 missing", status: 401, wwwAuth: "Bearer"},
		{name: "invalid signature", opts: dialOpts{origin: origin, query: "token=" + sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-12345"), valid("alice"), "")},
			code: "close 1008 invalid", status: 401, wwwAuth: `Bearer error="invalid_token"`},
		{name: "expired", opts: dialOpts{origin: origin, query: "token=" + hs256(t, valid("alice", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Minute).Unix() }))},
			code: "close 4001 expired", status: 401, wwwAuth: `Bearer error="invalid_token", error_description="token expired"`},
		{name: "forbidden", opts: dialOpts{origin: origin, query: "token=" + hs256(t, valid("alice", func(c jwt.MapClaims) { c["scope"] = "chat:write" }))},
			code: "close 4003 forbidden", status: 403, wwwAuth: `Bearer error="insufficient_scope", scope="chat:read"`},
		{name: "origin not allowed", opts: dialOpts{origin: "https://evil.test", query: "token=" + hs256(t, valid("alice"))},
			code: "close 1008 origin", status: 403},
		{name: "origin missing", opts: dialOpts{query: "token=" + hs256(t, valid("alice"))},
			code: "close 1008 origin", status: 403},
	}
	for _, mode := range []string{"close", "status"} {
		t.Run(mode, func(t *testing.T) {
			up := newUpstream(t)
			addr := startCaddy(t, site(checks+"\n\t\treject "+mode), up.addr())
			for _, tc := range cases {
				c, resp, err := dial(addr, "/ws", tc.opts)
				got := outcome(t, c, resp, err)
				want := tc.code
				if mode == "status" {
					want = "status " + strconv.Itoa(tc.status)
					if h := resp.Header.Get("WWW-Authenticate"); h != tc.wwwAuth {
						t.Errorf("%s: WWW-Authenticate = %q, want %q", tc.name, h, tc.wwwAuth)
					}
				}
				if got != want {
					t.Errorf("%s: got %q, want %q", tc.name, got, want)
				}
			}
			if n := len(up.requests()); n != 0 {
				t.Errorf("upstream was dialed %d times for refused clients", n)
			}
		})
	}
}

// TestNonUpgradeGetsStatus: a plain HTTP request is refused with a status
// even in close mode, and passes untouched with upgrades_only.
func TestNonUpgradeGetsStatus(t *testing.T) {
	up := newUpstream(t)
	addr := startCaddy(t, `
	route /strict/* {
		ws_auth {
			secret `+testSecret+`
		}
		reverse_proxy %UPSTREAM%
	}
	route /loose/* {
		ws_auth {
			secret `+testSecret+`
			upgrades_only
		}
		reverse_proxy %UPSTREAM%
	}`, up.addr())

	resp, err := http.Get("http://" + addr + "/strict/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != "Bearer" {
		t.Errorf("plain request without token: %d %q, want 401 Bearer", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}

	resp, err = http.Get("http://" + addr + "/strict/x?token=" + hs256(t, claims("alice")))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("plain request with a valid token: %d, want 200", resp.StatusCode)
	}

	resp, err = http.Get("http://" + addr + "/loose/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("upgrades_only, plain request: %d, want 200", resp.StatusCode)
	}
	c, resp, err := dial(addr, "/loose/ws", dialOpts{})
	if got := outcome(t, c, resp, err); got != "close 1008 missing" {
		t.Errorf("upgrades_only, upgrade without token: %s", got)
	}
}

// TestSourcesAndPlaceholders connects with a valid token from each source
// and checks what the upstream received: the placeholders it was
// configured to get, and never the token.
func TestSourcesAndPlaceholders(t *testing.T) {
	up := newUpstream(t)
	addr := startCaddy(t, site(`
		token_source query access
		token_source header
		token_source header X-Token
		token_source cookie ws_token
		token_source subprotocol
		allowed_origins https://app.test`), up.addr())

	tok := hs256(t, claims("alice", func(c jwt.MapClaims) {
		c["org"] = map[string]any{"id": 4711, "name": "acme"}
		c["roles"] = []string{"admin", "ops"}
		c["num"] = 12345678901234567
	}))
	exp := claims("x")["exp"].(int64)
	cases := []struct {
		source string
		opts   dialOpts
	}{
		{"query", dialOpts{query: "a=1&access=" + tok + "&b=2"}},
		{"header", dialOpts{header: http.Header{"Authorization": {"Bearer " + tok}}}},
		{"header", dialOpts{header: http.Header{"X-Token": {tok}}}},
		{"cookie", dialOpts{header: http.Header{"Cookie": {"a=1; ws_token=" + tok + "; b=2"}}}},
		{"subprotocol", dialOpts{protocols: []string{"access_token", tok, "chat"}}},
		{"subprotocol", dialOpts{protocols: []string{"access_token", tok}}},
	}
	for i, tc := range cases {
		tc.opts.origin = "https://app.test"
		c, resp, err := dial(addr, "/ws", tc.opts)
		if err != nil {
			t.Fatalf("%s: dial: %v", tc.source, err)
		}
		if len(tc.opts.protocols) > 0 {
			want := "chat"
			if len(tc.opts.protocols) == 2 {
				want = "access_token" // the upstream selected none
			}
			if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != want {
				t.Errorf("%s: client got subprotocol %q, want %q", tc.source, got, want)
			}
		}
		if got := outcome(t, c, resp, err); got != "accepted" {
			t.Fatalf("%s: %s", tc.source, got)
		}
		reqs := up.requests()
		if len(reqs) != i+1 {
			t.Fatalf("upstream saw %d requests, want %d", len(reqs), i+1)
		}
		r := reqs[i]
		want := map[string]string{
			"X-User":    "alice",
			"X-Scopes":  "chat:read chat:write",
			"X-Jti":     "jti-alice",
			"X-Source":  tc.source,
			"X-Expires": time.Unix(exp, 0).UTC().Format(time.RFC3339),
			"X-Org":     "4711",
			"X-Roles":   "admin,ops",
			"X-Num":     "12345678901234567",
		}
		for k, v := range want {
			if got := r.Header.Get(k); got != v && !(k == "X-Expires" && got != "") {
				t.Errorf("%s: upstream %s = %q, want %q", tc.source, k, got, v)
			}
		}
		all := r.URI + " " + mustJSON(r.Header)
		if strings.Contains(all, tok) || strings.Contains(all, strings.Split(tok, ".")[2]) {
			t.Errorf("%s: the token reached the upstream: %s", tc.source, all)
		}
		if tc.source == "query" && r.URI != "/ws?a=1&b=2" {
			t.Errorf("query: upstream URI = %q, want /ws?a=1&b=2", r.URI)
		}
		if tc.source == "cookie" && r.Header.Get("Cookie") != "a=1; b=2" {
			t.Errorf("cookie: upstream Cookie = %q, want the other cookies", r.Header.Get("Cookie"))
		}
		if tc.source == "subprotocol" && len(tc.opts.protocols) == 3 && r.Header.Get("Sec-Websocket-Protocol") != "chat" {
			t.Errorf("subprotocol: upstream got %q, want only the app protocol", r.Header.Get("Sec-Websocket-Protocol"))
		}
	}
}

// TestStripTokenOff keeps the token for upstreams that want it.
func TestStripTokenOff(t *testing.T) {
	up := newUpstream(t)
	addr := startCaddy(t, site("strip_token off"), up.addr())
	tok := hs256(t, claims("bob"))
	c, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + tok})
	if got := outcome(t, c, resp, err); got != "accepted" {
		t.Fatal(got)
	}
	if r := up.requests(); len(r) != 1 || !strings.Contains(r[0].URI, tok) {
		t.Errorf("strip_token off: upstream URI lacks the token")
	}
}

// TestCloseCodeOverride changes a reason's code.
func TestCloseCodeOverride(t *testing.T) {
	up := newUpstream(t)
	addr := startCaddy(t, site("close_code expired 4401\n\t\tclose_code missing 4000"), up.addr())
	tok := hs256(t, claims("bob", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() }))
	c, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + tok})
	if got := outcome(t, c, resp, err); got != "close 4401 expired" {
		t.Errorf("expired: %s", got)
	}
	c, resp, err = dial(addr, "/ws", dialOpts{})
	if got := outcome(t, c, resp, err); got != "close 4000 missing" {
		t.Errorf("missing: %s", got)
	}
}

// TestBase64Secret takes raw key bytes.
func TestBase64Secret(t *testing.T) {
	key := []byte{0, 1, 2, 3, 250, 251, 252, 253, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9}
	up := newUpstream(t)
	addr := startCaddy(t, `
	ws_auth {
		secret base64:`+base64.StdEncoding.EncodeToString(key)+`
	}
	reverse_proxy %UPSTREAM%`, up.addr())
	tok := sign(t, jwt.SigningMethodHS256, key, claims("carol"), "")
	c, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + tok})
	if got := outcome(t, c, resp, err); got != "accepted" {
		t.Errorf("base64 secret: %s", got)
	}
}

// TestStripEverySource: with strip_token on, tokens in the sources that
// did not win are removed too; credentials that are not tokens stay.
func TestStripEverySource(t *testing.T) {
	up := newUpstream(t)
	addr := startCaddy(t, site(`
		token_source query
		token_source header
		token_source cookie session
		allowed_origins https://app.test`), up.addr())
	q, other := hs256(t, claims("alice")), hs256(t, claims("bob"))
	c, resp, err := dial(addr, "/ws", dialOpts{origin: "https://app.test", query: "token=" + q, header: http.Header{
		"Authorization": {"Bearer " + other},
		"Cookie":        {"theme=dark; session=" + other},
	}})
	if got := outcome(t, c, resp, err); got != "accepted" {
		t.Fatal(got)
	}
	r := up.requests()[0]
	if all := r.URI + mustJSON(r.Header); strings.Contains(all, q) || strings.Contains(all, other) {
		t.Errorf("a token reached the upstream: %s", all)
	}
	if r.Header.Get("Cookie") != "theme=dark" || r.Header.Get("X-User") != "alice" {
		t.Errorf("upstream Cookie %q, X-User %q; want the other cookie kept and alice", r.Header.Get("Cookie"), r.Header.Get("X-User"))
	}

	// Basic credentials are not a Bearer token: they go on.
	c, resp, err = dial(addr, "/ws", dialOpts{origin: "https://app.test", query: "token=" + q, header: http.Header{"Authorization": {"Basic dXNlcjpwdw=="}}})
	if got := outcome(t, c, resp, err); got != "accepted" {
		t.Fatal(got)
	}
	if a := up.requests()[1].Header.Get("Authorization"); a != "Basic dXNlcjpwdw==" {
		t.Errorf("upstream Authorization = %q, want the Basic credentials", a)
	}
}

// TestSubprotocolMarkerWithoutStrip: with strip_token off the client still
// gets the marker selected when the upstream selects none.
func TestSubprotocolMarkerWithoutStrip(t *testing.T) {
	up := newUpstream(t)
	addr := startCaddy(t, site("token_source subprotocol\n\t\tstrip_token off"), up.addr())
	c, resp, err := dial(addr, "/ws", dialOpts{protocols: []string{"access_token", hs256(t, claims("alice"))}})
	if err != nil {
		t.Fatal(err)
	}
	if p := resp.Header.Get("Sec-WebSocket-Protocol"); p != "access_token" {
		t.Errorf("selected %q, want access_token", p)
	}
	if got := outcome(t, c, resp, err); got != "accepted" {
		t.Error(got)
	}
}

// TestScopeClaim: scopes come from the configured claim, for the check and
// for {ws_auth.scopes}.
func TestScopeClaim(t *testing.T) {
	up := newUpstream(t)
	addr := startCaddy(t, site("scope_claim perms\n\t\tscopes chat:write"), up.addr())
	tok := hs256(t, claims("alice", func(c jwt.MapClaims) {
		c["scope"] = "other"
		c["perms"] = []string{"chat:*", "admin"}
	}))
	c, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + tok})
	if got := outcome(t, c, resp, err); got != "accepted" {
		t.Fatal(got)
	}
	if s := up.requests()[0].Header.Get("X-Scopes"); s != "chat:* admin" {
		t.Errorf("X-Scopes = %q, want the perms claim", s)
	}
	tok = hs256(t, claims("alice", func(c jwt.MapClaims) { c["scope"] = "chat:write" }))
	c, resp, err = dial(addr, "/ws", dialOpts{query: "token=" + tok})
	if got := outcome(t, c, resp, err); got != "close 4003 forbidden" {
		t.Errorf("scope in the wrong claim: %s", got)
	}
}
