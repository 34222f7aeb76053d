package wsauth

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Rules that need no network are tested on a provisioned Handler, without
// starting Caddy.

// newHandler provisions and validates h as Caddy would, without a server,
// and sends its logs to an observer the test can read.
func newHandler(t testing.TB, h *Handler) (*Handler, *observer.ObservedLogs) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(core)
	return h, logs
}

// requestIn is a request as Caddy hands it to a handler: with a replacer
// and extra access log fields in its context.
func requestIn(method, target string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())
	ctx = context.WithValue(ctx, caddyhttp.ExtraLogFieldsCtxKey, new(caddyhttp.ExtraLogFields))
	return r.WithContext(ctx)
}

// TestClaimRules: the token checks, one rule at a time, on the handler
// alone: verify, authorize and admit give the reason the table says.
func TestClaimRules(t *testing.T) {
	h, _ := newHandler(t, &Handler{
		Secrets:    []string{testSecret},
		Issuers:    []string{"https://issuer.test"},
		Audiences:  []string{"chat-api"},
		Scopes:     []string{"chat:read"},
		UserClaim:  "email",
		RateLimits: &RateLimits{Handshakes: &HandshakeRate{Events: 1, Window: caddy.Duration(time.Hour), Per: "user"}},
	})
	good := func(mods ...func(jwt.MapClaims)) string {
		base := []func(jwt.MapClaims){func(c jwt.MapClaims) {
			c["iss"], c["aud"], c["email"] = "https://issuer.test", "chat-api", "dana@example.test"
		}}
		return hs256(t, claims("dana", append(base, mods...)...))
	}
	for _, tc := range []struct {
		name  string
		token string
		want  string // a reason, or "" for accepted
	}{
		{"valid", good(), ""},
		{"the same user again: over the rate", good(), "rate_limited"},
		{"another issuer", good(func(c jwt.MapClaims) { c["iss"] = "https://other.test" }), "invalid"},
		{"another audience", good(func(c jwt.MapClaims) { c["aud"] = []string{"a", "b"} }), "invalid"},
		{"no user claim", good(func(c jwt.MapClaims) { delete(c, "email") }), "invalid"},
		{"user claim not a string", good(func(c jwt.MapClaims) { c["email"] = 42 }), "invalid"},
		{"expired", good(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Minute).Unix() }), "expired"},
		{"missing scope", good(func(c jwt.MapClaims) { c["email"], c["scope"] = "erin@example.test", "chat:write" }), "forbidden"},
		{"wildcard scope", good(func(c jwt.MapClaims) { c["email"], c["scope"] = "fay@example.test", "chat:*" }), ""},
	} {
		var id identity
		ref := h.checkToken(tc.token, &id)
		got := ""
		if ref != nil {
			got = ref.reason.String()
		}
		if got != tc.want {
			t.Errorf("%s: refused as %q, want %q (detail %v)", tc.name, got, tc.want, ref)
		}
	}
}

