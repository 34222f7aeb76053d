package wsauth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// Tests of identity providers (issue 12): a key set served over https with
// a certificate of the provider's own CA, trusted for that URL alone
// (tls_trust_pool), and OpenID Connect discovery (oidc), through a real
// Caddy.

// An idpServer is an identity provider over https, with a certificate of
// its own CA (httptest's): a discovery document and a key set.
type idpServer struct {
	*httptest.Server
	caFile    string // the CA's certificate, PEM
	discovers atomic.Int64

	mu     sync.Mutex
	issuer string // the issuer the document names; default the server's URL
	keys   []byte
}

func newIdP(t *testing.T, keys ...jwkset.JWKMarshal) *idpServer {
	t.Helper()
	s := &idpServer{keys: jwkSetJSON(t, keys...)}
	mux := http.NewServeMux()
	mux.HandleFunc("/realms/app/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		s.discovers.Add(1)
		s.mu.Lock()
		issuer := s.issuer
		s.mu.Unlock()
		if issuer == "" {
			issuer = s.URL + "/realms/app"
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                issuer,
			"jwks_uri":                              s.URL + "/realms/app/protocol/openid-connect/certs",
			"authorization_endpoint":                s.URL + "/realms/app/protocol/openid-connect/auth",
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256"},
		})
	})
	mux.HandleFunc("/realms/app/protocol/openid-connect/certs", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		keys := s.keys
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(keys)
	})
	s.Server = httptest.NewTLSServer(mux)
	t.Cleanup(s.Close)
	s.caFile = writePEM(t, "CERTIFICATE", s.Certificate().Raw)
	return s
}

// issuerURL is the issuer the provider serves.
func (s *idpServer) issuerURL() string { return s.URL + "/realms/app" }

// idpSite is a site protected by keys of the provider, with opts in the
// ws_auth block, handing the user to the upstream.
func idpSite(keyOption, opts string) string {
	return `
	ws_auth {
		` + keyOption + `
		` + opts + `
	}
	reverse_proxy %UPSTREAM% {
		header_up X-User {http.auth.user.id}
		header_up X-Scopes {ws_auth.scopes}
	}`
}

// idpToken is an RS256 token of the test key with kid rsa-1, from issuer,
// for the test audience.
func idpToken(t *testing.T, issuer, user string, mods ...func(jwt.MapClaims)) string {
	t.Helper()
	c := claims(user, func(c jwt.MapClaims) {
		c["iss"] = issuer
		c["aud"] = testAudience
	})
	for _, m := range mods {
		m(c)
	}
	return sign(t, jwt.SigningMethodRS256, testKeys().rsa, c, "rsa-1")
}

// TestJWKSTrustPool: a key set served with a certificate of a private CA
// is fetched when that CA is trusted for its URL (tls_trust_pool), and is
// unavailable when it is not: the system's trust store does not know it.
func TestJWKSTrustPool(t *testing.T) {
	idp := newIdP(t, standardSet(t)...)
	keysURL := idp.URL + "/realms/app/protocol/openid-connect/certs"
	tok := idpToken(t, "https://anyone.test", "alice")
	t.Run("trusted", func(t *testing.T) {
		up := newLiveUpstream(t)
		addr := startCaddy(t, idpSite("jwks "+keysURL+" {\n\t\t\ttls_trust_pool file "+idp.caFile+"\n\t\t}", ""), up.addr())
		if got := dialOutcome(t, addr, "/ws", tok); got != "accepted" {
			t.Errorf("a token of the set, its CA trusted: %s, want accepted", got)
		}
	})
	t.Run("untrusted", func(t *testing.T) {
		up := newLiveUpstream(t)
		addr := startCaddy(t, idpSite("jwks "+keysURL, ""), up.addr())
		if got := dialOutcome(t, addr, "/ws", tok); got != "close 1011 unavailable" {
			t.Errorf("a token of the set, its CA not trusted: %s, want close 1011 unavailable", got)
		}
	})
}

