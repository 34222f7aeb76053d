package demo

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

const testSecret = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"

// testContext returns a Caddy context for provisioning, cancelled when the
// test ends.
func testContext(t *testing.T) caddy.Context {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	return ctx
}

// fixClock makes the login handler's clock return at, until the test ends.
func fixClock(t *testing.T, at time.Time) {
	t.Helper()
	old := now
	now = func() time.Time { return at }
	t.Cleanup(func() { now = old })
}

func newLogin(t *testing.T, l *Login) *Login {
	t.Helper()
	if err := l.Provision(testContext(t)); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	return l
}

// postLogin sends body to l as a JSON POST and returns the recorded response.
func postLogin(t *testing.T, l *Login, body string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/login", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	if err := l.ServeHTTP(rec, req, nil); err != nil {
		t.Fatalf("ServeHTTP(%s): %v", body, err)
	}
	return rec
}

// tokenOf decodes a successful login response.
func tokenOf(t *testing.T, rec *httptest.ResponseRecorder) loginResponse {
	t.Helper()
	if rec.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200; body %s", rec.Code, rec.Body)
	}
	var resp loginResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatalf("decoding response %q: %v", rec.Body, err)
	}
	return resp
}

func TestLoginIssuesVerifiableToken(t *testing.T) {
	issued := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	fixClock(t, issued)
	l := newLogin(t, &Login{Secret: testSecret, Issuer: "demo-issuer", Audience: "demo-audience"})

	rec := postLogin(t, l, `{"user":"alice@example.com","scope":" chat:read   chat:write ","ttl":"90s"}`)
	resp := tokenOf(t, rec)
	if got := rec.Header().Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", got)
	}
	if got := rec.Header().Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", got)
	}
	if want := issued.Add(90 * time.Second).Unix(); resp.Expires != want {
		t.Errorf("expires = %d, want %d", resp.Expires, want)
	}

	var claims demoClaims
	tok, err := jwt.ParseWithClaims(resp.Token, &claims,
		func(*jwt.Token) (any, error) { return []byte(testSecret), nil },
		jwt.WithValidMethods([]string{"HS256"}),
		jwt.WithIssuer("demo-issuer"),
		jwt.WithAudience("demo-audience"),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithTimeFunc(func() time.Time { return issued.Add(time.Second) }))
	if err != nil {
		t.Fatalf("verifying token: %v", err)
	}
	if tok.Header["alg"] != "HS256" {
		t.Errorf("alg = %v, want HS256", tok.Header["alg"])
	}
	checks := []struct{ name, got, want string }{
		{"sub", claims.Subject, "alice@example.com"},
		{"name", claims.Name, "alice@example.com"},
		{"scope", claims.Scope, "chat:read chat:write"},
		{"iss", claims.Issuer, "demo-issuer"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("claim %s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if !claims.IssuedAt.Equal(issued) || !claims.NotBefore.Equal(issued) {
		t.Errorf("iat, nbf = %v, %v; want both %v", claims.IssuedAt, claims.NotBefore, issued)
	}
	if claims.ExpiresAt.Unix() != resp.Expires {
		t.Errorf("exp = %d, want the answer's expires %d", claims.ExpiresAt.Unix(), resp.Expires)
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(claims.ID) {
		t.Errorf("jti = %q, want 32 hex digits", claims.ID)
	}

	// a second token gets another jti
	var again demoClaims
	if _, _, err := jwt.NewParser().ParseUnverified(tokenOf(t, postLogin(t, l, `{"user":"alice"}`)).Token, &again); err != nil {
		t.Fatal(err)
	}
	if again.ID == claims.ID {
		t.Errorf("two tokens share the jti %q", claims.ID)
	}

	// another secret does not verify it
	_, err = jwt.Parse(resp.Token, func(*jwt.Token) (any, error) { return []byte("another secret"), nil },
		jwt.WithTimeFunc(func() time.Time { return issued }))
	if !errors.Is(err, jwt.ErrTokenSignatureInvalid) {
		t.Errorf("verifying with another secret: err = %v, want %v", err, jwt.ErrTokenSignatureInvalid)
	}
}

func TestLoginDefaultsAndOptionalClaims(t *testing.T) {
	issued := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	fixClock(t, issued)
	l := newLogin(t, &Login{Secret: testSecret})

	resp := tokenOf(t, postLogin(t, l, `{"user":"bob"}`))
	claims := jwt.MapClaims{}
	if _, err := jwt.ParseWithClaims(resp.Token, claims,
		func(*jwt.Token) (any, error) { return []byte(testSecret), nil },
		jwt.WithTimeFunc(func() time.Time { return issued })); err != nil {
		t.Fatalf("verifying token: %v", err)
	}
	for _, absent := range []string{"iss", "aud", "scope"} {
		if v, ok := claims[absent]; ok {
			t.Errorf("claim %s = %v, want it absent", absent, v)
		}
	}
	for _, present := range []string{"sub", "name", "iat", "nbf", "exp", "jti"} {
		if _, ok := claims[present]; !ok {
			t.Errorf("claim %s missing", present)
		}
	}
	if want := issued.Add(defaultTTL).Unix(); resp.Expires != want {
		t.Errorf("expires = %d, want %d (default ttl)", resp.Expires, want)
	}
}

func TestLoginNegativeTTLMintsExpiredToken(t *testing.T) {
	issued := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	fixClock(t, issued)
	l := newLogin(t, &Login{Secret: testSecret})

	resp := tokenOf(t, postLogin(t, l, `{"user":"alice","scope":"chat:read","ttl":"-60s"}`))
	if want := issued.Add(-time.Minute).Unix(); resp.Expires != want {
		t.Errorf("expires = %d, want %d", resp.Expires, want)
	}
	var claims demoClaims
	_, err := jwt.ParseWithClaims(resp.Token, &claims,
		func(*jwt.Token) (any, error) { return []byte(testSecret), nil },
		jwt.WithTimeFunc(func() time.Time { return issued }))
	if !errors.Is(err, jwt.ErrTokenExpired) {
		t.Fatalf("err = %v, want %v", err, jwt.ErrTokenExpired)
	}
	if !claims.IssuedAt.Before(claims.ExpiresAt.Time) {
		t.Errorf("iat %v not before exp %v", claims.IssuedAt, claims.ExpiresAt)
	}
}

func TestLoginSecretForms(t *testing.T) {
	raw := []byte{0, 1, 2, 0xfe, 0xff, 'k', 'e', 'y', 0x80, 0x7f, 0x3e, 0x3f}
	t.Setenv("WS_DEMO_TEST_SECRET", testSecret)
	tests := []struct {
		name   string
		secret string
		key    []byte
	}{
		{"plain", testSecret, []byte(testSecret)},
		{"placeholder", "{env.WS_DEMO_TEST_SECRET}", []byte(testSecret)},
		{"base64", "base64:" + base64.StdEncoding.EncodeToString(raw), raw},
		{"base64 url unpadded", "base64:" + base64.RawURLEncoding.EncodeToString(raw), raw},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLogin(t, &Login{Secret: tt.secret})
			resp := tokenOf(t, postLogin(t, l, `{"user":"alice"}`))
			if _, err := jwt.Parse(resp.Token, func(*jwt.Token) (any, error) { return tt.key, nil }); err != nil {
				t.Errorf("secret %q: verifying with the expected key: %v", tt.secret, err)
			}
		})
	}

	for _, bad := range []string{"", "{env.WS_DEMO_TEST_UNSET_SECRET}", "base64:", "base64:not*base64"} {
		l := &Login{Secret: bad}
		if err := l.Provision(testContext(t)); err == nil {
			t.Errorf("Provision with secret %q: no error", bad)
		}
	}
}

