package wsauth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Opaque credentials through a real Caddy: an RFC 7662 introspection
// server and an app's session endpoint, each a real HTTP server that
// counts its calls.

// authServer is a test introspection endpoint or session endpoint: what
// it knows of each credential, how many calls it had, and whether it
// answers at all.
type authServer struct {
	*httptest.Server
	mu      sync.Mutex
	known   map[string]map[string]any // credential → its claims (introspection: the answer's members)
	calls   map[string]int
	total   atomic.Int64
	delay   time.Duration
	failing atomic.Bool // answer 500
	t       testing.TB
}

const (
	introspectClient = "ws-gateway"
	introspectSecret = "gateway-secret-1"
	sessionCookie    = "session_id"
)

// newIntrospectionServer serves RFC 7662 at /introspect, requiring the
// gateway's client credentials by HTTP Basic.
func newIntrospectionServer(t testing.TB) *authServer {
	s := &authServer{known: map[string]map[string]any{}, calls: map[string]int{}, t: t}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, secret, ok := r.BasicAuth()
		if r.Method != http.MethodPost || r.URL.Path != "/introspect" {
			http.Error(w, "not here", http.StatusNotFound)
			return
		}
		if !ok || id != introspectClient || secret != introspectSecret {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		tok := r.PostFormValue("token")
		claims, answer := s.call(tok)
		if answer != 0 {
			w.WriteHeader(answer)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if claims == nil {
			_, _ = w.Write([]byte(`{"active":false}`))
			return
		}
		out := map[string]any{"active": true}
		for k, v := range claims {
			out[k] = v
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(s.Close)
	return s
}

// newSessionServer is an app's session endpoint at /api/session: the
// session cookie names a session, answered with X-User and X-Scopes (and,
// for a session with an expiry, a JSON body with exp), else 401.
func newSessionServer(t testing.TB) *authServer {
	s := &authServer{known: map[string]map[string]any{}, calls: map[string]int{}, t: t}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie(sessionCookie)
		if err != nil || len(r.Cookies()) != 1 {
			// ws_auth sends the session cookie alone.
			http.Error(w, "no session cookie", http.StatusUnauthorized)
			return
		}
		claims, answer := s.call(c.Value)
		if answer != 0 {
			w.WriteHeader(answer)
			return
		}
		if claims == nil {
			http.Error(w, "no session", http.StatusUnauthorized)
			return
		}
		w.Header().Set("X-User", claims["sub"].(string))
		if sc, ok := claims["scope"].(string); ok {
			w.Header().Set("X-Scopes", sc)
		}
		if exp, ok := claims["exp"]; ok {
			w.Header().Set("Content-Type", "application/json")
			_, _ = fmt.Fprintf(w, `{"exp":%v,"team":"blue"}`, exp)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// call counts a call about cred and returns what the server knows of it,
// or the status it answers with instead.
func (s *authServer) call(cred string) (map[string]any, int) {
	s.total.Add(1)
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[cred]++
	if s.failing.Load() {
		return nil, http.StatusInternalServerError
	}
	return s.known[cred], 0
}

func (s *authServer) set(cred string, claims map[string]any) {
	s.mu.Lock()
	s.known[cred] = claims
	s.mu.Unlock()
}

func (s *authServer) forget(cred string) {
	s.mu.Lock()
	delete(s.known, cred)
	s.mu.Unlock()
}

func (s *authServer) callsFor(cred string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[cred]
}

// sessionSite is a cookie-session app behind ws_auth: the placeholders
// as headers to the upstream.
func sessionSite(url, checkOpts, opts string) func(string) string {
	return func(addr string) string {
		return `
	ws_auth {
		token_source cookie ` + sessionCookie + `
		allowed_origins http://` + addr + `
		session_check ` + url + ` {
			` + checkOpts + `
		}
		` + opts + `
	}
` + opaqueProxy
	}
}

func introspectSite(url, checkOpts, opts string) string {
	return `
	ws_auth {
		token_source header
		introspect ` + url + ` {
			client_id ` + introspectClient + `
			client_secret {env.WSAUTH_TEST_INTROSPECT_SECRET}
			` + checkOpts + `
		}
		` + opts + `
	}
` + opaqueProxy
}

// opaqueProxy is the reverse_proxy of the opaque sites: the placeholders
// as headers to the upstream.
const opaqueProxy = `
	reverse_proxy %UPSTREAM% {
		header_up X-User {http.auth.user.id}
		header_up X-Scopes {ws_auth.scopes}
		header_up X-Jti {ws_auth.jti}
		header_up X-Expires {ws_auth.expires}
		header_up X-Source {ws_auth.token_source}
		header_up X-Team {ws_auth.claims.team}
		header_up X-Client {ws_auth.claims.client_id}
	}`

func cookieDial(addr, session string) dialOpts {
	return dialOpts{origin: "http://" + addr, header: http.Header{"Cookie": {sessionCookie + "=" + session}}}
}

func bearerDial(token string) dialOpts {
	return dialOpts{header: http.Header{"Authorization": {"Bearer " + token}}}
}

// TestSessionCheckCookie: a session cookie the app knows connects, with
// the user, scopes and the app's other members as placeholders; one it
// does not know, or whose session has expired, is refused with the table's
// codes; the session cookie does not reach the upstream.
func TestSessionCheckCookie(t *testing.T) {
	app := newSessionServer(t)
	up := newUpstream(t)
	exp := time.Now().Add(time.Hour).Unix()
	app.set("s-alice", map[string]any{"sub": "alice", "scope": "chat:read chat:write", "exp": exp})
	app.set("s-old", map[string]any{"sub": "bob", "exp": time.Now().Add(-time.Minute).Unix()})
	app.set("s-reader", map[string]any{"sub": "carol", "scope": "chat:read"})
	addr := startCaddyFor(t, sessionSite(app.URL+"/api/session", "", "scopes chat:write"), up.addr())

	if got := wsOutcome(t, addr, cookieDial(addr, "s-alice")); got != "accepted" {
		t.Fatalf("known session: %s", got)
	}
	reqs := up.requests()
	h := reqs[len(reqs)-1].Header
	want := map[string]string{"X-User": "alice", "X-Scopes": "chat:read chat:write", "X-Source": "cookie",
		"X-Team": "blue", "X-Expires": time.Unix(exp, 0).UTC().Format(time.RFC3339)}
	for k, v := range want {
		if h.Get(k) != v {
			t.Errorf("upstream %s = %q, want %q", k, h.Get(k), v)
		}
	}
	if c := h.Get("Cookie"); strings.Contains(c, "s-alice") {
		t.Errorf("the session cookie reached the upstream: %q", c)
	}
	for _, tc := range []struct{ session, want string }{
		{"s-unknown", "close 1008 invalid"},
		{"s-old", "close 4001 expired"},
		{"s-reader", "close 4003 forbidden"},
	} {
		if got := wsOutcome(t, addr, cookieDial(addr, tc.session)); got != tc.want {
			t.Errorf("session %s: %s, want %s", tc.session, got, tc.want)
		}
	}
	if got := wsOutcome(t, addr, dialOpts{origin: "http://" + addr}); got != "close 1008 missing" {
		t.Errorf("no cookie: %s", got)
	}
	// Cookies need the Origin check: another site's page is refused
	// before the app is asked.
	before := app.total.Load()
	if got := wsOutcome(t, addr, dialOpts{origin: "https://evil.test", header: cookieDial(addr, "s-alice").header}); got != "close 1008 origin" {
		t.Errorf("cross-site: %s", got)
	}
	if app.total.Load() != before {
		t.Error("the app was asked about a cross-site request")
	}
}

// wsOutcome dials addr's /ws with o, and says what the client saw.
func wsOutcome(t testing.TB, addr string, o dialOpts) string {
	t.Helper()
	c, resp, err := dial(addr, "/ws", o)
	return outcome(t, c, resp, err)
}

// TestIntrospection: an active token connects with its members as claims
// and placeholders, the gateway authenticated by HTTP Basic with a secret
// from the environment; inactive is invalid; active but past its exp is
// expired; another issuer's is invalid.
func TestIntrospection(t *testing.T) {
	t.Setenv("WSAUTH_TEST_INTROSPECT_SECRET", introspectSecret)
	idp := newIntrospectionServer(t)
	up := newUpstream(t)
	exp := time.Now().Add(time.Hour).Unix()
	idp.set("tok-alice", map[string]any{"sub": "alice", "scope": "chat:read", "exp": exp, "iss": "https://idp.test",
		"client_id": "web-app", "jti": "j-1"})
	idp.set("tok-expired", map[string]any{"sub": "bob", "exp": time.Now().Add(-time.Minute).Unix(), "iss": "https://idp.test"})
	idp.set("tok-other-iss", map[string]any{"sub": "eve", "iss": "https://other.test"})
	addr := startCaddy(t, introspectSite(idp.URL+"/introspect", "", "issuer https://idp.test"), up.addr())

	if got := wsOutcome(t, addr, bearerDial("tok-alice")); got != "accepted" {
		t.Fatalf("active token: %s", got)
	}
	reqs := up.requests()
	h := reqs[len(reqs)-1].Header
	want := map[string]string{"X-User": "alice", "X-Scopes": "chat:read", "X-Jti": "j-1", "X-Client": "web-app",
		"X-Expires": time.Unix(exp, 0).UTC().Format(time.RFC3339)}
	for k, v := range want {
		if h.Get(k) != v {
			t.Errorf("upstream %s = %q, want %q", k, h.Get(k), v)
		}
	}
	if a := h.Get("Authorization"); a != "" {
		t.Errorf("the token reached the upstream: %q", a)
	}
	for _, tc := range []struct{ tok, want string }{
		{"tok-unknown", "close 1008 invalid"},
		{"tok-expired", "close 4001 expired"},
		{"tok-other-iss", "close 1008 invalid"},
	} {
		if got := wsOutcome(t, addr, bearerDial(tc.tok)); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.tok, got, tc.want)
		}
	}
}

// TestIntrospectionClientRefused: a wrong client secret is the gateway's
// fault, not the client's: unavailable (1011), and a status with reject
// status.
func TestIntrospectionClientRefused(t *testing.T) {
	t.Setenv("WSAUTH_TEST_INTROSPECT_SECRET", "wrong")
	idp := newIntrospectionServer(t)
	idp.set("tok-alice", map[string]any{"sub": "alice"})
	addr := startCaddy(t, introspectSite(idp.URL+"/introspect", "", ""), newUpstream(t).addr())
	if got := wsOutcome(t, addr, bearerDial("tok-alice")); got != "close 1011 unavailable" {
		t.Errorf("client refused by the endpoint: %s", got)
	}
}

// TestOpaqueEndpointDown: with the endpoint failing or gone, a credential
// it has not judged is unavailable (1011, or 503 with reject status),
// while one it judged within the cache TTL keeps connecting.
func TestOpaqueEndpointDown(t *testing.T) {
	app := newSessionServer(t)
	app.set("s-alice", map[string]any{"sub": "alice"})
	app.set("s-bob", map[string]any{"sub": "bob"})
	addr := startCaddyFor(t, sessionSite(app.URL+"/api/session", "cache 1m", ""), newUpstream(t).addr())
	if got := wsOutcome(t, addr, cookieDial(addr, "s-alice")); got != "accepted" {
		t.Fatalf("before: %s", got)
	}
	app.failing.Store(true)
	if got := wsOutcome(t, addr, cookieDial(addr, "s-bob")); got != "close 1011 unavailable" {
		t.Errorf("endpoint failing, new session: %s", got)
	}
	app.Close() // gone: connection refused
	if got := wsOutcome(t, addr, cookieDial(addr, "s-bob")); got != "close 1011 unavailable" {
		t.Errorf("endpoint gone, new session: %s", got)
	}
	if got := wsOutcome(t, addr, cookieDial(addr, "s-alice")); got != "accepted" {
		t.Errorf("endpoint gone, cached session: %s", got)
	}
}

// TestOpaqueOneCallPerCredential: a flood of one bad credential makes one
// call per negative TTL, and 100 concurrent handshakes with one new
// credential make one call between them.
func TestOpaqueOneCallPerCredential(t *testing.T) {
	t.Setenv("WSAUTH_TEST_INTROSPECT_SECRET", introspectSecret)
	idp := newIntrospectionServer(t)
	idp.delay = 50 * time.Millisecond // the calls overlap
	idp.set("tok-crowd", map[string]any{"sub": "alice"})
	addr := startCaddy(t, introspectSite(idp.URL+"/introspect", "cache 1m 1m", "reject status"), newUpstream(t).addr())

	const n = 100
	for _, tc := range []struct {
		tok    string
		status int
	}{{"tok-crowd", http.StatusSwitchingProtocols}, {"tok-bad", http.StatusUnauthorized}} {
		var wg sync.WaitGroup
		statuses := make(chan int, n)
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, resp, err := dial(addr, "/ws", bearerDial(tc.tok))
				if err == nil {
					c.Close()
				}
				if resp == nil {
					statuses <- 0
					return
				}
				statuses <- resp.StatusCode
			}()
		}
		wg.Wait()
		close(statuses)
		for s := range statuses {
			if s != tc.status {
				t.Errorf("%s: status %d, want %d", tc.tok, s, tc.status)
				break
			}
		}
		// And again, one by one: all from the cache.
		for range 20 {
			c, _, err := dial(addr, "/ws", bearerDial(tc.tok))
			if err == nil {
				c.Close()
			}
		}
		if got := idp.callsFor(tc.tok); got != 1 {
			t.Errorf("%s: %d calls to the endpoint for %d handshakes, want 1", tc.tok, got, n+20)
		}
	}
}

// TestSessionLogoutClosesLive: with revalidate, logging out on the app
// closes the live socket with 1008 "revoked" within the interval, and the
// upstream leg is closed too; a session still valid stays open.
func TestSessionLogoutClosesLive(t *testing.T) {
	app := newSessionServer(t)
	up := newUpstream(t)
	app.set("s-alice", map[string]any{"sub": "alice"})
	app.set("s-bob", map[string]any{"sub": "bob"})
	addr := startCaddyFor(t, sessionSite(app.URL+"/api/session", "cache 1m", "revalidate 2s"), up.addr())

	alice, _, err := dial(addr, "/ws", cookieDial(addr, "s-alice"))
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	bob, _, err := dial(addr, "/ws", cookieDial(addr, "s-bob"))
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	for _, c := range []*websocket.Conn{alice, bob} {
		if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.ReadMessage(); err != nil {
			t.Fatal(err)
		}
	}
	app.forget("s-alice") // logged out
	loggedOut := time.Now()
	_ = alice.SetReadDeadline(time.Now().Add(6 * time.Second))
	_, _, err = alice.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 1008 || ce.Text != "revoked" {
		t.Fatalf("after logout: %v, want close 1008 revoked", err)
	}
	if d := time.Since(loggedOut); d > 2*time.Second+1500*time.Millisecond {
		t.Errorf("closed %v after the logout, revalidate is 2s", d)
	}
	// Bob's session holds: his connection is open and echoes.
	if err := bob.WriteMessage(websocket.TextMessage, []byte("still")); err != nil {
		t.Fatal(err)
	}
	_ = bob.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, msg, err := bob.ReadMessage(); err != nil || string(msg) != "still" {
		t.Fatalf("bob: %q %v", msg, err)
	}
	// And the cache knows: alice's cookie no longer connects.
	if got := wsOutcome(t, addr, cookieDial(addr, "s-alice")); got != "close 1008 invalid" {
		t.Errorf("logged-out session reconnecting: %s", got)
	}
	eventually(t, 3*time.Second, "alice's connection leaves the registry", func() string {
		if n := liveCountFor("alice"); n > 0 {
			return fmt.Sprintf("%d left", n)
		}
		return ""
	})
}

// callsOver is "" once n holds more than want.
func callsOver(n *atomic.Int64, want int64) string {
	if got := n.Load(); got <= want {
		return fmt.Sprintf("%d calls, waiting for more than %d", got, want)
	}
	return ""
}

// liveCountFor is how many live connections user holds in the registry.
func liveCountFor(user string) int {
	liveConns.mu.RLock()
	defer liveConns.mu.RUnlock()
	n := 0
	for c := range liveConns.conns {
		if c.user == user {
			n++
		}
	}
	return n
}

// TestIntrospectionRevokedLive: a token revoked at its authorization
// server closes the live connection at the next revalidate; the endpoint
// unreachable keeps connections open.
func TestIntrospectionRevokedLive(t *testing.T) {
	t.Setenv("WSAUTH_TEST_INTROSPECT_SECRET", introspectSecret)
	idp := newIntrospectionServer(t)
	idp.set("tok-alice", map[string]any{"sub": "alice"})
	idp.set("tok-bob", map[string]any{"sub": "bob"})
	addr := startCaddy(t, introspectSite(idp.URL+"/introspect", "", "revalidate 1s"), newUpstream(t).addr())
	alice, _, err := dial(addr, "/ws", bearerDial("tok-alice"))
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()

	// The endpoint failing: the connection stays, through a few rechecks.
	idp.failing.Store(true)
	calls := idp.total.Load()
	eventually(t, 5*time.Second, "a recheck while failing", func() string { return callsOver(&idp.total, calls+1) })
	if err := alice.WriteMessage(websocket.TextMessage, []byte("up")); err != nil {
		t.Fatal(err)
	}
	_ = alice.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, _, err := alice.ReadMessage(); err != nil {
		t.Fatalf("closed while the endpoint failed: %v", err)
	}
	idp.failing.Store(false)
	idp.set("tok-alice", nil) // revoked: active false
	_ = alice.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = alice.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 1008 || ce.Text != "revoked" {
		t.Fatalf("after revocation: %v, want close 1008 revoked", err)
	}
}

// TestOpaqueLogsNoCredential: neither Caddy's log (at DEBUG, everything)
// nor the access log holds a credential or the client secret, through
// acceptances, refusals, an endpoint down, and a revalidate.
func TestOpaqueLogsNoCredential(t *testing.T) {
	t.Setenv("WSAUTH_TEST_INTROSPECT_SECRET", introspectSecret)
	idp := newIntrospectionServer(t)
	app := newSessionServer(t)
	dir := t.TempDir()
	all := filepath.Join(dir, "all.log")
	access := filepath.Join(dir, "access.log")
	creds := []string{"tok-secret-alice-0123456789", "tok-secret-unknown-0123456789", "sess-secret-bob-0123456789",
		"sess-secret-unknown-0123456789", introspectSecret}
	idp.set(creds[0], map[string]any{"sub": "alice"})
	app.set(creds[2], map[string]any{"sub": "bob"})

	caddyMu.Lock()
	defer caddyMu.Unlock()
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	up := newUpstream(t)
	cfg := fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	log default {
		output file %s
		level DEBUG
	}
}

http://%s {
	log {
		output file %s
	}
	route /opaque {
		ws_auth {
			token_source header
			introspect %s/introspect {
				client_id %s
				client_secret {env.WSAUTH_TEST_INTROSPECT_SECRET}
			}
			revalidate 1s
		}
		reverse_proxy %s
	}
	route /session {
		ws_auth {
			token_source cookie %s
			allowed_origins http://%s
			session_check %s/api/session
			revalidate 1s
		}
		reverse_proxy %s
	}
}
`, all, addr, access, idp.URL, introspectClient, up.addr(), sessionCookie, addr, app.URL, up.addr())
	if err := loadCaddyfile(cfg); err != nil {
		t.Fatal(err)
	}
	defer caddyStop()
	waitListening(t, addr)

	var open []*websocket.Conn
	for _, tok := range creds[:2] {
		if c, _, err := dial(addr, "/opaque", bearerDial(tok)); err == nil {
			open = append(open, c)
		}
	}
	for _, s := range creds[2:4] {
		if c, _, err := dial(addr, "/session", cookieDial(addr, s)); err == nil {
			open = append(open, c)
		}
	}
	calls := idp.total.Load() + app.total.Load()
	eventually(t, 5*time.Second, "a revalidate", func() string {
		return callsOver(&idp.total, calls+1-app.total.Load())
	})
	idp.failing.Store(true)
	if c, _, err := dial(addr, "/opaque", bearerDial("tok-secret-new-0123456789")); err == nil {
		open = append(open, c)
	}
	creds = append(creds, "tok-secret-new-0123456789")
	for _, c := range open {
		c.Close()
	}
	caddyStop()

	for _, f := range []string{all, access} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 {
			t.Fatalf("%s is empty", f)
		}
		for _, c := range creds {
			if strings.Contains(string(b), c) {
				t.Errorf("%s holds a credential or the secret %q", filepath.Base(f), c)
			}
		}
	}
	b, _ := os.ReadFile(all)
	for _, want := range []string{`"reason":"unavailable"`, `"user":"alice"`, `"user":"bob"`, `"reason":"invalid"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("log lacks %s", want)
		}
	}
}