// TestOIDCDiscovery: with oidc, the issuer's discovery document names the
// key set, whose tokens are accepted with their placeholders when they
// come from that issuer, and refused when they name another one.
func TestOIDCDiscovery(t *testing.T) {
	idp := newIdP(t, standardSet(t)...)
	up := newLiveUpstream(t)
	site := idpSite("oidc "+idp.issuerURL()+" {\n\t\t\ttls_trust_pool file "+idp.caFile+"\n\t\t}", "audience "+testAudience)
	addr := startCaddy(t, site, up.addr())
	if n := idp.discovers.Load(); n != 1 {
		t.Errorf("the discovery document was fetched %d times at load, want once", n)
	}
	cases := []struct {
		name, token, want string
	}{
		{"a token of the issuer", idpToken(t, idp.issuerURL(), "alice"), "accepted"},
		{"a token of another issuer, signed by the same key", idpToken(t, "https://other.test/realms/app", "bob"), "close 1008 invalid"},
		{"a token of the issuer for another audience", idpToken(t, idp.issuerURL(), "carol", func(c jwt.MapClaims) { c["aud"] = "other-api" }), "close 1008 invalid"},
		{"a token of the issuer signed by another key", sign(t, jwt.SigningMethodRS256, attackerKeys().rsa, func() jwt.MapClaims {
			c := claims("mallory")
			c["iss"], c["aud"] = idp.issuerURL(), testAudience
			return c
		}(), "rsa-1"), "close 1008 invalid"},
	}
	for _, tc := range cases {
		if got := dialOutcome(t, addr, "/ws", tc.token); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
	if got := up.header(t, 0).Get("X-User"); got != "alice" {
		t.Errorf("the upstream saw X-User %q, want alice", got)
	}
}

// TestOIDCIssuerMismatch: a discovery document that names another issuer
// fails the load, with an error that says which.
func TestOIDCIssuerMismatch(t *testing.T) {
	idp := newIdP(t, standardSet(t)...)
	idp.mu.Lock()
	idp.issuer = "https://login.example.com/realms/app"
	idp.mu.Unlock()
	caddyMu.Lock()
	defer caddyMu.Unlock()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	site := idpSite("oidc "+idp.issuerURL()+" {\n\t\t\ttls_trust_pool file "+idp.caFile+"\n\t\t}", "")
	err := loadCaddyfile(testConfig(addr, site, "127.0.0.1:9"))
	if err == nil {
		t.Fatal("the config loaded, want an error")
	}
	for _, want := range []string{"oidc " + idp.issuerURL(), `names the issuer "https://login.example.com/realms/app"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("load error %q does not say %q", err, want)
		}
	}
}

// providerShapedSet is a key set as providers publish theirs: an RSA key
// with alg and one without (Entra ID, Google), the same kid listed for enc
// before sig (Keycloak), an Ed25519 key with its certificate and no alg, an
// oct key (never used from a remote set), and keys ws_auth cannot use
// (secp256k1, a point off its curve, a malformed x5c).
func providerShapedSet(t *testing.T) []byte {
	keys := testKeys()
	bad := unusableKeys(t)
	members := jwkMembers(
		jwkUse(t, &rotationKeys()[0].PublicKey, "dup", jwkset.AlgRSAOAEP, jwkset.UseEnc),
		jwkUse(t, &keys.rsa.PublicKey, "dup", jwkset.AlgRS256, jwkset.UseSig),
		jwkOf(t, &keys.rsa.PublicKey, "rsa-1", jwkset.AlgRS256),
		jwkOf(t, &keys.ec.PublicKey, "ec-noalg", ""),
	)
	members = append(members, ed25519WithCert(t, "ed-cert", ""), octMember("oct-1", []byte(testSecret), "HS256"),
		bad["secp256k1"], bad["off-curve"], bad["x5c-string"])
	return keySetOf(members...)
}

// TestProviderShapedSetOverHTTPS: a provider-shaped key set served over
// https by a provider with its own CA verifies what it should and refuses
// the rest, through discovery and as a jwks, with the placeholders right.
func TestProviderShapedSetOverHTTPS(t *testing.T) {
	keys := testKeys()
	idp := newIdP(t)
	idp.mu.Lock()
	idp.keys = providerShapedSet(t)
	idp.mu.Unlock()
	trust := " {\n\t\t\ttls_trust_pool file " + idp.caFile + "\n\t\t}"
	iss := idp.issuerURL()
	tok := func(method jwt.SigningMethod, key any, kid, user string) string {
		c := claims(user)
		c["iss"], c["aud"] = iss, testAudience
		return sign(t, method, key, c, kid)
	}
	cases := []struct{ name, token, want string }{
		{"RS256, the sig key of a kid also listed for enc", tok(jwt.SigningMethodRS256, keys.rsa, "dup", "dup-user"), "accepted"},
		{"RS256 by kid", tok(jwt.SigningMethodRS256, keys.rsa, "rsa-1", "rsa-user"), "accepted"},
		{"ES256, a key without alg", tok(jwt.SigningMethodES256, keys.ec, "ec-noalg", "ec-user"), "accepted"},
		{"EdDSA, a key with its certificate and no alg", tok(jwt.SigningMethodEdDSA, keys.ed, "ed-cert", "ed-user"), "accepted"},
		{"RS256 without kid", tok(jwt.SigningMethodRS256, keys.rsa, "", "nokid-user"), "accepted"},
		{"HS256 with the published oct key", tok(jwt.SigningMethodHS256, []byte(testSecret), "oct-1", "oct-user"), "close 1008 invalid"},
		{"a token naming the skipped secp256k1 key", tok(jwt.SigningMethodES256, keys.ec, "secp256k1", "k1-user"), "close 1008 invalid"},
		{"RS256 by another key under a published kid", tok(jwt.SigningMethodRS256, attackerKeys().rsa, "rsa-1", "mallory"), "close 1008 invalid"},
	}
	for _, form := range []struct{ name, option string }{
		{"oidc", "oidc " + iss + trust},
		{"jwks", "jwks " + idp.URL + "/realms/app/protocol/openid-connect/certs" + trust + "\n\t\tissuer " + iss},
	} {
		t.Run(form.name, func(t *testing.T) {
			up := newLiveUpstream(t)
			addr := startCaddy(t, idpSite(form.option, "audience "+testAudience), up.addr())
			accepted := 0
			for _, tc := range cases {
				if got := dialOutcome(t, addr, "/ws", tc.token); got != tc.want {
					t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
				} else if got == "accepted" {
					if user := up.header(t, accepted).Get("X-User"); !strings.HasSuffix(user, "-user") {
						t.Errorf("%s: the upstream saw X-User %q", tc.name, user)
					}
					accepted++
				}
			}
		})
	}
}