func TestLoginRejectsBadRequests(t *testing.T) {
	l := newLogin(t, &Login{Secret: testSecret})
	tests := []struct {
		name        string
		method      string
		contentType string
		body        string
		status      int
	}{
		{"GET", http.MethodGet, "", "", http.StatusMethodNotAllowed},
		{"PUT", http.MethodPut, "application/json", `{"user":"alice"}`, http.StatusMethodNotAllowed},
		{"form body", http.MethodPost, "application/x-www-form-urlencoded", "user=alice", http.StatusUnsupportedMediaType},
		{"no content type", http.MethodPost, "", `{"user":"alice"}`, http.StatusUnsupportedMediaType},
		{"empty user", http.MethodPost, "application/json", `{"user":""}`, http.StatusBadRequest},
		{"missing user", http.MethodPost, "application/json", `{"scope":"chat:read"}`, http.StatusBadRequest},
		{"user with space", http.MethodPost, "application/json", `{"user":"al ice"}`, http.StatusBadRequest},
		{"user with markup", http.MethodPost, "application/json", `{"user":"<script>"}`, http.StatusBadRequest},
		{"user not ASCII", http.MethodPost, "application/json", `{"user":"zoë"}`, http.StatusBadRequest},
		{"user too long", http.MethodPost, "application/json", `{"user":"` + strings.Repeat("a", 65) + `"}`, http.StatusBadRequest},
		{"ttl not a duration", http.MethodPost, "application/json", `{"user":"alice","ttl":"soon"}`, http.StatusBadRequest},
		{"ttl a number", http.MethodPost, "application/json", `{"user":"alice","ttl":60}`, http.StatusBadRequest},
		{"ttl too long", http.MethodPost, "application/json", `{"user":"alice","ttl":"2h"}`, http.StatusBadRequest},
		{"ttl too far past", http.MethodPost, "application/json", `{"user":"alice","ttl":"-61m"}`, http.StatusBadRequest},
		{"ttl zero", http.MethodPost, "application/json", `{"user":"alice","ttl":"0s"}`, http.StatusBadRequest},
		{"scope with quote", http.MethodPost, "application/json", `{"user":"alice","scope":"a\"b"}`, http.StatusBadRequest},
		{"scope with newline", http.MethodPost, "application/json", `{"user":"alice","scope":"a\nb"}`, http.StatusBadRequest},
		{"scope too long", http.MethodPost, "application/json", `{"user":"alice","scope":"` + strings.Repeat("a", maxScopeLen+1) + `"}`, http.StatusBadRequest},
		{"unknown field", http.MethodPost, "application/json", `{"user":"alice","admin":true}`, http.StatusBadRequest},
		{"not JSON", http.MethodPost, "application/json", `user=alice`, http.StatusBadRequest},
		{"empty body", http.MethodPost, "application/json", ``, http.StatusBadRequest},
		{"two objects", http.MethodPost, "application/json", `{"user":"alice"}{"user":"bob"}`, http.StatusBadRequest},
		{"oversized body", http.MethodPost, "application/json", `{"user":"alice","scope":"` + strings.Repeat("a", maxLoginBody) + `"}`, http.StatusRequestEntityTooLarge},
		{"oversized padding", http.MethodPost, "application/json", `{"user":"alice"}` + strings.Repeat(" ", maxLoginBody), http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, "/login", strings.NewReader(tt.body))
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			rec := httptest.NewRecorder()
			if err := l.ServeHTTP(rec, req, nil); err != nil {
				t.Fatalf("ServeHTTP: %v", err)
			}
			if rec.Code != tt.status {
				t.Fatalf("%s %s: status = %d, want %d; body %s", tt.method, tt.body, rec.Code, tt.status, rec.Body)
			}
			var resp map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
				t.Fatalf("decoding error body %q: %v", rec.Body, err)
			}
			if msg, _ := resp["error"].(string); msg == "" {
				t.Errorf("body %s has no error message", rec.Body)
			}
			if _, ok := resp["token"]; ok {
				t.Errorf("rejected request got a token: %s", rec.Body)
			}
			if tt.status == http.StatusMethodNotAllowed && rec.Header().Get("Allow") != http.MethodPost {
				t.Errorf("Allow = %q, want POST", rec.Header().Get("Allow"))
			}
		})
	}
}