// TestOpaqueCacheBounds: the cache of answers holds at most its bound,
// and its keys are digests under a key of the handler's own: the same
// credential is another key in another handler.
func TestOpaqueCacheBounds(t *testing.T) {
	app := newSessionServer(t)
	h := provisioned(t, &Handler{
		TokenSources:   []TokenSource{{Source: "cookie", Name: sessionCookie}},
		AllowedOrigins: []string{"http://x.test"},
		SessionCheck:   &SessionCheck{URL: app.URL + "/api/session"},
	})
	h2 := provisioned(t, &Handler{SessionCheck: &SessionCheck{URL: app.URL + "/api/session"}})
	if h.opaque.key("c", nil) == h2.opaque.key("c", nil) {
		t.Error("two handlers name one credential alike")
	}
	if k := h.opaque.key("credential-value", nil); strings.Contains(string(k[:]), "credential") {
		t.Error("the key shows the credential")
	}
	a := &answer{size: answerOverhead}
	for i := range maxAnswerEntries + 500 {
		h.opaque.cache.put(h.opaque.key(fmt.Sprint(i), nil), &answer{ref: a.ref, id: a.id, size: a.size}, time.Minute, time.Minute)
	}
	if n := len(h.opaque.cache.entries); n > maxAnswerEntries {
		t.Errorf("%d answers cached, bound %d", n, maxAnswerEntries)
	}
}

