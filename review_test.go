package wsauth

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

// Tests for the findings of the outside review (issue 7), each shown
// through a real Caddy where the behaviour is Caddy's.

// octSecret is a symmetric key published in a local JWK Set.
var octSecret = []byte("an-oct-key-from-a-local-jwk-set-32+bytes")

// octJWK is a symmetric JWK (its "k" is the secret itself).
func octJWK(t testing.TB, kid string, alg jwkset.ALG) jwkset.JWKMarshal {
	t.Helper()
	j, err := jwkset.NewJWKFromKey(octSecret, jwkset.JWKOptions{
		Marshal:  jwkset.JWKMarshalOptions{Private: true},
		Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: alg},
	})
	if err != nil {
		t.Fatal(err)
	}
	return j.Marshal()
}

// TestMixedKeySetsNeverPanic: a symmetric key from a local set next to a
// remote set, and an oct key without alg in a remote set, made the key
// lookup compare uncomparable keyfunc values and panic on any HS256
// token; the client got EOF instead of a Close frame.
func TestMixedKeySetsNeverPanic(t *testing.T) {
	keys, evil := testKeys(), attackerKeys()
	c := claims("alice")

	t.Run("local oct and remote set", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "oct.json")
		if err := os.WriteFile(file, jwkSetJSON(t, octJWK(t, "oct-1", jwkset.AlgHS256)), 0o600); err != nil {
			t.Fatal(err)
		}
		srv := newJWKSServer(t, standardSet(t)...)
		up := newUpstream(t)
		addr := startCaddy(t, jwksSite(srv.URL, "1s", "jwks_file "+file+"\n\t\talgorithms HS256 RS256"), up.addr())
		checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", []attackCase{
			{"HS256 by a made-up secret, no kid", sign(t, jwt.SigningMethodHS256, []byte("made-up"), c, ""), "invalid"},
			{"HS256 by a made-up secret, kid of the oct key", sign(t, jwt.SigningMethodHS256, []byte("made-up"), c, "oct-1"), "invalid"},
			{"HS256 by the oct key, no kid", sign(t, jwt.SigningMethodHS256, octSecret, c, ""), "accepted"},
			{"HS256 by the oct key, its kid", sign(t, jwt.SigningMethodHS256, octSecret, c, "oct-1"), "accepted"},
			{"RS256 by the remote key, no kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, ""), "accepted"},
			{"RS256 by another key, no kid", sign(t, jwt.SigningMethodRS256, evil.rsa, c, ""), "invalid"},
		}))
	})

	t.Run("remote oct without alg", func(t *testing.T) {
		set := append(standardSet(t), octJWK(t, "oct-remote", ""))
		srv := newJWKSServer(t, set...)
		up := newUpstream(t)
		addr := startCaddy(t, jwksSite(srv.URL, "1s", "algorithms HS256 RS256"), up.addr())
		checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", []attackCase{
			{"RS256 by the remote key, no kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, ""), "accepted"},
			{"RS256 by another key, no kid", sign(t, jwt.SigningMethodRS256, evil.rsa, c, ""), "invalid"},
			// A secret served over HTTP is no secret: never used.
			{"HS256 by the served oct key, no kid", sign(t, jwt.SigningMethodHS256, octSecret, c, ""), "invalid"},
			{"HS256 by the served oct key, its kid", sign(t, jwt.SigningMethodHS256, octSecret, c, "oct-remote"), "invalid"},
		}))
	})
}

// fuzzJWKs are the keys a fuzzed key set is made of: every key type, with
// and without kid, with its own alg, none, or another key type's alg.
var fuzzJWKs = sync.OnceValue(func() []jwkset.JWKMarshal {
	k := testKeys()
	var out []jwkset.JWKMarshal
	add := func(key any, kid string, alg jwkset.ALG) {
		j, err := jwkset.NewJWKFromKey(key, jwkset.JWKOptions{
			Marshal:  jwkset.JWKMarshalOptions{Private: true},
			Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: alg},
		})
		if err != nil {
			panic(err)
		}
		out = append(out, j.Marshal())
	}
	for _, kid := range []string{"", "k1"} {
		add(octSecret, kid, jwkset.AlgHS256)
		add(octSecret, kid, "")
		add(octSecret, kid, jwkset.AlgRS256)
		add(&k.rsa.PublicKey, kid, jwkset.AlgRS256)
		add(&k.rsa.PublicKey, kid, "")
		add(&k.rsa.PublicKey, kid, jwkset.AlgHS256)
		add(&k.ec.PublicKey, kid, jwkset.AlgES256)
		add(&k.ec.PublicKey, kid, "")
		add(k.ed.Public(), kid, jwkset.AlgEdDSA)
		add(k.ed.Public(), kid, "")
	}
	return out
})