// echoServer runs an Echo behind a real HTTP server.
func echoServer(t *testing.T) (*Echo, string) {
	t.Helper()
	e := new(Echo)
	if err := e.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if err := e.Validate(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// as in Caddy, the writer is wrapped and offers Hijack only through
		// Unwrap
		if err := e.ServeHTTP(&caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, r, nil); err != nil {
			t.Errorf("ServeHTTP: %v", err)
		}
	}))
	t.Cleanup(srv.Close)
	return e, srv.URL
}

// dialEcho opens a WebSocket to the echo server at base.
func dialEcho(t *testing.T, base string, header http.Header, subprotocols ...string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{Subprotocols: subprotocols, HandshakeTimeout: 5 * time.Second}
	conn, resp, err := d.Dial("ws"+strings.TrimPrefix(base, "http")+"/ws", header)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	resp.Body.Close()
	t.Cleanup(func() { conn.Close() })
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	return conn
}

func readWelcome(t *testing.T, conn *websocket.Conn) welcomeMessage {
	t.Helper()
	typ, msg, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("reading welcome: %v", err)
	}
	if typ != websocket.TextMessage {
		t.Fatalf("welcome message type = %d, want text", typ)
	}
	var w welcomeMessage
	if err := json.Unmarshal(msg, &w); err != nil {
		t.Fatalf("decoding welcome %q: %v", msg, err)
	}
	return w
}