// TestSessionCheckSendsCredentialAlone: the app is asked with the
// credential as the client sent it, and nothing else of the client's
// (other cookies, an Authorization header).
func TestSessionCheckSendsCredentialAlone(t *testing.T) {
	var got atomic.Value
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Clone())
		w.Header().Set("X-User", "alice")
	}))
	defer app.Close()
	addr := startCaddyFor(t, sessionSite(app.URL, "", ""), newUpstream(t).addr())
	o := cookieDial(addr, "s-1")
	o.header.Set("Cookie", "theme=dark; "+sessionCookie+"=s-1; other=x")
	o.header.Set("Authorization", "Bearer not-for-the-app")
	if res := wsOutcome(t, addr, o); res != "accepted" {
		t.Fatal(res)
	}
	h := got.Load().(http.Header)
	if c := h.Values("Cookie"); len(c) != 1 || c[0] != sessionCookie+"=s-1" {
		t.Errorf("app got Cookie %q", c)
	}
	if a := h.Get("Authorization"); a != "" {
		t.Errorf("app got Authorization %q", a)
	}
}

// TestOpaqueAdminRevocation: the admin API lists a session-cookie
// connection with its user, and blocking the user closes it (1008
// "revoked") and refuses the cookie's next handshake, as for a JWT.
func TestOpaqueAdminRevocation(t *testing.T) {
	app := newSessionServer(t)
	app.set("s-alice", map[string]any{"sub": "alice"})
	const origin = "http://app.test"
	api := startAdminCaddy(t, `
	ws_auth {
		token_source cookie `+sessionCookie+`
		allowed_origins `+origin+`
		session_check `+app.URL+`/api/session
	}
	reverse_proxy %UPSTREAM%`, newUpstream(t).addr())
	o := dialOpts{origin: origin, header: http.Header{"Cookie": {sessionCookie + "=s-alice"}}}
	c, _, err := dial(api.addr, "/ws", o)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	conns := api.connections()
	if len(conns) != 1 || conns[0].User != "alice" || conns[0].TokenSource != "cookie" {
		t.Fatalf("GET /ws_auth/connections: %+v", conns)
	}
	api.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"alice","ttl":"1h"}`, http.StatusCreated)
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, _, err = c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 1008 || ce.Text != "revoked" {
		t.Fatalf("blocked through the admin API: %v, want close 1008 revoked", err)
	}
	if got := wsOutcome(t, api.addr, o); got != "close 1008 blocked" {
		t.Errorf("handshake after the block: %s", got)
	}
}

// TestIntrospectionLiveRules: an opaque token read from the first message,
// with the user in the answer's "username" (user_claim), expires at the
// answer's exp (4001); a refresh message with another active token of the
// same user moves the expiry (answered with the new exp) and is not
// forwarded; one of another user closes the connection.
func TestIntrospectionLiveRules(t *testing.T) {
	t.Setenv("WSAUTH_TEST_INTROSPECT_SECRET", introspectSecret)
	idp := newIntrospectionServer(t)
	soon := time.Now().Add(2 * time.Second).Unix()
	later := time.Now().Add(time.Hour).Unix()
	idp.set("tok-a1", map[string]any{"sub": "f3a1", "username": "alice", "exp": soon})
	idp.set("tok-a2", map[string]any{"sub": "f3a1", "username": "alice", "exp": later})
	idp.set("tok-b", map[string]any{"sub": "77b2", "username": "bob", "exp": later})
	up := newLiveUpstream(t)
	site := strings.Replace(introspectSite(idp.URL+"/introspect", "", "user_claim username\n\t\trefresh_message"),
		"token_source header", "token_source first_message", 1)
	addr := startCaddy(t, site, up.addr())

	// Expiry at the answer's exp.
	c := dialLive(t, "ws://"+addr+"/ws")
	c.send(`{"type":"auth","token":"tok-a1"}`)
	c.echo("alice")
	if got := c.closeWithin(time.Until(time.Unix(soon, 0)) + 3*time.Second); got != "close 4001 expired" {
		t.Errorf("at the answer's exp: %s, want close 4001 expired", got)
	}

	// A refresh moves the expiry past the first token's.
	idp.set("tok-a1", map[string]any{"sub": "f3a1", "username": "alice", "exp": time.Now().Add(2 * time.Second).Unix()})
	c = dialLive(t, "ws://"+addr+"/ws")
	c.send(`{"type":"auth","token":"tok-a1"}`)
	c.echo("before")
	c.refresh("tok-a2")
	c.expectRefreshOK(later)
	c.quietUntil(time.Now().Add(3 * time.Second))
	c.echo("after the first token's exp")
	if hdr := up.header(t, 1); hdr.Get("X-User") != "alice" {
		t.Errorf("X-User %q, want alice (user_claim username)", hdr.Get("X-User"))
	}
	c.refresh("tok-b")
	if got := c.closeWithin(3 * time.Second); got != "close 1008 invalid" {
		t.Errorf("refresh with bob's token: %s, want close 1008 invalid", got)
	}
	for _, m := range up.messages() {
		if strings.Contains(m, "tok-") {
			t.Errorf("upstream received a token: %q", m)
		}
	}
}

// TestSessionCheckTimeout: an app that does not answer within timeout is
// unavailable (1011), although it would have said yes later.
func TestSessionCheckTimeout(t *testing.T) {
	app := newSessionServer(t)
	app.delay = time.Second
	app.set("s-alice", map[string]any{"sub": "alice"})
	addr := startCaddyFor(t, sessionSite(app.URL+"/api/session", "timeout 200ms", ""), newUpstream(t).addr())
	if got := wsOutcome(t, addr, cookieDial(addr, "s-alice")); got != "close 1011 unavailable" {
		t.Errorf("app too slow: %s, want close 1011 unavailable", got)
	}
}

// TestSessionRefresh: a refresh message on a cookie session goes to the
// app as that cookie (so the app's own session refreshes it), also when
// it came with the second of two cookie sources and revalidate is off
// (it went as a bearer token, then as the first source's cookie, and the
// app refused both); and with scope_claim scp the X-Scopes header still
// grants the scopes.
func TestSessionRefresh(t *testing.T) {
	app := newSessionServer(t)
	exp := time.Now().Add(time.Hour).Unix()
	app.set("s-alice", map[string]any{"sub": "alice", "scope": "chat:write", "exp": exp})
	for _, tc := range []struct{ name, opts string }{
		{"one source, scp", "refresh_message\n\t\tscope_claim scp\n\t\tscopes chat:write"},
		{"second source", "refresh_message"},
	} {
		site := func(addr string) string {
			s := sessionSite(app.URL+"/api/session", "", tc.opts)(addr)
			if tc.name == "second source" {
				s = strings.Replace(s, "token_source cookie "+sessionCookie, "token_source cookie legacy_sid\n\t\ttoken_source cookie "+sessionCookie, 1)
			}
			return s
		}
		t.Run(tc.name, func(t *testing.T) {
			addr := startCaddyFor(t, site, newLiveUpstream(t).addr())
			conn, _, err := dial(addr, "/ws", cookieDial(addr, "s-alice"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if err := conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"refresh_token","token":"s-alice"}`)); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, msg, err := conn.ReadMessage()
			if want := fmt.Sprintf(`{"type":"refresh_token_ok","exp":%d}`, exp); err != nil || string(msg) != want {
				t.Fatalf("refresh on a cookie session: %q %v, want %s", msg, err, want)
			}
		})
	}
}