// FuzzKeyLookup: whatever mix of local and remote sets and static keys,
// and whatever alg and kid a token names, the key lookup never panics,
// never hands out a key of another type than the algorithm's, and never a
// secret that was served over HTTP.
func FuzzKeyLookup(f *testing.F) {
	f.Add(uint32(0b1), uint32(0b10), byte(1), byte(0), "", []byte("sig"))
	f.Add(uint32(0xFFFFF), uint32(0xFFFFF), byte(3), byte(0), "k1", []byte{})
	f.Add(uint32(0), uint32(0b1000), byte(0), byte(1), "", []byte("x"))
	algs := []string{"HS256", "HS384", "RS256", "PS256", "ES256", "ES384", "EdDSA"}
	f.Fuzz(func(t *testing.T, local, remote uint32, static, algIdx byte, kid string, sig []byte) {
		jwks := fuzzJWKs()
		pick := func(mask uint32) []jwkset.JWKMarshal {
			var out []jwkset.JWKMarshal
			for i, j := range jwks {
				if mask&(1<<i) != 0 {
					out = append(out, j)
				}
			}
			return out
		}
		k := &keyring{static: make(map[string]any), ctx: context.Background(), setAlgs: algs}
		if static&1 != 0 {
			k.static["HS256"] = newHMACKey("HS256", []byte(testSecret))
		}
		if static&2 != 0 {
			k.static["RS256"] = &testKeys().rsa.PublicKey
		}
		for _, set := range []struct {
			keys   []jwkset.JWKMarshal
			remote bool
		}{{pick(local), false}, {pick(remote), true}} {
			if len(set.keys) == 0 {
				continue
			}
			kf, err := keyfunc.NewJWKSetJSON(jwkSetJSON(t, set.keys...))
			if err != nil {
				t.Fatal(err)
			}
			k.sets = append(k.sets, jwkSource{kf: kf, remote: set.remote})
		}
		alg := algs[int(algIdx)%len(algs)]
		key, err := k.lookup(alg, kid)
		if err != nil {
			return
		}
		each := []jwt.VerificationKey{key}
		if set, ok := key.(jwt.VerificationKeySet); ok {
			each = set.Keys
		}
		for _, key := range each {
			if !keyFits(alg, key) {
				t.Fatalf("lookup(%s, %q) gave a %T", alg, kid, key)
			}
			if b, ok := key.([]byte); ok && string(b) == string(octSecret) && local == 0 {
				t.Fatalf("lookup(%s, %q) gave a secret served over HTTP", alg, kid)
			}
		}
		verifySignature(jwt.GetSigningMethod(alg), "e30.e30", []byte("e30.e30"), sig, key)
	})
}

