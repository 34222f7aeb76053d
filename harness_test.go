package wsauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// The tests drive a real Caddy, loaded in-process from a Caddyfile, with a
// real WebSocket client (gorilla/websocket) and a real upstream.

const testSecret = "test-secret-that-is-long-enough-for-hs256!"

// The issuer and audience that valid claims carry and checked sites ask for.
const (
	testIssuer   = "https://issuer.test"
	testAudience = "chat-api"
)

// caddyMu serialises tests that load a Caddy: there is one per process.
var caddyMu sync.Mutex

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// testConfig is the Caddyfile of a test: a plain-HTTP site on addr, with
// %UPSTREAM% in site replaced with upstream.
func testConfig(addr, site, upstream string) string {
	return fmt.Sprintf("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n}\n\nhttp://%s {\n%s\n}\n",
		addr, strings.ReplaceAll(site, "%UPSTREAM%", upstream))
}

// startCaddy loads a Caddy serving site (the inside of a site block) on a
// free port and returns its address. %UPSTREAM% in site is replaced with
// upstream. The test holds the harness's lock until it ends, so it may
// load the config again (testConfig with the same address) to reload.
func startCaddy(t testing.TB, site, upstream string) string {
	return startCaddyFor(t, func(string) string { return site }, upstream)
}

// startCaddyFor is startCaddy for a site that must know its own address,
// for instance to allow its own origin: site gets "127.0.0.1:<port>"
// before the config is built.
func startCaddyFor(t testing.TB, site func(addr string) string, upstream string) string {
	t.Helper()
	caddyMu.Lock()
	t.Cleanup(caddyMu.Unlock)

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := testConfig(addr, site(addr), upstream)
	if err := loadCaddyfile(cfg); err != nil {
		t.Fatalf("loading config: %v\n%s", err, cfg)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	waitListening(t, addr)
	return addr
}

func loadCaddyfile(cfg string) error {
	adapter := caddyconfig.GetAdapter("caddyfile")
	js, _, err := adapter.Adapt([]byte(cfg), nil)
	if err != nil {
		return err
	}
	return caddy.Load(js, true)
}

func waitListening(t testing.TB, addr string) {
	t.Helper()
	for i := 0; i < 100; i++ {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("nothing listening on %s", addr)
}

// seen is what the upstream received with one upgrade.
type seen struct {
	URI      string
	Header   http.Header
	Protocol string // the subprotocol the upstream selected
}

// upstream is a WebSocket echo server that records every request.
type upstream struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []seen
}

func newUpstream(t testing.TB) *upstream {
	u := new(upstream)
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var proto string
		for _, p := range websocket.Subprotocols(r) {
			if p == "chat" { // the app protocol the tests offer
				proto = p
			}
		}
		u.mu.Lock()
		u.reqs = append(u.reqs, seen{URI: r.RequestURI, Header: r.Header.Clone(), Protocol: proto})
		u.mu.Unlock()
		if !websocket.IsWebSocketUpgrade(r) {
			fmt.Fprint(w, "plain ok")
			return
		}
		var hdr http.Header
		if proto != "" {
			hdr = http.Header{"Sec-Websocket-Protocol": {proto}}
		}
		c, err := up.Upgrade(w, r, hdr)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetReadLimit(1 << 16)
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(typ, msg); err != nil {
				return
			}
		}
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) addr() string { return strings.TrimPrefix(u.URL, "http://") }

func (u *upstream) requests() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seen(nil), u.reqs...)
}

// dialOpts is how a test client connects.
type dialOpts struct {
	query     string // appended to the path, without "?"
	header    http.Header
	protocols []string
	origin    string
}

func dial(addr, path string, o dialOpts) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, Subprotocols: o.protocols}
	h := o.header.Clone()
	if h == nil {
		h = http.Header{}
	}
	if o.origin != "" {
		h.Set("Origin", o.origin)
	}
	u := "ws://" + addr + path
	if o.query != "" {
		u += "?" + o.query
	}
	return d.Dial(u, h)
}