// TestOpaqueRecheckSharesCalls: connections that share a credential (the
// tabs of one browser) are asked about with one call per revalidate
// interval, not one each, nor one a tick.
func TestOpaqueRecheckSharesCalls(t *testing.T) {
	app := newSessionServer(t)
	app.set("s-alice", map[string]any{"sub": "alice"})
	addr := startCaddyFor(t, sessionSite(app.URL+"/api/session", "cache 0 0", "revalidate 4s"), newUpstream(t).addr())
	var tabs []*websocket.Conn
	for range 8 {
		c, _, err := dial(addr, "/ws", cookieDial(addr, "s-alice"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		tabs = append(tabs, c)
	}
	handshakes := app.callsFor("s-alice") // cache 0: one each
	time.Sleep(9 * time.Second)
	// In 9 s, with revalidate 4s (each check at 3 to 4 s after the last):
	// two or three rechecks.
	if got := app.callsFor("s-alice") - handshakes; got < 2 || got > 3 {
		t.Errorf("%d rechecks of one credential held by %d connections in 9 s with revalidate 4s, want 2 or 3", got, len(tabs))
	}
}

// waitRechecksIdle waits until the process's recheck goroutine has ended
// (no live connection of an opaque credential is left), for a test that
// swaps the package's clock, which that goroutine reads.
func waitRechecksIdle(t testing.TB) {
	eventually(t, 5*time.Second, "the rechecks' goroutine ends", func() string {
		liveConns.mu.RLock()
		defer liveConns.mu.RUnlock()
		if liveConns.sweeping {
			return fmt.Sprintf("%d connections rechecked", len(liveConns.rechecks))
		}
		return ""
	})
}

// TestOpaqueRecheckAfterRefresh: a recheck of the handshake's token that
// is still waiting for its answer when a refresh message replaces the
// token does not apply the old token's answer: the connection keeps the
// new token's expiry (it closed at the old one's, 4001, before).
func TestOpaqueRecheckAfterRefresh(t *testing.T) {
	t.Setenv("WSAUTH_TEST_INTROSPECT_SECRET", introspectSecret)
	var oldExp, oldCalls, newCalls atomic.Int64
	oldExp.Store(time.Now().Add(time.Hour).Unix())
	later := time.Now().Add(time.Hour).Unix()
	arrived, release, hold := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		out := map[string]any{"active": true, "sub": "alice"}
		switch r.PostFormValue("token") {
		case "tok-old":
			if oldCalls.Add(1) >= 2 { // the recheck: held until the refresh is done
				once.Do(func() { close(arrived) })
				<-release
			}
			out["exp"] = oldExp.Load()
		case "tok-new":
			out["exp"] = later
			if newCalls.Add(1) >= 2 { // its own recheck, held: it cannot mend the expiry
				<-hold
			}
		default:
			out = map[string]any{"active": false}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	}))
	defer srv.Close()
	defer close(hold)
	site := strings.Replace(introspectSite(srv.URL+"/introspect", "cache 0 0", "refresh_message\n\t\trevalidate 3s"),
		"token_source header", "token_source query", 1)
	addr := startCaddy(t, site, newLiveUpstream(t).addr())
	c := dialLive(t, liveURL(addr, "/ws", "tok-old"))
	c.echo("hello")
	select {
	case <-arrived:
	case <-time.After(6 * time.Second):
		t.Fatal("no recheck of the handshake's token")
	}
	c.refresh("tok-new")
	c.expectRefreshOK(later)
	// The old token is still active (a client refreshes before its exp),
	// and now expires in 2 s: its answer, applied, would close at that.
	oldExp.Store(time.Now().Add(2 * time.Second).Unix())
	close(release)
	c.quietUntil(time.Unix(oldExp.Load(), 0).Add(1500 * time.Millisecond))
	c.echo("still open")
}