func TestEchoWelcomeAndEcho(t *testing.T) {
	_, base := echoServer(t)
	h := http.Header{}
	h.Set("X-User", "alice")
	h.Set("X-Scopes", "chat:read chat:write")
	h.Set("X-Expires", "2030-01-02T03:04:05Z")
	conn := dialEcho(t, base, h)

	want := welcomeMessage{Type: "welcome", User: "alice", Scopes: "chat:read chat:write", Expires: "2030-01-02T03:04:05Z"}
	if got := readWelcome(t, conn); got != want {
		t.Errorf("welcome = %+v, want %+v", got, want)
	}
	if p := conn.Subprotocol(); p != "" {
		t.Errorf("subprotocol = %q, want none", p)
	}

	messages := []struct {
		typ  int
		data []byte
	}{
		{websocket.TextMessage, []byte("hello")},
		{websocket.BinaryMessage, []byte{0, 1, 2, 0xff}},
		{websocket.TextMessage, []byte(strings.Repeat("x", maxEchoMessage))},
	}
	for _, m := range messages {
		if err := conn.WriteMessage(m.typ, m.data); err != nil {
			t.Fatalf("write: %v", err)
		}
		typ, got, err := conn.ReadMessage()
		if err != nil {
			t.Fatalf("read echo: %v", err)
		}
		if typ != m.typ || string(got) != string(m.data) {
			t.Errorf("echo of %d-byte message type %d = %d bytes type %d", len(m.data), m.typ, len(got), typ)
		}
	}

	// a normal close is answered with the same code
	if err := conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := conn.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Errorf("after close: err = %v, want close 1000", err)
	}
}

func TestEchoWelcomeWithoutClaims(t *testing.T) {
	_, base := echoServer(t)
	conn := dialEcho(t, base, nil)
	if got, want := readWelcome(t, conn), (welcomeMessage{Type: "welcome"}); got != want {
		t.Errorf("welcome = %+v, want %+v", got, want)
	}
}

func TestEchoSubprotocol(t *testing.T) {
	_, base := echoServer(t)
	tests := []struct {
		offered []string
		want    string
	}{
		{nil, ""},
		{[]string{"chat.v1"}, ""},
		{[]string{"access_token", "header.payload.signature"}, "access_token"},
		{[]string{"chat.v1", "access_token"}, "access_token"},
	}
	for _, tt := range tests {
		conn := dialEcho(t, base, nil, tt.offered...)
		if got := conn.Subprotocol(); got != tt.want {
			t.Errorf("offered %q: selected %q, want %q", tt.offered, got, tt.want)
		}
		conn.Close()
	}
}