// TestTokenStrippedInEveryForm: whatever form of a source the reader
// accepts, strip removes; a source holding two token values is refused,
// since the upstream might read the other one; and with strip_token off a
// cookie source passes on the verified cookie alone.
func TestTokenStrippedInEveryForm(t *testing.T) {
	const origin = "https://app.test"
	good, forged := hs256(t, claims("alice")), sign(t, jwt.SigningMethodHS256, []byte("made-up"), claims("mallory"), "")
	for _, strip := range []string{"on", "off"} {
		t.Run("strip_token "+strip, func(t *testing.T) {
			up := newUpstream(t)
			addr := startCaddy(t, site(`
		token_source query
		token_source header
		token_source cookie session
		token_source subprotocol
		allowed_origins `+origin+`
		strip_token `+strip), up.addr())
			cases := []struct {
				name string
				o    dialOpts
				want string
			}{
				{"cookie name with a space before =", dialOpts{header: http.Header{"Cookie": {"theme=dark; session =" + good}}}, "accepted"},
				{"empty token parameter, then one with a token", dialOpts{query: "token=&token=" + good, header: http.Header{"Authorization": {"Bearer " + good}}}, "close 1008 invalid"},
				{"two token parameters", dialOpts{query: "token=" + good + "&token=" + forged}, "close 1008 invalid"},
				{"two Authorization lines", dialOpts{header: http.Header{"Authorization": {"Bearer " + good, "Bearer " + forged}}}, "close 1008 invalid"},
				{"the marker twice", dialOpts{protocols: []string{"access_token", good, "access_token", forged}}, "close 1008 invalid"},
				{"two cookies of one name", dialOpts{header: http.Header{"Cookie": {"session=" + good + "; theme=dark; session=" + forged}}}, "accepted"},
				{"a query token and a forged header", dialOpts{query: "token=" + good, header: http.Header{"Authorization": {"Bearer " + forged}}}, "accepted"},
				{"Bearer, then Bearer and a tab", dialOpts{header: http.Header{"Authorization": {"Bearer " + good, "Bearer\t" + forged}}}, "close 1008 invalid"},
				{"Bearer, then Basic", dialOpts{header: http.Header{"Authorization": {"Bearer " + good, "Basic " + forged}}}, "close 1008 invalid"},
				{"a second token after a semicolon", dialOpts{query: "token=" + good + "&x=1;token=" + forged}, "close 1008 invalid"},
			}
			accepted := 0
			for _, tc := range cases {
				tc.o.origin = origin
				c, resp, err := dial(addr, "/ws", tc.o)
				if got := outcome(t, c, resp, err); got != tc.want {
					t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
					continue
				}
				if tc.want != "accepted" {
					continue
				}
				r := up.requests()[accepted]
				accepted++
				all := r.URI + mustJSON(r.Header)
				if strings.Contains(all, forged) {
					t.Errorf("%s: the unverified token reached the upstream: %s", tc.name, all)
				}
				if strip == "on" && strings.Contains(all, good) {
					t.Errorf("%s: the token reached the upstream: %s", tc.name, all)
				}
				if strip == "off" && tc.name == "two cookies of one name" && r.Header.Get("Cookie") != "theme=dark; session="+good {
					t.Errorf("%s: upstream Cookie %q, want the verified cookie alone", tc.name, r.Header.Get("Cookie"))
				}
			}
			checkUpstreamSaw(t, up, accepted)
		})
	}
}

// rawRequest sends req as written to addr and returns the response.
func rawRequest(t *testing.T, addr, req string) *http.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestHandshakeProtocolDetails: RFC 6455 on the module's own answers. A
// version it does not speak gets 426 naming 13; an HTTP/1.0 "upgrade" is
// no WebSocket and is never passed on, not even with upgrades_only; a
// subprotocol that is not a token is never echoed.
func TestHandshakeProtocolDetails(t *testing.T) {
	up := newUpstream(t)
	addr := startCaddy(t, `
	handle /only/* {
		ws_auth {
			secret `+testSecret+`
			upgrades_only
		}
		reverse_proxy %UPSTREAM%
	}
	handle {
	`+site("")+`
	}`, up.addr())
	good := hs256(t, claims("alice"))
	handshake := func(proto, path, version, extra string) string {
		return "GET " + path + "?token=" + good + " " + proto + "\r\nHost: " + addr +
			"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
			version + extra + "\r\n"
	}
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"version 8", handshake("HTTP/1.1", "/ws", "Sec-WebSocket-Version: 8\r\n", ""), http.StatusUpgradeRequired},
		{"no version", handshake("HTTP/1.1", "/ws", "", ""), http.StatusUpgradeRequired},
		{"HTTP/1.0", handshake("HTTP/1.0", "/ws", "Sec-WebSocket-Version: 13\r\n", ""), http.StatusBadRequest},
		{"HTTP/1.0, upgrades_only", handshake("HTTP/1.0", "/only/ws", "Sec-WebSocket-Version: 13\r\n", ""), http.StatusBadRequest},
		{"version 8, upgrades_only", handshake("HTTP/1.1", "/only/ws", "Sec-WebSocket-Version: 8\r\n", ""), http.StatusUpgradeRequired},
	} {
		resp := rawRequest(t, addr, tc.req)
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.status)
		}
		if v := resp.Header.Get("Sec-WebSocket-Version"); tc.status == http.StatusUpgradeRequired && v != "13" {
			t.Errorf("%s: Sec-WebSocket-Version %q, want 13", tc.name, v)
		}
	}
	checkUpstreamSaw(t, up, 0)

	// Refused in close mode: the module's own 101 selects only a token.
	for _, tc := range []struct{ offered, want string }{
		{"a b, chat", "chat"},
		{"x\"y, chat", "chat"},
		{"x/y", ""},
		{"chat", "chat"},
	} {
		resp := rawRequest(t, addr, strings.Replace(handshake("HTTP/1.1", "/ws", "Sec-WebSocket-Version: 13\r\n", "Sec-WebSocket-Protocol: "+tc.offered+"\r\n"), "token="+good, "token=bad", 1))
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("offered %q: status %d", tc.offered, resp.StatusCode)
		}
		if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != tc.want {
			t.Errorf("offered %q: selected %q, want %q", tc.offered, got, tc.want)
		}
	}
}