// TestOpaqueRecheckInterval: a connection is asked about once per
// revalidate interval, not more often (a credential was due a tick early,
// so with revalidate 2s it was asked about every second).
func TestOpaqueRecheckInterval(t *testing.T) {
	app := newSessionServer(t)
	app.set("s-alice", map[string]any{"sub": "alice"})
	addr := startCaddyFor(t, sessionSite(app.URL+"/api/session", "cache 0 0", "revalidate 2s"), newUpstream(t).addr())
	c, _, err := dial(addr, "/ws", cookieDial(addr, "s-alice"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	base := app.callsFor("s-alice")
	time.Sleep(6 * time.Second)
	// Each between 1.25 and 2 s after the one before (and the call's
	// time): 2 to 4 in 6 s.
	if got := app.callsFor("s-alice") - base; got < 2 || got > 4 {
		t.Errorf("%d rechecks in 6 s with revalidate 2s, want 2 to 4", got)
	}
}

// TestOpaquePlaceholderExpires: {ws_auth.expires} shows the handshake's
// expiry, none for an answer without exp, also once a refresh or a recheck
// moved the connection's.
func TestOpaquePlaceholderExpires(t *testing.T) {
	payload := base64.RawURLEncoding.EncodeToString([]byte(`{"active":true,"sub":"alice"}`))
	c := &liveConn{h: &Handler{}, user: "alice"}
	before, _ := c.placeholder("ws_auth.expires", payload, "")
	c.mu.Lock()
	c.expires, c.refreshed = time.Now().Add(time.Hour), true
	c.mu.Unlock()
	after, _ := c.placeholder("ws_auth.expires", payload, "")
	if before != "" || after != "" {
		t.Errorf("{ws_auth.expires}: %q at the handshake, %q after a refresh; want \"\" both", before, after)
	}
}