func TestEchoMessageTooBig(t *testing.T) {
	_, base := echoServer(t)
	conn := dialEcho(t, base, nil)
	readWelcome(t, conn)
	if err := conn.WriteMessage(websocket.BinaryMessage, make([]byte, maxEchoMessage+1)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := conn.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseMessageTooBig) {
		t.Errorf("after a message over the limit: err = %v, want close 1009", err)
	}
}

func TestEchoCleanupClosesConnections(t *testing.T) {
	e, base := echoServer(t)
	conn := dialEcho(t, base, nil)
	readWelcome(t, conn)
	if err := e.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := conn.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Errorf("after Cleanup: err = %v, want close 1001", err)
	}
}

func TestEchoRejectsPlainHTTP(t *testing.T) {
	_, base := echoServer(t)
	resp, err := http.Get(base + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusUpgradeRequired {
		t.Errorf("status = %d, want 426", resp.StatusCode)
	}
	if got := resp.Header.Get("Upgrade"); got != "websocket" {
		t.Errorf("Upgrade = %q, want websocket", got)
	}
	if !strings.Contains(string(body), "WebSocket") {
		t.Errorf("body = %q, want a short explanation", body)
	}
}

func newPage(t *testing.T, p *Page) *Page {
	t.Helper()
	if err := p.Provision(testContext(t)); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	if err := p.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return p
}

func TestPageServesSelfContainedHTML(t *testing.T) {
	p := newPage(t, new(Page))
	rec := httptest.NewRecorder()
	if err := p.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil), nil); err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200", rec.Code)
	}
	if got := rec.Header().Get("Content-Type"); got != "text/html; charset=utf-8" {
		t.Errorf("Content-Type = %q", got)
	}
	body := rec.Body.String()
	for _, want := range []string{
		"DEMO ONLY", "not for production",
		`data-login-path="/login"`, `data-ws-path="/ws"`,
		`"access_token"`, "chat:read chat:write",
		"Connect with valid token", "Connect with expired token", "Connect without the required scope",
		"Connect with no token", "Connect with forged token",
		"1000:", "1001:", "1006:", "1008:", "1009:", "1011:", "1013:", "4001:", "4003:",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(body, "__LOGIN_PATH__") || strings.Contains(body, "__WS_PATH__") {
		t.Error("page still holds a path marker")
	}
	for _, external := range []string{" src=", "href=\"http", "href=\"//", "@import", "url("} {
		if strings.Contains(body, external) {
			t.Errorf("page refers to an external resource: %q", external)
		}
	}

	// the CSP allows exactly the page's inline script and style
	csp := rec.Header().Get("Content-Security-Policy")
	for _, tag := range []string{"script", "style"} {
		m := regexp.MustCompile(`(?s)<` + tag + `>(.*?)</` + tag + `>`).FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("page has no inline <%s>", tag)
		}
		sum := sha256.Sum256([]byte(m[1]))
		want := tag + "-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if !strings.HasPrefix(csp, "default-src 'none'") {
		t.Errorf("CSP %q does not start with default-src 'none'", csp)
	}

	rec = httptest.NewRecorder()
	if err := p.ServeHTTP(rec, httptest.NewRequest(http.MethodHead, "/", nil), nil); err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusOK || rec.Body.Len() != 0 {
		t.Errorf("HEAD: status %d, %d body bytes; want 200 and none", rec.Code, rec.Body.Len())
	}
}