// TestFirstMessageStrict: the auth message is decoded as strictly as token
// claims: exact member names, no duplicate members.
func TestFirstMessageStrict(t *testing.T) {
	up := newUpstream(t)
	addr := startCaddy(t, site("token_source first_message"), up.addr())
	good := hs256(t, claims("alice"))
	for _, tc := range []struct{ msg, want string }{
		{`{"type":"auth","token":"` + good + `"}`, "accepted"},
		{`{"Type":"auth","token":"` + good + `"}`, "close 1008 invalid"},
		{`{"type":"auth","Token":"` + good + `"}`, "close 1008 invalid"},
		{`{"type":"auth","token":"x","token":"` + good + `"}`, "close 1008 invalid"},
		{`{"type":"hello","type":"auth","token":"` + good + `"}`, "close 1008 invalid"},
	} {
		c, _, err := dial(addr, "/ws", dialOpts{})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WriteMessage(websocket.TextMessage, []byte(tc.msg)); err != nil {
			t.Fatal(err)
		}
		if got := outcome(t, c, nil, nil); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.msg[:30], got, tc.want)
		}
	}
	checkUpstreamSaw(t, up, 1)
}

// readClose reads from c until a Close frame, and returns it as outcome
// does, or "error ..." for anything else.
func readClose(c *websocket.Conn) string {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return fmt.Sprintf("close %d %s", ce.Code, ce.Text)
		}
		return "error " + err.Error()
	}
}

