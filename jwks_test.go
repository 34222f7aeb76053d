package wsauth

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// The JWKS tests run a real Caddy against a JWK Set served by the test
// (or read from a file) and check which tokens its keys verify, how key
// rotation and a failing endpoint are handled, and that "unavailable"
// (1011, 503) is only for when no key was ever had.

// jwksServer serves a JWK Set that a test can change, or fail, and counts
// the fetches.
type jwksServer struct {
	*httptest.Server
	fetches atomic.Int64

	mu      sync.Mutex
	body    []byte
	mode    string // ok, 500, drop (close the connection), garbage
	declare bool   // send Content-Length (else a large body is chunked)
	// issuers are the OpenID issuers it stands in for, as configured.
	issuers []string
}

func newJWKSServer(t testing.TB, keys ...jwkset.JWKMarshal) *jwksServer {
	t.Helper()
	s := &jwksServer{body: jwkSetJSON(t, keys...), mode: "ok"}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) serve(w http.ResponseWriter, r *http.Request) {
	s.fetches.Add(1)
	if prefix, ok := strings.CutSuffix(r.URL.Path, "/.well-known/openid-configuration"); ok {
		// An OpenID provider whose issuer is the path before it (or one
		// of s.issuers that ends there, with its trailing slash), and
		// whose keys are this set.
		issuer := "http://" + r.Host + prefix
		s.mu.Lock()
		for _, iss := range s.issuers {
			if strings.TrimSuffix(iss, "/") == issuer {
				issuer = iss
			}
		}
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"issuer":   issuer,
			"jwks_uri": "http://" + r.Host + "/jwks.json",
		})
		return
	}
	s.mu.Lock()
	body, mode, declare := s.body, s.mode, s.declare
	s.mu.Unlock()
	switch mode {
	case "500":
		http.Error(w, "boom", http.StatusInternalServerError)
	case "drop":
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			c.Close()
		}
	case "garbage":
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"keys": [ this is not JSON`)
	default:
		w.Header().Set("Content-Type", "application/json")
		if declare {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		_, _ = w.Write(body)
	}
}

func (s *jwksServer) publish(t testing.TB, keys ...jwkset.JWKMarshal) {
	s.setBody(jwkSetJSON(t, keys...))
}

func (s *jwksServer) setBody(b []byte) {
	s.mu.Lock()
	s.body, s.mode = b, "ok"
	s.mu.Unlock()
}

func (s *jwksServer) setMode(m string) {
	s.mu.Lock()
	s.mode = m
	s.mu.Unlock()
}

// waitFetches waits until the server has been asked for the set at least
// n times in all.
func (s *jwksServer) waitFetches(t testing.TB, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.fetches.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("JWK Set fetched %d times, waited for %d", s.fetches.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// jwkOf is the public JWK of key, with kid and alg (alg may be empty).
func jwkOf(t testing.TB, pub any, kid string, alg jwkset.ALG) jwkset.JWKMarshal {
	t.Helper()
	j, err := jwkset.NewJWKFromKey(pub, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: alg}})
	if err != nil {
		t.Fatal(err)
	}
	return j.Marshal()
}

func jwkSetJSON(t testing.TB, keys ...jwkset.JWKMarshal) []byte {
	t.Helper()
	b, err := json.Marshal(jwkset.JWKSMarshal{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func init() {
	// The tests watch a key set being fetched again (refresh 100ms, 1s)
	// and cannot wait the real floor (10s) each time; TestJWKSRefreshFloor
	// puts it back to check it.
	minJWKSRefresh = 50 * time.Millisecond
}

// rotationKeys are trusted RSA keys besides testKeys().rsa, generated once.
var rotationKeys = sync.OnceValue(func() []*rsa.PrivateKey {
	var ks []*rsa.PrivateKey
	for range 2 {
		k, _ := rsa.GenerateKey(rand.Reader, 2048)
		ks = append(ks, k)
	}
	return ks
})

// standardSet publishes the test keys: each with its alg, and the RSA and
// EC keys a second time without alg.
func standardSet(t testing.TB) []jwkset.JWKMarshal {
	k := testKeys()
	return []jwkset.JWKMarshal{
		jwkOf(t, &k.rsa.PublicKey, "rsa-1", jwkset.AlgRS256),
		jwkOf(t, &k.rsa.PublicKey, "rsa-any", ""),
		jwkOf(t, &k.ec.PublicKey, "ec-1", jwkset.AlgES256),
		jwkOf(t, &k.ec.PublicKey, "ec-any", ""),
		jwkOf(t, k.ed.Public(), "ed-1", jwkset.AlgEdDSA),
	}
}

// TestJWKSKeyTypes: RSA, ECDSA and Ed25519 keys from a remote set verify
// tokens that name them, or that name no key; a kid never makes a key
// verify an algorithm it is not for, and token headers never point the
// module at other keys.
func TestJWKSKeyTypes(t *testing.T) {
	keys, evil := testKeys(), attackerKeys()
	srv := newJWKSServer(t, standardSet(t)...)
	der, err := x509.MarshalPKIXPublicKey(&keys.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	// An attacker's own key set, which a token may try to point at.
	evilSrv := newJWKSServer(t, jwkOf(t, &evil.rsa.PublicKey, "evil", jwkset.AlgRS256))

	c := claims("alice")
	withHeader := func(key any, kid string, hdr map[string]any) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
		tok.Header["kid"] = kid
		for k, v := range hdr {
			tok.Header[k] = v
		}
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cases := []attackCase{
		{"RS256, kid of the RSA key", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-1"), "accepted"},
		{"ES256, kid of the EC key", sign(t, jwt.SigningMethodES256, keys.ec, c, "ec-1"), "accepted"},
		{"EdDSA, kid of the Ed25519 key", sign(t, jwt.SigningMethodEdDSA, keys.ed, c, "ed-1"), "accepted"},
		{"RS256, no kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, ""), "accepted"},
		{"ES256, no kid", sign(t, jwt.SigningMethodES256, keys.ec, c, ""), "accepted"},
		{"EdDSA, no kid", sign(t, jwt.SigningMethodEdDSA, keys.ed, c, ""), "accepted"},
		{"PS256, kid of the RSA key without alg", sign(t, jwt.SigningMethodPS256, keys.rsa, c, "rsa-any"), "accepted"},
		{"ES256, kid of the EC key without alg", sign(t, jwt.SigningMethodES256, keys.ec, c, "ec-any"), "accepted"},

		{"PS256, kid of the RSA key published for RS256", sign(t, jwt.SigningMethodPS256, keys.rsa, c, "rsa-1"), "invalid"},
		{"RS256, kid of the EC key", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "ec-1"), "invalid"},
		{"ES256, kid of the RSA key", sign(t, jwt.SigningMethodES256, keys.ec, c, "rsa-any"), "invalid"},
		{"EdDSA, kid of the EC key", sign(t, jwt.SigningMethodEdDSA, keys.ed, c, "ec-any"), "invalid"},
		{"ES384 by the P-256 key, its kid without alg", signECDSAAnyCurve(t, "ES384", keys.ec, "ec-any", c), "invalid"},
		{"ES384 by the P-256 key, no kid", signECDSAAnyCurve(t, "ES384", keys.ec, "", c), "invalid"},
		{"RS256 signed by another key, kid of the RSA key", sign(t, jwt.SigningMethodRS256, evil.rsa, c, "rsa-1"), "invalid"},
		{"RS256 signed by another key, no kid", sign(t, jwt.SigningMethodRS256, evil.rsa, c, ""), "invalid"},
		{"RS256 signed by another key, unknown kid", sign(t, jwt.SigningMethodRS256, evil.rsa, c, "evil"), "invalid"},
		// No static key: a kid the set does not have names no key of ours.
		{"RS256 by the RSA key, unknown kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-2"), "invalid"},
		{"HS256 keyed with the RSA key's DER, its kid", sign(t, jwt.SigningMethodHS256, der, c, "rsa-1"), "invalid"},
		{"HS256 keyed with the RSA key's modulus, its kid", sign(t, jwt.SigningMethodHS256, keys.rsa.N.Bytes(), c, "rsa-any"), "invalid"},
		{"HS256 keyed with the RSA key's DER, no kid", sign(t, jwt.SigningMethodHS256, der, c, ""), "invalid"},
		{"alg none, kid of the RSA key", forgeToken(`{"alg":"none","kid":"rsa-1"}`, c, nil), "invalid"},
		{"jku pointing at the attacker's set", withHeader(evil.rsa, "evil", map[string]any{"jku": evilSrv.URL}), "invalid"},
		{"x5u pointing at the attacker", withHeader(evil.rsa, "evil", map[string]any{"x5u": evilSrv.URL}), "invalid"},
		{"attacker's key in the jwk header", withHeader(evil.rsa, "evil", map[string]any{
			"jwk": jwkOf(t, &evil.rsa.PublicKey, "evil", jwkset.AlgRS256)}), "invalid"},
	}

	up := newUpstream(t)
	addr := startCaddy(t, jwksSite(srv.URL, "1s", ""), up.addr())
	checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", cases))
	if n := evilSrv.fetches.Load(); n != 0 {
		t.Errorf("the module fetched the key set a token pointed at (%d times)", n)
	}
}

// TestJWKSExplicitHMAC: with HS256 allowed explicitly next to a remote set
// (for "oct" keys), an RSA key of the set is still never an HMAC secret.
func TestJWKSExplicitHMAC(t *testing.T) {
	keys := testKeys()
	srv := newJWKSServer(t, standardSet(t)...)
	der, err := x509.MarshalPKIXPublicKey(&keys.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes := readFileT(t, writePublicPEM(t, &keys.rsa.PublicKey))
	c := claims("alice")

	up := newUpstream(t)
	addr := startCaddy(t, jwksSite(srv.URL, "1s", "algorithms HS256 RS256"), up.addr())
	checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", []attackCase{
		{"RS256, kid of the RSA key", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-1"), "accepted"},
		{"HS256 keyed with the DER, kid of the RSA key", sign(t, jwt.SigningMethodHS256, der, c, "rsa-1"), "invalid"},
		{"HS256 keyed with the DER, kid of the RSA key without alg", sign(t, jwt.SigningMethodHS256, der, c, "rsa-any"), "invalid"},
		{"HS256 keyed with the PEM, kid of the RSA key without alg", sign(t, jwt.SigningMethodHS256, pemBytes, c, "rsa-any"), "invalid"},
		{"HS256 keyed with the DER, no kid", sign(t, jwt.SigningMethodHS256, der, c, ""), "invalid"},
		{"ES256, not in the allow-list", sign(t, jwt.SigningMethodES256, keys.ec, c, "ec-1"), "invalid"},
	}))
}

// TestJWKSWithStaticKey: a kid that the set does not have falls back to
// the static keys, which must still verify the signature.
func TestJWKSWithStaticKey(t *testing.T) {
	keys, evil := testKeys(), attackerKeys()
	static := rotationKeys()[1]
	srv := newJWKSServer(t, standardSet(t)...)
	pemFile := writePublicPEM(t, &static.PublicKey)
	c := claims("alice")

	up := newUpstream(t)
	addr := startCaddy(t, jwksSite(srv.URL, "1s", "public_key "+pemFile), up.addr())
	checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", []attackCase{
		{"set key, its kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-1"), "accepted"},
		{"static key, kid unknown to the set", sign(t, jwt.SigningMethodRS256, static, c, "static-kid"), "accepted"},
		{"static key, no kid", sign(t, jwt.SigningMethodRS256, static, c, ""), "accepted"},
		{"another key, kid unknown to the set", sign(t, jwt.SigningMethodRS256, evil.rsa, c, "static-kid"), "invalid"},
		{"another key, no kid", sign(t, jwt.SigningMethodRS256, evil.rsa, c, ""), "invalid"},
	}))
}

// TestJWKSRotation: when the issuer publishes a new key and signs with it,
// the first token naming the new kid makes the module fetch the set again
// at once, long before the refresh interval.
func TestJWKSRotation(t *testing.T) {
	keys := testKeys()
	next := rotationKeys()[0]
	first := jwkOf(t, &keys.rsa.PublicKey, "rsa-1", jwkset.AlgRS256)
	srv := newJWKSServer(t, first)
	up := newUpstream(t)
	addr := startCaddy(t, jwksSite(srv.URL, "1h", ""), up.addr())

	c := claims("alice")
	n := runTokenCases(t, addr, "close", []attackCase{
		{"old key, before the rotation", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-1"), "accepted"},
	})
	before := srv.fetches.Load()
	srv.publish(t, first, jwkOf(t, &next.PublicKey, "rsa-2", jwkset.AlgRS256))
	n += runTokenCases(t, addr, "close", []attackCase{
		{"new key, its new kid", sign(t, jwt.SigningMethodRS256, next, c, "rsa-2"), "accepted"},
		{"old key, after the rotation", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-1"), "accepted"},
		{"new key, no kid", sign(t, jwt.SigningMethodRS256, next, c, ""), "accepted"},
		{"new kid, signed by the old key", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-2"), "invalid"},
	})
	if srv.fetches.Load() == before {
		t.Errorf("the new kid was accepted without a fetch of the set")
	}
	checkUpstreamSaw(t, up, n)
}

// TestJWKSEndpointFails: once a set was fetched, its keys keep working
// while the endpoint fails in any way; a token the cached keys cannot
// verify is then invalid, not unavailable.
func TestJWKSEndpointFails(t *testing.T) {
	keys, evil := testKeys(), attackerKeys()
	srv := newJWKSServer(t, standardSet(t)...)
	up := newUpstream(t)
	// A short refresh, so that failed refreshes happen quickly.
	addr := startCaddy(t, jwksSite(srv.URL, "100ms", ""), up.addr())

	c := claims("alice")
	good := []attackCase{
		{"RS256, kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-1"), "accepted"},
		{"ES256, no kid", sign(t, jwt.SigningMethodES256, keys.ec, c, ""), "accepted"},
	}
	n := runTokenCases(t, addr, "close", good)
	for _, mode := range []string{"500", "drop", "garbage"} {
		srv.setMode(mode)
		// Two more fetches: the first failed one has been fully handled
		// when the refresh loop starts the second.
		srv.waitFetches(t, srv.fetches.Load()+2)
		t.Logf("endpoint answers %s", mode)
		n += runTokenCases(t, addr, "close", good)
	}

	// The endpoint is gone altogether: connections are refused.
	srv.Close()
	time.Sleep(300 * time.Millisecond) // a few refresh intervals
	n += runTokenCases(t, addr, "close", append(good,
		attackCase{"unknown kid while the endpoint is gone", sign(t, jwt.SigningMethodRS256, evil.rsa, c, "evil"), "invalid"},
		attackCase{"another key, no kid, while the endpoint is gone", sign(t, jwt.SigningMethodRS256, evil.rsa, c, ""), "invalid"},
	))
	checkUpstreamSaw(t, up, n)
}

// TestJWKSUnreachable: when the set was never fetched, a handshake that
// needs it is refused as unavailable (1011, or 503), and once the
// endpoint comes up, the background refresh brings the keys.
func TestJWKSUnreachable(t *testing.T) {
	keys := testKeys()
	port := freePort(t) // nothing listens there
	url := fmt.Sprintf("http://127.0.0.1:%d/jwks", port)
	c := claims("alice")
	cases := []attackCase{
		{"RS256, kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-1"), "unavailable"},
		{"RS256, no kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, ""), "unavailable"},
		{"EdDSA, no kid", sign(t, jwt.SigningMethodEdDSA, keys.ed, c, ""), "unavailable"},
	}
	for _, mode := range []string{"status", "close"} {
		t.Run(mode, func(t *testing.T) {
			up := newUpstream(t)
			addr := startCaddy(t, jwksSite(url, "100ms", "reject "+mode), up.addr())
			runTokenCases(t, addr, mode, cases)

			// Not an upgrade: a status whatever the mode.
			resp, err := http.Get("http://" + addr + "/api?token=" + cases[0].token)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Errorf("plain request: status %d, want 503", resp.StatusCode)
			}
			checkUpstreamSaw(t, up, 0)
			if mode != "close" {
				return
			}

			// The endpoint comes up.
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Logf("port %d taken meanwhile, recovery not checked: %v", port, err)
				return
			}
			srv := &jwksServer{body: jwkSetJSON(t, standardSet(t)...), mode: "ok"}
			hs := &http.Server{Handler: http.HandlerFunc(srv.serve)}
			go func() { _ = hs.Serve(l) }()
			t.Cleanup(func() { _ = hs.Close() })
			deadline := time.Now().Add(5 * time.Second)
			for {
				cl, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + cases[0].token})
				got := outcome(t, cl, resp, err)
				if got == "accepted" {
					break
				}
				if got != "close 1011 unavailable" || time.Now().After(deadline) {
					t.Fatalf("after the endpoint came up: %s", got)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if n := len(up.requests()); n != 1 {
				t.Errorf("upstream saw %d requests, want 1", n)
			}
		})
	}
}

// TestJWKSFile: a local JWK Set file verifies like a remote one.
func TestJWKSFile(t *testing.T) {
	keys, evil := testKeys(), attackerKeys()
	file := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(file, jwkSetJSON(t, standardSet(t)...), 0o600); err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&keys.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	c := claims("alice")
	// In a subtest: startCaddy holds the harness lock until its test ends,
	// and the load failures below take it too.
	t.Run("keys", func(t *testing.T) {
		up := newUpstream(t)
		addr := startCaddy(t, `
		ws_auth {
			jwks_file `+file+`
		}
		reverse_proxy %UPSTREAM%`, up.addr())
		checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", []attackCase{
			{"RS256, kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-1"), "accepted"},
			{"ES256, kid", sign(t, jwt.SigningMethodES256, keys.ec, c, "ec-1"), "accepted"},
			{"EdDSA, kid", sign(t, jwt.SigningMethodEdDSA, keys.ed, c, "ed-1"), "accepted"},
			{"RS256, no kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, ""), "accepted"},
			{"RS256 by the RSA key, unknown kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-2"), "invalid"},
			{"another key, unknown kid", sign(t, jwt.SigningMethodRS256, evil.rsa, c, "evil"), "invalid"},
			{"another key, no kid", sign(t, jwt.SigningMethodRS256, evil.rsa, c, ""), "invalid"},
			{"PS256, kid of the key published for RS256", sign(t, jwt.SigningMethodPS256, keys.rsa, c, "rsa-1"), "invalid"},
			{"HS256 keyed with the DER, kid of the RSA key", sign(t, jwt.SigningMethodHS256, der, c, "rsa-any"), "invalid"},
		}))
	})

	for name, body := range map[string]string{
		"not JSON": `{"keys": [`,
		"no keys":  `{"keys": []}`,
		"missing":  "",
	} {
		t.Run(name, func(t *testing.T) {
			bad := filepath.Join(t.TempDir(), "bad.json")
			if body != "" {
				if err := os.WriteFile(bad, []byte(body), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			err := loadMustFail(t, "ws_auth {\n\t\tjwks_file "+bad+"\n\t}\n\treverse_proxy %UPSTREAM%")
			if !strings.Contains(err.Error(), "jwks_file") {
				t.Errorf("error %q does not name jwks_file", err)
			}
		})
	}
}

// TestJWKSTooLarge: a JWK Set response over 1 MiB is not used, however the
// bytes are arranged; one just under is.
func TestJWKSTooLarge(t *testing.T) {
	keys := testKeys()
	next := rotationKeys()[0]
	c := claims("alice")
	set := func(keys ...jwkset.JWKMarshal) string { return string(jwkSetJSON(t, keys...)) }
	// padded puts pad bytes of padding into the set's object.
	padded := func(pad int, keys ...jwkset.JWKMarshal) []byte {
		s := set(keys...)
		return []byte(strings.TrimSuffix(s, "}") + `,"padding":"` + strings.Repeat("x", pad) + `"}`)
	}
	rsa1 := jwkOf(t, &keys.rsa.PublicKey, "rsa-1", jwkset.AlgRS256)
	rsa2 := jwkOf(t, &next.PublicKey, "rsa-2", jwkset.AlgRS256)
	tok1 := sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-1")

	for _, tc := range []struct {
		name    string
		body    []byte
		declare bool
		want    string
	}{
		{"padding inside the set", padded(1<<20, rsa1), false, "unavailable"},
		{"padding inside the set, Content-Length", padded(1<<20, rsa1), true, "unavailable"},
		{"whitespace after the set", []byte(set(rsa1) + strings.Repeat(" ", 1<<20)), false, "unavailable"},
		{"whitespace after the set, Content-Length", []byte(set(rsa1) + strings.Repeat(" ", 1<<20)), true, "unavailable"},
		{"just under 1 MiB", padded(1<<20-4096, rsa1), false, "accepted"},
		{"just under 1 MiB, Content-Length", padded(1<<20-4096, rsa1), true, "accepted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newJWKSServer(t)
			srv.mu.Lock()
			srv.body, srv.declare = tc.body, tc.declare
			srv.mu.Unlock()
			up := newUpstream(t)
			addr := startCaddy(t, jwksSite(srv.URL, "100ms", ""), up.addr())
			checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", []attackCase{
				{"RS256, kid", tok1, tc.want},
				{"RS256, no kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, ""), tc.want},
			}))
		})
	}

	t.Run("after a good fetch", func(t *testing.T) {
		srv := newJWKSServer(t, rsa1)
		up := newUpstream(t)
		addr := startCaddy(t, jwksSite(srv.URL, "100ms", ""), up.addr())
		srv.setBody(padded(1<<20, rsa2))
		srv.waitFetches(t, srv.fetches.Load()+2)
		checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", []attackCase{
			{"cached key", tok1, "accepted"},
			{"key only in the oversized set", sign(t, jwt.SigningMethodRS256, next, c, "rsa-2"), "invalid"},
			{"key only in the oversized set, no kid", sign(t, jwt.SigningMethodRS256, next, c, ""), "invalid"},
		}))
	})
}

// TestJWKSUnreachableWithFile: a local set does not make an unreachable
// remote one "fetched": a token whose kid the local set does not have may
// be signed by a key of the remote set, which cannot be had yet, so it is
// unavailable (the client may retry), not invalid.
func TestJWKSUnreachableWithFile(t *testing.T) {
	keys := testKeys()
	remote := rotationKeys()[0]
	file := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(file, jwkSetJSON(t, jwkOf(t, &keys.rsa.PublicKey, "local-1", jwkset.AlgRS256)), 0o600); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/jwks", freePort(t)) // nothing listens there
	c := claims("alice")
	up := newUpstream(t)
	addr := startCaddy(t, jwksSite(url, "1s", "jwks_file "+file), up.addr())
	checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", []attackCase{
		{"local key, its kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "local-1"), "accepted"},
		{"remote key, its kid", sign(t, jwt.SigningMethodRS256, remote, c, "remote-1"), "unavailable"},
	}))
}

// TestJWKSKeyRemoved: a key the issuer takes out of its set stops
// verifying once the set is fetched again.
func TestJWKSKeyRemoved(t *testing.T) {
	keys := testKeys()
	next := rotationKeys()[0]
	first := jwkOf(t, &keys.rsa.PublicKey, "rsa-1", jwkset.AlgRS256)
	second := jwkOf(t, &next.PublicKey, "rsa-2", jwkset.AlgRS256)
	srv := newJWKSServer(t, first, second)
	up := newUpstream(t)
	addr := startCaddy(t, jwksSite(srv.URL, "100ms", ""), up.addr())

	c := claims("alice")
	old := sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-1")
	n := runTokenCases(t, addr, "close", []attackCase{{"old key, still published", old, "accepted"}})
	srv.publish(t, second)
	srv.waitFetches(t, srv.fetches.Load()+2)
	n += runTokenCases(t, addr, "close", []attackCase{
		{"old key, removed", old, "invalid"},
		{"old key, removed, no kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, ""), "invalid"},
		{"new key", sign(t, jwt.SigningMethodRS256, next, c, "rsa-2"), "accepted"},
	})
	checkUpstreamSaw(t, up, n)
}

// TestJWKSUnknownKIDFlood: tokens with made-up kids do not make the module
// fetch the set once each; the refetch for an unknown kid is rate-limited.
func TestJWKSUnknownKIDFlood(t *testing.T) {
	evil := attackerKeys()
	srv := newJWKSServer(t, standardSet(t)...)
	up := newUpstream(t)
	addr := startCaddy(t, jwksSite(srv.URL, "1h", ""), up.addr())

	before := srv.fetches.Load()
	var cases []attackCase
	for i := range 10 {
		kid := fmt.Sprintf("made-up-%d", i)
		cases = append(cases, attackCase{kid, sign(t, jwt.SigningMethodRS256, evil.rsa, claims("alice"), kid), "invalid"})
	}
	checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", cases))
	if n := srv.fetches.Load() - before; n > 1 {
		t.Errorf("10 unknown kids made %d fetches of the set, want at most 1", n)
	}
}

// TestJWKSSurvivesReload: a config reload reuses the cached key set
// instead of fetching it again, so an identity provider failing at that
// moment does not turn every handshake into "unavailable".
func TestJWKSSurvivesReload(t *testing.T) {
	keys := testKeys()
	srv := newJWKSServer(t, standardSet(t)...)
	up := newUpstream(t)
	site := "\tws_auth {\n\t\tjwks " + srv.URL + "\n\t}\n\treverse_proxy %UPSTREAM%"
	addr := startCaddy(t, site, up.addr())
	try := func() string {
		c, resp, err := dialSettled(addr, "/ws", dialOpts{query: "token=" + sign(t, jwt.SigningMethodRS256, keys.rsa, claims("alice"), "")})
		return outcome(t, c, resp, err)
	}
	if got := try(); got != "accepted" {
		t.Fatalf("before the reload: %s", got)
	}
	fetched := srv.fetches.Load()
	srv.setMode("500")
	if err := loadCaddyfile(testConfig(addr, site, up.addr())); err != nil { // a forced reload
		t.Fatal(err)
	}
	if got := try(); got != "accepted" {
		t.Errorf("after a reload while the endpoint fails: %s, want the cached set in use", got)
	}
	if n := srv.fetches.Load(); n != fetched {
		t.Errorf("the reload fetched the set again (%d fetches, was %d)", n, fetched)
	}
}

// TestJWKSRedirects: plain http is allowed only for loopback addresses,
// and that holds for every URL a fetch is redirected to, not only the one
// configured: a loopback endpoint redirecting elsewhere over plain http
// would let anyone on that path serve the keys. The redirect is refused
// before the target is dialed, so the set stays unfetched
// ("unavailable"); a redirect from loopback to loopback still works.
func TestJWKSRedirects(t *testing.T) {
	keys := testKeys()
	target := newJWKSServer(t, standardSet(t)...)
	_, port, err := net.SplitHostPort(target.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, jwt.SigningMethodRS256, keys.rsa, claims("alice"), "rsa-1")
	for _, tc := range []struct {
		name, to, want string
	}{
		// Not a loopback address by the rule, but on Linux a dial to
		// 0.0.0.0 reaches this machine: a redirect that the rule does
		// not stop is followed and its keys are trusted.
		{"to 0.0.0.0 over http", "http://0.0.0.0:" + port + "/jwks", "unavailable"},
		// No network here: must be refused before any lookup or dial.
		{"to another host over http", "http://example.invalid/jwks", "unavailable"},
		{"to another scheme", "ftp://127.0.0.1:" + port + "/jwks", "unavailable"},
		{"loopback to loopback", "http://localhost:" + port + "/jwks", "accepted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var redirected atomic.Int64
			redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				redirected.Add(1)
				http.Redirect(w, r, tc.to, http.StatusFound)
			}))
			t.Cleanup(redirector.Close)
			before := target.fetches.Load()
			up := newUpstream(t)
			addr := startCaddy(t, jwksSite(redirector.URL+"/jwks", "1h", ""), up.addr())
			checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", []attackCase{{"RS256, kid", tok, tc.want}}))
			if redirected.Load() == 0 {
				t.Errorf("the configured URL was never fetched")
			}
			fetched := target.fetches.Load() - before
			if tc.want == "unavailable" && fetched != 0 {
				t.Errorf("the redirect target was fetched %d times, want never", fetched)
			}
		})
	}
}

// TestJWKSFetchURLRule: the rule that both the configured URL and every
// redirect target must pass; it needs no network.
func TestJWKSFetchURLRule(t *testing.T) {
	for raw, ok := range map[string]bool{
		"https://idp.example.com/jwks.json": true,
		"https://127.0.0.1/jwks":            true,
		"http://127.0.0.1:8080/jwks":        true,
		"http://127.1.2.3/jwks":             true,
		"http://[::1]:8080/jwks":            true,
		"http://localhost/jwks":             true,
		"http://idp.example.com/jwks.json":  false,
		"http://0.0.0.0/jwks":               false,
		"http://192.0.2.1/jwks":             false,
		"http://localhost.example.com/jwks": false,
		"ftp://127.0.0.1/jwks":              false,
		"file:///etc/jwks.json":             false,
		"ws://127.0.0.1/jwks":               false,
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkFetchURL(u); (err == nil) != ok {
			t.Errorf("checkFetchURL(%q) = %v, want allowed %t", raw, err, ok)
		}
	}

	// The redirect check: the same rule, applied to the target, plus no
	// downgrade from https and a bound on the chain.
	req := func(raw string) *http.Request {
		r, err := http.NewRequest("GET", raw, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, tc := range []struct {
		from, to string
		ok       bool
	}{
		{"http://127.0.0.1/jwks", "https://idp.example.com/jwks", true},
		{"http://127.0.0.1/jwks", "http://localhost:8080/jwks", true},
		{"https://idp.example.com/jwks", "https://keys.example.net/jwks", true},
		{"http://127.0.0.1/jwks", "http://idp.example.com/jwks", false},
		{"http://127.0.0.1/jwks", "http://example.invalid/jwks", false},
		{"http://127.0.0.1/jwks", "ftp://127.0.0.1/jwks", false},
		{"https://idp.example.com/jwks", "http://127.0.0.1/jwks", false},
	} {
		err := checkJWKSRedirect(req(tc.to), []*http.Request{req(tc.from)})
		if (err == nil) != tc.ok {
			t.Errorf("redirect %s -> %s: %v, want allowed %t", tc.from, tc.to, err, tc.ok)
		}
	}
	via := []*http.Request{req("https://a.example/"), req("https://b.example/"), req("https://c.example/")}
	if err := checkJWKSRedirect(req("https://d.example/"), via); err == nil {
		t.Errorf("a fourth redirect was allowed")
	}
}

// TestJWKSRefreshFloor: with the floor the module ships with (10s; the
// other tests lower it), a shorter refresh is refused at adapt time with
// the Caddyfile line, and at load for JSON; the floor itself is allowed.
func TestJWKSRefreshFloor(t *testing.T) {
	lowered := minJWKSRefresh
	minJWKSRefresh = defaultMinJWKSRefresh
	t.Cleanup(func() { minJWKSRefresh = lowered })

	site := func(refresh string) string {
		return "\tws_auth {\n\t\tjwks https://idp.example.com/jwks.json {\n\t\t\trefresh " + refresh + "\n\t\t}\n\t}"
	}
	for _, refresh := range []string{"1ns", "9s"} {
		stage, err := validateSite(site(refresh))
		if err == nil || stage != "adapt" ||
			!strings.Contains(err.Error(), "jwks refresh: must be at least 10s") || !parseErrLocation.MatchString(err.Error()) {
			t.Errorf("refresh %s: error at %s: %v; want at adapt, with the floor and the line", refresh, stage, err)
		}
		js := `{"handler":"ws_auth","jwks":[{"url":"https://idp.example.com/jwks.json","refresh":"` + refresh + `"}]}`
		if err := validateJSON(handlerConfig(js)); err == nil || !strings.Contains(err.Error(), "refresh: must be at least 10s") {
			t.Errorf("JSON refresh %s: %v, want the floor", refresh, err)
		}
	}
	if _, _, err := adaptCaddyfile("http://localhost:9080 {\n" + site("10s") + "\n}\n"); err != nil {
		t.Errorf("refresh 10s: %v", err)
	}
}