func TestPagePaths(t *testing.T) {
	p := newPage(t, &Page{LoginPath: "/api/login", WebSocketPath: `/chat"<x>`})
	rec := httptest.NewRecorder()
	if err := p.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil), nil); err != nil {
		t.Fatal(err)
	}
	body := rec.Body.String()
	for _, want := range []string{`data-login-path="/api/login"`, `data-ws-path="/chat&#34;&lt;x&gt;"`} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %s", want)
		}
	}

	bad := &Page{LoginPath: "login"}
	if err := bad.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if err := bad.Validate(); err == nil {
		t.Error("Validate accepted a relative login_path")
	}

	for _, u := range []string{"localhost:8080", "/", "ftp://localhost/", "http://"} {
		bad := &Page{URL: u}
		if err := bad.Provision(testContext(t)); err != nil {
			t.Fatal(err)
		}
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate accepted the url %q", u)
		}
	}
	newPage(t, &Page{URL: "https://demo.example.com:8443/"})
}

func TestPageRejectsOtherMethods(t *testing.T) {
	p := newPage(t, new(Page))
	rec := httptest.NewRecorder()
	err := p.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil), nil)
	var herr caddyhttp.HandlerError
	if !errors.As(err, &herr) {
		t.Fatalf("POST: err = %v (%T), want a caddyhttp.HandlerError", err, err)
	}
	if herr.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: status = %d, want 405", herr.StatusCode)
	}
	if got := rec.Header().Get("Allow"); got != "GET, HEAD" {
		t.Errorf("Allow = %q, want GET, HEAD", got)
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		module  caddyfile.Unmarshaler
		want    any
		wantErr string
	}{
		{name: "page defaults", input: `ws_demo_page`, module: new(Page), want: &Page{}},
		{name: "page paths", module: new(Page), input: `ws_demo_page {
			login_path /api/login
			websocket_path /chat
		}`, want: &Page{LoginPath: "/api/login", WebSocketPath: "/chat"}},
		{name: "page argument", input: `ws_demo_page /x`, module: new(Page), wantErr: "wrong argument count"},
		{name: "page path missing", input: "ws_demo_page {\nlogin_path\n}", module: new(Page), wantErr: "wrong argument count"},
		{name: "page two paths", input: "ws_demo_page {\nwebsocket_path /a /b\n}", module: new(Page), wantErr: "wrong argument count"},
		{name: "page relative path", input: "ws_demo_page {\nlogin_path login\n}", module: new(Page), wantErr: "must start with '/'"},
		{name: "page duplicate", input: "ws_demo_page {\nlogin_path /a\nlogin_path /b\n}", module: new(Page), wantErr: "already specified"},
		{name: "page unknown", input: "ws_demo_page {\nsecret x\n}", module: new(Page), wantErr: "unrecognized subdirective 'secret'"},
		{name: "page url", input: "ws_demo_page {\nurl http://localhost:9090/\n}", module: new(Page), want: &Page{URL: "http://localhost:9090/"}},
		{name: "page url relative", input: "ws_demo_page {\nurl localhost:9090\n}", module: new(Page), wantErr: "absolute http or https URL"},
		{name: "page url other scheme", input: "ws_demo_page {\nurl ws://localhost:9090/\n}", module: new(Page), wantErr: "absolute http or https URL"},
		{name: "page url missing", input: "ws_demo_page {\nurl\n}", module: new(Page), wantErr: "wrong argument count"},
		{name: "page url duplicate", input: "ws_demo_page {\nurl http://a/\nurl http://b/\n}", module: new(Page), wantErr: "already specified"},

		{name: "login", module: new(Login), input: `ws_demo_login {
			secret {env.WS_SECRET}
			issuer demo-issuer
			audience demo-audience
		}`, want: &Login{Secret: "{env.WS_SECRET}", Issuer: "demo-issuer", Audience: "demo-audience"}},
		{name: "login secret only", input: "ws_demo_login {\nsecret base64:c2VjcmV0\n}", module: new(Login), want: &Login{Secret: "base64:c2VjcmV0"}},
		{name: "login no secret", input: "ws_demo_login {\nissuer x\n}", module: new(Login), wantErr: "requires a secret"},
		{name: "login no block", input: `ws_demo_login`, module: new(Login), wantErr: "requires a secret"},
		{name: "login argument", input: `ws_demo_login extra`, module: new(Login), wantErr: "wrong argument count"},
		{name: "login secret missing", input: "ws_demo_login {\nsecret\n}", module: new(Login), wantErr: "wrong argument count"},
		{name: "login two audiences", input: "ws_demo_login {\nsecret s\naudience a b\n}", module: new(Login), wantErr: "wrong argument count"},
		{name: "login duplicate secret", input: "ws_demo_login {\nsecret first-s3cret\nsecret second-s3cret\n}", module: new(Login), wantErr: "secret already specified"},
		{name: "login unknown", input: "ws_demo_login {\nscopes chat:read\n}", module: new(Login), wantErr: "unrecognized subdirective 'scopes'"},

		{name: "echo defaults", input: `ws_demo_echo`, module: new(Echo), want: &Echo{}},
		{name: "echo idle timeout", input: "ws_demo_echo {\nidle_timeout 30s\n}", module: new(Echo), want: &Echo{IdleTimeout: caddy.Duration(30 * time.Second)}},
		{name: "echo idle timeout in days", input: "ws_demo_echo {\nidle_timeout 1d\n}", module: new(Echo), want: &Echo{IdleTimeout: caddy.Duration(24 * time.Hour)}},
		{name: "echo bad duration", input: "ws_demo_echo {\nidle_timeout soon\n}", module: new(Echo), wantErr: "parsing idle_timeout"},
		{name: "echo zero", input: "ws_demo_echo {\nidle_timeout 0s\n}", module: new(Echo), wantErr: "must be positive"},
		{name: "echo missing", input: "ws_demo_echo {\nidle_timeout\n}", module: new(Echo), wantErr: "wrong argument count"},
		{name: "echo argument", input: `ws_demo_echo 127.0.0.1:8081`, module: new(Echo), wantErr: "wrong argument count"},
		{name: "echo duplicate", input: "ws_demo_echo {\nidle_timeout 1s\nidle_timeout 2s\n}", module: new(Echo), wantErr: "already specified"},
		{name: "echo unknown", input: "ws_demo_echo {\nupstream x\n}", module: new(Echo), wantErr: "unrecognized subdirective 'upstream'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.module.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("%s: no error, want one containing %q", tt.input, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "Testfile:") {
					t.Errorf("%s: error %q, want one containing %q and the file and line", tt.input, err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Errorf("error %q repeats the secret", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("%s: %v", tt.input, err)
			}
			gotJSON, _ := json.Marshal(tt.module)
			wantJSON, _ := json.Marshal(tt.want)
			if string(gotJSON) != string(wantJSON) {
				t.Errorf("%s:\n got %s\nwant %s", tt.input, gotJSON, wantJSON)
			}
		})
	}
}