// TestRefuseFunnel: every refusal goes through one function that logs it
// once with its reason and detail and answers with the table's status and
// headers; Retry-After comes from the refusal.
func TestRefuseFunnel(t *testing.T) {
	h, logs := newHandler(t, &Handler{Secrets: []string{testSecret}, Reject: "status", Scopes: []string{"chat:read"}})
	for _, tc := range []struct {
		ref    *refusal
		status int
		header string
		value  string
		logged string
	}{
		{refuseMissing, 401, "WWW-Authenticate", "Bearer", ""},
		{&refusal{reason: reasonInvalid, detail: errSignature}, 401, "WWW-Authenticate", `Bearer error="invalid_token"`, "signature invalid"},
		{&refusal{reason: reasonForbidden, detail: errString("scope not granted: chat:read")}, 403, "WWW-Authenticate", `Bearer error="insufficient_scope", scope="chat:read"`, "scope not granted: chat:read"},
		{&refusal{reason: reasonRateLimited, detail: errRateIP, retry: 2500 * time.Millisecond}, 429, "Retry-After", "3", "handshake rate of the client IP exceeded"},
		{refuseBlockedIP, 403, "WWW-Authenticate", "", "client IP blocked"},
		{&refusal{reason: reasonUnavailable, detail: errKeysUnavailable}, 503, "Retry-After", "", "signing keys unavailable"},
	} {
		logs.TakeAll()
		rec := httptest.NewRecorder()
		if err := h.refuse(&handshake{w: rec, r: requestIn(http.MethodGet, "/ws")}, tc.ref); err != nil {
			t.Fatal(err)
		}
		name := tc.ref.reason.String()
		if rec.Code != tc.status || rec.Header().Get(tc.header) != tc.value {
			t.Errorf("%s: status %d, %s %q; want %d, %q", name, rec.Code, tc.header, rec.Header().Get(tc.header), tc.status, tc.value)
		}
		entries := logs.FilterMessage("websocket refused").AllUntimed()
		if len(entries) != 1 {
			t.Errorf("%s: %d log entries, want 1", name, len(entries))
			continue
		}
		fields := entries[0].ContextMap()
		if fields["reason"] != name || tc.logged != "" && fields["detail"] != tc.logged {
			t.Errorf("%s: logged %v", name, fields)
		}
	}
}

// TestClientStreamHTTP1: the module's own answer to a WebSocket handshake
// over HTTP/1.1: a 101 that selects the offered protocol, one Close frame,
// the client's Close awaited, then the connection closed. (Over HTTP/2 and
// HTTP/3 the same stream is tested through Caddy: TestHTTP2FirstMessage,
// TestHTTP3WebSocket.)
func TestClientStreamHTTP1(t *testing.T) {
	done := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cs, err := acceptStream(w, r, selectProtocol(r, ""), nil)
		if err == nil {
			cs.close(4003, "forbidden", true)
		}
		done <- err
	}))
	defer srv.Close()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, Subprotocols: []string{"a b", "chat"}}
	c, _, err := d.Dial("ws"+srv.URL[len("http"):], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Subprotocol() != "chat" {
		t.Errorf("selected %q, want chat", c.Subprotocol())
	}
	if got := readClose(c); got != "close 4003 forbidden" {
		t.Errorf("got %s, want close 4003 forbidden", got)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("acceptStream: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler did not end after the close handshake")
	}
}

// TestHandshakeAllocs: an accepted HS256 handshake, fully checked (the
// token cache off), allocates only what outlives it: the connection's
// watch, the placeholders' function and its registration with the
// replacer, and the user, jti and scope strings (the handshake, the decode
// buffers and the HMAC's sum stay off the heap; a change that moves one
// there shows here first). An iss or aud equal to a configured one is that
// string, not a copy.
func TestHandshakeAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector drops pooled objects at random")
	}
	off := 0
	h, _ := newHandler(t, &Handler{
		TokenSources: []TokenSource{{Source: "query"}},
		Issuers:      []string{"bench-issuer", "bench&issuer"},
		Audiences:    []string{"other", "bench-aud"},
		Secrets:      []string{testSecret},
		TokenCache:   &TokenCache{Entries: &off},
	})
	h.logger = zap.NewNop()
	tok := sign(t, jwt.SigningMethodHS256, []byte(testSecret), benchClaims(), "")
	const runs = 100
	reqs := make([]*http.Request, runs+1)
	for i := range reqs {
		reqs[i] = upgradeRequest("/ws?token=" + tok)
	}
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	w := httptest.NewRecorder()
	i := 0
	n := testing.AllocsPerRun(runs, func() {
		if err := h.ServeHTTP(w, reqs[i], next); err != nil {
			t.Fatal(err)
		}
		i++
	})
	if n > 6 {
		t.Errorf("an accepted handshake allocates %v times, want at most 6", n)
	}

	var id identity
	if ref := h.verify(tok, &id); ref != nil {
		t.Fatal(ref.detail)
	}
	if unsafe.StringData(id.claims.Issuer.s) != unsafe.StringData(h.issuers[0]) {
		t.Error("iss is a copy of the configured issuer")
	}
	if unsafe.StringData(id.claims.Audience.one.s) != unsafe.StringData(h.audiences[1]) {
		t.Error("aud is a copy of the configured audience")
	}
	// Spelled with an escape (encoding/json writes "&" as \u0026), an
	// issuer is decoded, and accepted.
	c := benchClaims()
	c["iss"] = "bench&issuer"
	esc := sign(t, jwt.SigningMethodHS256, []byte(testSecret), c, "")
	if payload, _ := b64.DecodeString(strings.Split(esc, ".")[1]); !strings.Contains(string(payload), `\u0026`) {
		t.Fatalf("the payload has no escape: %s", payload)
	}
	id = identity{}
	if ref := h.verify(esc, &id); ref != nil || id.claims.Issuer.s != "bench&issuer" {
		t.Errorf("iss with an escape: %v, %q", ref, id.claims.Issuer.s)
	}
}