// dialSettled is dial for just after a config reload, when a connection may
// meet the old server as it shuts down: network errors are tried again.
func dialSettled(addr, path string, o dialOpts) (*websocket.Conn, *http.Response, error) {
	for i := 0; ; i++ {
		c, resp, err := dial(addr, path, o)
		if err == nil || errors.Is(err, websocket.ErrBadHandshake) || i == 20 {
			return c, resp, err
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// outcome is what a client saw: "accepted", "close <code> <reason>" or
// "status <code>".
func outcome(t testing.TB, c *websocket.Conn, resp *http.Response, err error) string {
	t.Helper()
	if err != nil {
		if errors.Is(err, websocket.ErrBadHandshake) && resp != nil {
			return fmt.Sprintf("status %d", resp.StatusCode)
		}
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte("ping-msg")); err != nil {
		// The server may have closed already; read the close frame below.
		_ = err
	}
	_, msg, err := c.ReadMessage()
	if err == nil {
		if string(msg) != "ping-msg" {
			t.Fatalf("echo: got %q", msg)
		}
		return "accepted"
	}
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return fmt.Sprintf("close %d %s", ce.Code, ce.Text)
	}
	t.Fatalf("read: %v", err)
	return ""
}

// keys for the tests, generated once.
var testKeys = sync.OnceValue(func() *keySet {
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edk, _ := ed25519.GenerateKey(rand.Reader)
	return &keySet{rsa: rk, ec: ek, ed: edk}
})

type keySet struct {
	rsa *rsa.PrivateKey
	ec  *ecdsa.PrivateKey
	ed  ed25519.PrivateKey
}

// writePublicPEM writes pub as an SPKI PEM file and returns its path.
func writePublicPEM(t testing.TB, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, "PUBLIC KEY", der)
}

// claims returns typical valid claims for user.
func claims(user string, mods ...func(jwt.MapClaims)) jwt.MapClaims {
	n := time.Now()
	c := jwt.MapClaims{
		"sub":   user,
		"iat":   n.Unix(),
		"nbf":   n.Unix(),
		"exp":   n.Add(time.Hour).Unix(),
		"jti":   "jti-" + user,
		"scope": "chat:read chat:write",
	}
	for _, m := range mods {
		m(c)
	}
	return c
}

func sign(t testing.TB, method jwt.SigningMethod, key any, c jwt.MapClaims, kid string) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hs256(t testing.TB, c jwt.MapClaims) string {
	return sign(t, jwt.SigningMethodHS256, []byte(testSecret), c, "")
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// site is a ws_auth block in front of reverse_proxy with the options given.
func site(opts string) string {
	return `
	ws_auth {
		secret ` + testSecret + `
		` + opts + `
	}
	reverse_proxy %UPSTREAM% {
		header_up X-User {http.auth.user.id}
		header_up X-Scopes {ws_auth.scopes}
		header_up X-Jti {ws_auth.jti}
		header_up X-Expires {ws_auth.expires}
		header_up X-Source {ws_auth.token_source}
		header_up X-Org {ws_auth.claims.org.id}
		header_up X-Roles {ws_auth.claims.roles}
		header_up X-Num {ws_auth.claims.num}
	}`
}

const checks = `
		issuer https://issuer.test
		audience chat-api
		scopes chat:read
		allowed_origins https://app.test https://*.example.test
		max_token_size 2KiB`

// valid returns claims that pass every check in checks.
func valid(user string, mods ...func(jwt.MapClaims)) jwt.MapClaims {
	base := []func(jwt.MapClaims){func(c jwt.MapClaims) {
		c["iss"] = testIssuer
		c["aud"] = testAudience
	}}
	return claims(user, append(base, mods...)...)
}

// atkClaims are valid claims of alice for the RSA config (rsaSite).
func atkClaims(mods ...func(jwt.MapClaims)) jwt.MapClaims {
	return valid("alice", mods...)
}

// rsaSite is the main attack target: only an RSA public key.
func rsaSite(pemFile, opts string) string {
	return `
	ws_auth {
		public_key ` + pemFile + `
		issuer ` + testIssuer + `
		audience ` + testAudience + `
		` + opts + `
	}
	reverse_proxy %UPSTREAM% {
		header_up X-User {http.auth.user.id}
	}`
}

// jwksSite is ws_auth with one remote key set and opts, in front of the
// upstream.
func jwksSite(url, refresh, opts string) string {
	return `
	ws_auth {
		jwks ` + url + ` {
			refresh ` + refresh + `
			timeout 2s
		}
		` + opts + `
	}
	reverse_proxy %UPSTREAM%`
}

// writePEM writes one PEM block to a file and returns its path.
func writePEM(t testing.TB, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