// TestCaddyfileAdapts checks that the directives are registered and ordered,
// and that the adapted config provisions.
func TestCaddyfileAdapts(t *testing.T) {
	input := `{
	admin off
}
http://localhost:8080 {
	ws_demo_page /
	ws_demo_login /login {
		secret ` + testSecret + `
		issuer demo-issuer
	}
	ws_demo_echo /ws
	respond 404
}
`
	adapter := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}
	out, warnings, err := adapter.Adapt([]byte(input), nil)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings: %v", warnings)
	}
	cfg := string(out)
	last := -1
	for _, handler := range []string{`"handler":"ws_demo_page"`, `"handler":"ws_demo_login"`, `"handler":"ws_demo_echo"`, `"handler":"static_response"`} {
		i := strings.Index(cfg, handler)
		if i < 0 {
			t.Fatalf("adapted config lacks %s: %s", handler, cfg)
		}
		if i < last {
			t.Errorf("%s is out of order: %s", handler, cfg)
		}
		last = i
	}
	if !strings.Contains(cfg, `"issuer":"demo-issuer"`) {
		t.Errorf("adapted config lacks the issuer: %s", cfg)
	}

	var c caddy.Config
	if err := json.Unmarshal(out, &c); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(&c); err != nil {
		t.Errorf("validating adapted config: %v", err)
	}
}