// TestWebSocketPlaceholders: an accepted WebSocket's placeholders are read
// from its watch, and show the identity as the handshake accepted it while
// the connection lives, after a refresh message replaced the token it runs
// under (jti and expiry included, as its claims), and after it ended
// (Caddy's access log reads them then). A plain request's, from a copy of
// their own, show the same.
func TestWebSocketPlaceholders(t *testing.T) {
	h, _ := newHandler(t, &Handler{
		TokenSources:   []TokenSource{{Source: "query"}},
		Secrets:        []string{testSecret},
		RefreshMessage: "refresh_token",
	})
	h.logger = zap.NewNop()
	exp := time.Now().Add(time.Hour).Unix()
	tok := hs256(t, claims("alice", func(c jwt.MapClaims) {
		c["exp"] = exp
		c["scope"] = []string{"chat:read", "chat:write"}
		c["org"] = map[string]any{"id": 4711}
	}))
	newTok := hs256(t, claims("alice", func(c jwt.MapClaims) {
		c["exp"] = exp + 600
		c["jti"] = "jti-refreshed"
		c["scope"] = "chat:read"
		c["org"] = map[string]any{"id": 1}
	}))
	want := map[string]string{
		"http.auth.user.id":     "alice",
		"ws_auth.jti":           "jti-alice",
		"ws_auth.expires":       time.Unix(exp, 0).UTC().Format(time.RFC3339),
		"ws_auth.scopes":        "chat:read chat:write",
		"ws_auth.token_source":  "query",
		"ws_auth.claims.org.id": "4711",
		"ws_auth.claims.jti":    "jti-alice",
		"ws_auth.claims.none":   "",
	}
	check := func(when string, r *http.Request) {
		t.Helper()
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		for key, v := range want {
			if got, ok := repl.GetString(key); !ok || got != v {
				t.Errorf("%s: {%s} = %q (%v), want %q", when, key, got, ok, v)
			}
		}
	}

	r := upgradeRequest("/ws?token=" + tok)
	var c *liveConn
	err := h.ServeHTTP(httptest.NewRecorder(), r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		check("open", r)
		c = w.(*liveWriter).lc
		var client bytes.Buffer
		c.dst, c.heapIdx = &client, -1 // as if started, without expire_connections
		c.refreshWith(newTok)
		if !strings.Contains(client.String(), `"refresh_token_ok"`) {
			t.Fatalf("the refresh was not taken: the client got %q", client.String())
		}
		check("after a refresh", r)
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	check("ended", r)
	if c.jti != "jti-refreshed" || c.expires.Unix() != exp+600 {
		t.Errorf("the connection runs under jti %q until %v, want the refreshed token's", c.jti, c.expires)
	}

	r = upgradeRequest("/api?token=" + tok)
	r.Header.Del("Upgrade")
	r.Header.Del("Connection")
	err = h.ServeHTTP(httptest.NewRecorder(), r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		if _, ok := w.(*liveWriter); ok {
			t.Error("a plain request got a watch")
		}
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	check("plain request", r)
}