// TestFirstMessageAcrossReload: a handshake still waiting for its auth
// message when a reload rotates the secret is closed with 1001 (going away,
// as reverse_proxy closes the old config's connections) and never decided
// with the old secret; a connection opened before the reload is closed like
// any other of the old config.
func TestFirstMessageAcrossReload(t *testing.T) {
	up := newUpstream(t)
	const newSecret = "the-rotated-secret-that-is-long-enough!!"
	before := site("token_source first_message auth 30s")
	addr := startCaddy(t, before, up.addr())

	open, _, err := dial(addr, "/ws", dialOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := open.WriteMessage(websocket.TextMessage, []byte(`{"type":"auth","token":"`+hs256(t, claims("alice"))+`"}`)); err != nil {
		t.Fatal(err)
	}
	_ = open.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := open.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := open.ReadMessage(); err != nil || string(msg) != "hello" {
		t.Fatalf("before the reload: %q, %v; want the echo", msg, err)
	}
	pending, _, err := dial(addr, "/ws", dialOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer pending.Close()

	after := strings.Replace(before, testSecret, newSecret, 1)
	if err := loadCaddyfile(testConfig(addr, after, up.addr())); err != nil {
		t.Fatal(err)
	}
	// The old secret, sent after the reload: too late for the old config.
	_ = pending.WriteMessage(websocket.TextMessage, []byte(`{"type":"auth","token":"`+hs256(t, claims("mallory"))+`"}`))
	if got := readClose(pending); got != "close 1001 going_away" {
		t.Errorf("pending handshake across a reload: %s, want close 1001 going_away", got)
	}
	if got := readClose(open); !strings.HasPrefix(got, "close 1001") {
		t.Errorf("connection opened before the reload: %s, want close 1001", got)
	}
	for _, u := range up.requests() {
		if u.Header.Get("X-User") == "mallory" {
			t.Errorf("the old secret's token reached the upstream after the reload")
		}
	}

	// The new config decides new handshakes with the new secret.
	c, _, err := dialSettled(addr, "/ws", dialOpts{})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, jwt.SigningMethodHS256, []byte(newSecret), claims("bob"), "")
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"auth","token":"`+tok+`"}`)); err != nil {
		t.Fatal(err)
	}
	if got := outcome(t, c, nil, nil); got != "accepted" {
		t.Errorf("after the reload, new secret: %s", got)
	}
}

// TestFirstMessagePendingBounded: silent first-message clients are bounded
// per client IP, and refused beyond it with 1013; once they are gone, the
// IP may connect again. They also count in the handshake rate limit.
func TestFirstMessagePendingBounded(t *testing.T) {
	t.Run("per ip", func(t *testing.T) {
		up := newUpstream(t)
		addr := startCaddy(t, site("token_source first_message auth 30s"), up.addr())
		var silent []*websocket.Conn
		defer func() {
			for _, c := range silent {
				c.Close()
			}
		}()
		for range maxPendingPerIP {
			c, _, err := dial(addr, "/ws", dialOpts{})
			if err != nil {
				t.Fatal(err)
			}
			silent = append(silent, c)
		}
		c, _, err := dial(addr, "/ws", dialOpts{})
		if err != nil {
			t.Fatal(err)
		}
		if got := readClose(c); got != "close 1013 rate_limited" {
			t.Errorf("handshake %d from one IP: %s, want close 1013 rate_limited", maxPendingPerIP+1, got)
		}
		c.Close()
		for _, c := range silent {
			c.Close()
		}
		silent = nil
		// The server notices the closed clients at its next read.
		good := `{"type":"auth","token":"` + hs256(t, claims("alice")) + `"}`
		for i := 0; ; i++ {
			c, _, err := dial(addr, "/ws", dialOpts{})
			if err != nil {
				t.Fatal(err)
			}
			_ = c.WriteMessage(websocket.TextMessage, []byte(good))
			got := outcome(t, c, nil, nil)
			if got == "accepted" {
				break
			}
			if i == 100 {
				t.Fatalf("after the silent clients left: %s", got)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("rate limit", func(t *testing.T) {
		up := newUpstream(t)
		addr := startCaddy(t, site("token_source first_message auth 30s\n\t\trate_limit handshakes 2/1h"), up.addr())
		for i := range 2 {
			c, _, err := dial(addr, "/ws", dialOpts{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = i
		}
		c, _, err := dial(addr, "/ws", dialOpts{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := readClose(c); got != "close 1013 rate_limited" {
			t.Errorf("third first-message handshake within the rate: %s, want close 1013 rate_limited", got)
		}
	})
}

// TestPendingCounter: the process-wide bound, and no key left behind.
func TestPendingCounter(t *testing.T) {
	p := &pendingCounter{perIP: make(map[string]int)}
	n := 0
	for i := 0; p.acquire(fmt.Sprint("ip-", i)); i++ {
		n++
	}
	if n != maxPendingTotal {
		t.Fatalf("acquired %d, want the total bound %d", n, maxPendingTotal)
	}
	for i := range n {
		p.release(fmt.Sprint("ip-", i))
	}
	if p.total != 0 || len(p.perIP) != 0 {
		t.Errorf("after release: total %d, %d keys", p.total, len(p.perIP))
	}
}

// TestPanicStillAnswers: a decision that panics (here the clock, which
// every token check reads) still gets an answer: Close 1011 on a
// WebSocket, 500 otherwise, and a first-message client is closed too.
func TestPanicStillAnswers(t *testing.T) {
	// Restored after Caddy stopped: cleanups run last-registered first.
	// Swapping the package's clock is safe because no test runs in
	// parallel and nothing in the background reads it, once the rechecks
	// of an earlier test's opaque connections are over.
	waitRechecksIdle(t)
	t.Cleanup(func() { now = time.Now })
	now = func() time.Time { panic("the clock broke") }
	up := newUpstream(t)
	addr := startCaddy(t, `
	handle /status/* {
		ws_auth {
			secret `+testSecret+`
			reject status
		}
		reverse_proxy %UPSTREAM%
	}
	handle {
	`+site("token_source query\n\t\ttoken_source first_message")+`
	}`, up.addr())
	good := hs256(t, claims("alice"))
	c, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + good})
	if got := outcome(t, c, resp, err); got != "close 1011 internal_error" {
		t.Errorf("upgrade: %s, want close 1011 internal_error", got)
	}
	c, resp, err = dial(addr, "/status/ws", dialOpts{query: "token=" + good})
	if got := outcome(t, c, resp, err); got != "status 500" {
		t.Errorf("reject status: %s, want status 500", got)
	}
	c, _, err = dial(addr, "/ws", dialOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"auth","token":"`+good+`"}`))
	if got := readClose(c); got != "close 1011 internal_error" {
		t.Errorf("first message: %s, want close 1011 internal_error", got)
	}
	checkUpstreamSaw(t, up, 0)
}

// TestJWKSURLPlaceholder: a jwks URL from the environment is replaced at
// load, as a secret is.
func TestJWKSURLPlaceholder(t *testing.T) {
	srv := newJWKSServer(t, standardSet(t)...)
	t.Setenv("WSAUTH_TEST_JWKS_URL", srv.URL)
	up := newUpstream(t)
	addr := startCaddy(t, jwksSite("{env.WSAUTH_TEST_JWKS_URL}", "1s", ""), up.addr())
	checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", []attackCase{
		{"RS256, kid", sign(t, jwt.SigningMethodRS256, testKeys().rsa, claims("alice"), "rsa-1"), "accepted"},
	}))
}
