package wsauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/caddyserver/caddy/v2"
)

// The attack tests send hand-made and mis-signed tokens through a real
// Caddy and check that each one is refused with the reason the SPEC's
// table gives ("invalid" for all but a few), that the well-formed controls
// are accepted, and that nothing a refused client sent reached the upstream.

// attackCase is one token and what the client must see: "accepted" or a
// rejection reason (invalid, expired, unavailable).
type attackCase struct {
	name  string
	token string
	want  string
}

// reasonOutcome is what outcome reports for a refusal with rsn in the
// given reject mode, by the SPEC's table (not the code's, which is what is
// under test).
func reasonOutcome(mode, rsn string) string {
	want, ok := map[string]struct{ code, status int }{
		"invalid":     {1008, 401},
		"expired":     {4001, 401},
		"unavailable": {1011, 503},
	}[rsn]
	if !ok {
		panic("no expectation for reason " + rsn)
	}
	if mode == "status" {
		return "status " + strconv.Itoa(want.status)
	}
	return fmt.Sprintf("close %d %s", want.code, rsn)
}

// runTokenCases dials addr once per case with the token in the query
// string and checks the outcome; in status mode it also checks the
// WWW-Authenticate header of a 401. It returns how many were accepted.
func runTokenCases(t *testing.T, addr, mode string, cases []attackCase) int {
	t.Helper()
	accepted := 0
	for _, tc := range cases {
		c, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + url.QueryEscape(tc.token)})
		got := outcome(t, c, resp, err)
		want := "accepted"
		if tc.want != "accepted" {
			want = reasonOutcome(mode, tc.want)
		} else {
			accepted++
		}
		if got != want {
			t.Errorf("%s: got %q, want %q", tc.name, got, want)
			continue
		}
		if mode == "status" && tc.want == "invalid" {
			if h := resp.Header.Get("WWW-Authenticate"); h != `Bearer error="invalid_token"` {
				t.Errorf("%s: WWW-Authenticate = %q, want Bearer error=\"invalid_token\"", tc.name, h)
			}
		}
	}
	return accepted
}

// checkUpstreamSaw fails the test unless the upstream saw exactly the
// accepted clients: a refused one must never reach it.
func checkUpstreamSaw(t *testing.T, up *upstream, accepted int) {
	t.Helper()
	if n := len(up.requests()); n != accepted {
		t.Errorf("upstream saw %d requests, want %d (one per accepted client): a refused client reached it", n, accepted)
	}
}

var b64url = base64.RawURLEncoding.EncodeToString

// forgeToken assembles a token from a header and a payload, each a JSON
// string or a value to marshal, and raw signature bytes.
func forgeToken(header, payload any, sig []byte) string {
	enc := func(v any) string {
		if s, ok := v.(string); ok {
			return b64url([]byte(s))
		}
		return b64url([]byte(mustJSON(v)))
	}
	return enc(header) + "." + enc(payload) + "." + b64url(sig)
}

// signRawJWT signs a header and payload given as raw JSON with alg, so that
// a test can put into them what no claims type would marshal.
func signRawJWT(t testing.TB, alg string, key any, header map[string]any, payload string) string {
	t.Helper()
	h := map[string]any{"alg": alg, "typ": "JWT"}
	for k, v := range header {
		h[k] = v
	}
	signing := b64url([]byte(mustJSON(h))) + "." + b64url([]byte(payload))
	sig, err := jwt.GetSigningMethod(alg).Sign(signing, key)
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + b64url(sig)
}

// signECDSAAnyCurve signs an ES256/ES384/ES512 token with key whatever
// its curve, which the jwt library refuses to do: the alg's hash
// (truncated by ecdsa to the curve's size), with r and s padded to the
// size the alg's signature has. The jwt library's verifier does not check
// the key's curve, so only the keyring stands between such a token and
// acceptance.
func signECDSAAnyCurve(t testing.TB, alg string, key *ecdsa.PrivateKey, kid string, c jwt.MapClaims) string {
	t.Helper()
	h := map[string]any{"alg": alg, "typ": "JWT"}
	if kid != "" {
		h["kid"] = kid
	}
	signing := b64url([]byte(mustJSON(h))) + "." + b64url([]byte(mustJSON(c)))
	var sum []byte
	var size int
	switch alg {
	case "ES256":
		s := sha256.Sum256([]byte(signing))
		sum, size = s[:], 32
	case "ES384":
		s := sha512.Sum384([]byte(signing))
		sum, size = s[:], 48
	case "ES512":
		s := sha512.Sum512([]byte(signing))
		sum, size = s[:], 66
	default:
		t.Fatalf("not an ECDSA alg: %s", alg)
	}
	r, s, err := ecdsa.Sign(rand.Reader, key, sum)
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 2*size)
	r.FillBytes(sig[:size])
	s.FillBytes(sig[size:])
	return signing + "." + b64url(sig)
}

// flipSignature changes one character in the middle of the signature segment.
// (The last character may only carry padding bits, which a lenient
// base64 decoder ignores, so flipping it proves nothing.)
func flipSignature(tok string) string {
	i := strings.LastIndexByte(tok, '.')
	j := i + 1 + (len(tok)-i-1)/2
	c := byte('A')
	if tok[j] == 'A' {
		c = 'B'
	}
	return tok[:j] + string(c) + tok[j+1:]
}

// attackerKeys are keys that the server does not trust, generated once.
var attackerKeys = sync.OnceValue(func() *keySet {
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return &keySet{rsa: rk, ec: ek}
})

func claimSet(k string, v any) func(jwt.MapClaims) { return func(c jwt.MapClaims) { c[k] = v } }
func claimDel(k string) func(jwt.MapClaims)        { return func(c jwt.MapClaims) { delete(c, k) } }

// rawPayload is atkClaims as JSON with the claim k replaced by the raw
// JSON value v, for values that MapClaims would marshal differently.
func rawPayload(k, v string) string {
	c := atkClaims(claimSet(k, "@@@"))
	return strings.Replace(mustJSON(c), `"@@@"`, v, 1)
}

// TestAttackTokens sends each attack to a config whose only key is an RSA
// public key, in both reject modes.
func TestAttackTokens(t *testing.T) {
	keys, evil := testKeys(), attackerKeys()
	pemFile := writePublicPEM(t, &keys.rsa.PublicKey)
	pemBytes, err := os.ReadFile(pemFile)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&keys.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := x509.MarshalPKCS1PublicKey(&keys.rsa.PublicKey)

	rs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodRS256, keys.rsa, c, "") }
	good := rs(atkClaims())
	parts := strings.Split(good, ".")
	hdr, payload, sig := parts[0], parts[1], parts[2]
	other := strings.Split(rs(atkClaims(claimSet("sub", "mallory"))), ".")
	future := time.Now().Add(10 * time.Minute).Unix()

	cases := []attackCase{
		// Controls: the key does verify what it should.
		{"valid RS256", good, "accepted"},
		{"valid PS256 (default: every alg the key can verify)", sign(t, jwt.SigningMethodPS256, keys.rsa, atkClaims(), ""), "accepted"},
		{"aud array holding the accepted audience", rs(atkClaims(claimSet("aud", []string{"other-api", testAudience}))), "accepted"},
		// A kid names a key among several; a PEM key has no kid to match,
		// so the kid is no reason to refuse a token the key verifies (IdPs
		// put a kid in every token, and users configure their PEM key).
		{"unknown kid, signed by the PEM key", sign(t, jwt.SigningMethodRS256, keys.rsa, atkClaims(), "no-such-kid"), "accepted"},
		{"unknown kid, signed by another key", sign(t, jwt.SigningMethodRS256, evil.rsa, atkClaims(), "no-such-kid"), "invalid"},
		// A critical header extension must be understood (RFC 7515, 4.1.11):
		// we understand none, so even a correctly signed token is refused.
		// Claim names are case-sensitive (RFC 7519, section 4): an "Exp" or
		// "SUB" in a correctly signed token must not stand in for "exp" or
		// "sub"; a duplicated claim or header member makes the token invalid.
		{"expired, with a future Exp", signRawJWT(t, "RS256", keys.rsa, nil, strings.Replace(mustJSON(atkClaims(claimSet("exp", time.Now().Add(-time.Hour).Unix()))), `{`, `{"Exp":`+strconv.FormatInt(future, 10)+`,`, 1)), "expired"},
		{"no sub, with SUB", signRawJWT(t, "RS256", keys.rsa, nil, strings.Replace(mustJSON(atkClaims(claimDel("sub"))), `{`, `{"SUB":"admin",`, 1)), "invalid"},
		{"duplicate sub", signRawJWT(t, "RS256", keys.rsa, nil, strings.Replace(mustJSON(atkClaims()), `{`, `{"sub":"admin",`, 1)), "invalid"},
		{"duplicate exp", signRawJWT(t, "RS256", keys.rsa, nil, strings.Replace(mustJSON(atkClaims()), `{`, `{"exp":`+strconv.FormatInt(future, 10)+`,`, 1)), "invalid"},
		{"invalid UTF-8 in sub", signRawJWT(t, "RS256", keys.rsa, nil, strings.Replace(mustJSON(atkClaims()), `"sub":"alice"`, "\"sub\":\"alice\xff\"", 1)), "invalid"},
		{"nbf beyond the range of time", signRawJWT(t, "RS256", keys.rsa, nil, rawPayload("nbf", "1e19")), "invalid"},
		{"exp beyond the range of time", signRawJWT(t, "RS256", keys.rsa, nil, rawPayload("exp", "1e19")), "invalid"},
		{"newline inside the signature", good[:len(good)-10] + "\n" + good[len(good)-10:], "invalid"},
		{"crit header, correctly signed", signRawJWT(t, "RS256", keys.rsa, map[string]any{"crit": []string{"exp"}}, mustJSON(atkClaims())), "invalid"},
		{"correctly signed via signRawJWT (control)", signRawJWT(t, "RS256", keys.rsa, nil, mustJSON(atkClaims())), "accepted"},

		// alg none, in any spelling, with or without a signature.
		{"alg none", forgeToken(`{"alg":"none"}`, atkClaims(), nil), "invalid"},
		{"alg None", forgeToken(`{"alg":"None"}`, atkClaims(), nil), "invalid"},
		{"alg NONE", forgeToken(`{"alg":"NONE"}`, atkClaims(), nil), "invalid"},
		{"alg nOnE with typ", forgeToken(`{"alg":"nOnE","typ":"JWT"}`, atkClaims(), nil), "invalid"},
		{"alg none with a valid RS256 signature", forgeToken(`{"alg":"none","typ":"JWT"}`, atkClaims(), nil) + sig, "invalid"},
		{"alg none, then RS256 in a duplicate key", forgeToken(`{"alg":"RS256","alg":"none"}`, atkClaims(), nil), "invalid"},
		{"no alg", forgeToken(`{"typ":"JWT"}`, atkClaims(), nil), "invalid"},
		{"alg a number", forgeToken(`{"alg":256}`, atkClaims(), nil), "invalid"},
		{"alg empty", forgeToken(`{"alg":""}`, atkClaims(), nil), "invalid"},

		// HS/RS key confusion: the public key used as an HMAC secret.
		{"HS256 keyed with the PEM file", sign(t, jwt.SigningMethodHS256, pemBytes, atkClaims(), ""), "invalid"},
		{"HS256 keyed with the PEM file, trimmed", sign(t, jwt.SigningMethodHS256, []byte(strings.TrimSpace(string(pemBytes))), atkClaims(), ""), "invalid"},
		{"HS256 keyed with the DER bytes", sign(t, jwt.SigningMethodHS256, der, atkClaims(), ""), "invalid"},
		{"HS256 keyed with the PKCS#1 bytes", sign(t, jwt.SigningMethodHS256, pkcs1, atkClaims(), ""), "invalid"},
		{"HS384 keyed with the PEM file", sign(t, jwt.SigningMethodHS384, pemBytes, atkClaims(), ""), "invalid"},
		{"HS512 keyed with the DER bytes", sign(t, jwt.SigningMethodHS512, der, atkClaims(), ""), "invalid"},
		{"HS256 with some secret", sign(t, jwt.SigningMethodHS256, []byte(testSecret), atkClaims(), ""), "invalid"},

		// Signatures that do not verify.
		{"RS256 signed by another RSA key", sign(t, jwt.SigningMethodRS256, evil.rsa, atkClaims(), ""), "invalid"},
		{"RS256 signed by another key, which rides in the jwk header", func() string {
			tok := jwt.NewWithClaims(jwt.SigningMethodRS256, atkClaims())
			tok.Header["jwk"] = map[string]any{"kty": "RSA", "n": b64url(evil.rsa.N.Bytes()), "e": "AQAB"}
			s, err := tok.SignedString(evil.rsa)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}(), "invalid"},
		{"flipped signature character", flipSignature(good), "invalid"},
		{"another token's signature", hdr + "." + payload + "." + other[2], "invalid"},
		{"another token's payload", hdr + "." + other[1] + "." + sig, "invalid"},
		{"ES256 token, no EC key configured", sign(t, jwt.SigningMethodES256, keys.ec, atkClaims(), ""), "invalid"},

		// Truncated and malformed.
		{"signature segment dropped", hdr + "." + payload, "invalid"},
		{"signature empty", hdr + "." + payload + ".", "invalid"},
		{"last character dropped", good[:len(good)-1], "invalid"},
		{"one segment", hdr, "invalid"},
		{"two segments, payload and signature", payload + "." + sig, "invalid"},
		{"four segments", good + "." + sig, "invalid"},
		{"abc", "abc", "invalid"},
		{"a.b.c", "a.b.c", "invalid"},
		{"dots only", "..", "invalid"},
		{"not base64", "!!!.$$$.###", "invalid"},
		{"padded base64", hdr + "==." + payload + "." + sig, "invalid"},
		{"base64 of non-JSON", b64url([]byte("hello")) + "." + b64url([]byte("world")) + "." + b64url([]byte("sig")), "invalid"},
		{"header not JSON, rest valid", b64url([]byte("RS256")) + "." + payload + "." + sig, "invalid"},
		{"payload a JSON array, signed", signRawJWT(t, "RS256", keys.rsa, nil, `["alice"]`), "invalid"},
		{"payload a JSON string, signed", signRawJWT(t, "RS256", keys.rsa, nil, `"alice"`), "invalid"},
		{"payload null, signed", signRawJWT(t, "RS256", keys.rsa, nil, `null`), "invalid"},
		{"payload truncated JSON, signed", signRawJWT(t, "RS256", keys.rsa, nil, `{"sub":"alice"`), "invalid"},
		{"oversized (2 KiB, max_token_size 1KiB), signed", rs(atkClaims(claimSet("pad", strings.Repeat("x", 2048)))), "invalid"},

		// User claim.
		{"sub missing", rs(atkClaims(claimDel("sub"))), "invalid"},
		{"sub empty", rs(atkClaims(claimSet("sub", ""))), "invalid"},
		{"sub a number", rs(atkClaims(claimSet("sub", 42))), "invalid"},
		{"sub an array", rs(atkClaims(claimSet("sub", []string{"alice"}))), "invalid"},
		{"sub null", rs(atkClaims(claimSet("sub", nil))), "invalid"},

		// Time claims.
		{"exp missing", rs(atkClaims(claimDel("exp"))), "invalid"},
		{"exp a word", signRawJWT(t, "RS256", keys.rsa, nil, rawPayload("exp", `"tomorrow"`)), "invalid"},
		{"exp a numeric string", signRawJWT(t, "RS256", keys.rsa, nil, rawPayload("exp", strconv.Quote(strconv.FormatInt(future, 10)))), "invalid"},
		{"exp null", signRawJWT(t, "RS256", keys.rsa, nil, rawPayload("exp", `null`)), "invalid"},
		{"exp an object", signRawJWT(t, "RS256", keys.rsa, nil, rawPayload("exp", `{"t":1}`)), "invalid"},
		{"nbf 60s in the future, no leeway", rs(atkClaims(claimSet("nbf", time.Now().Add(time.Minute).Unix()))), "invalid"},
		{"nbf 10m in the future", rs(atkClaims(claimSet("nbf", future))), "invalid"},
		{"iat 10m in the future", rs(atkClaims(claimSet("iat", future))), "invalid"},
		{"expired", rs(atkClaims(claimSet("exp", time.Now().Add(-time.Minute).Unix()))), "expired"},
		// The signature is checked before the claims: an expired token
		// with a bad signature was never ours and is "invalid".
		{"expired with a bad signature", flipSignature(rs(atkClaims(claimSet("exp", time.Now().Add(-time.Minute).Unix())))), "invalid"},
		{"expired, signed by another key", sign(t, jwt.SigningMethodRS256, evil.rsa, atkClaims(claimSet("exp", time.Now().Add(-time.Minute).Unix())), ""), "invalid"},

		// Issuer and audience.
		{"wrong iss", rs(atkClaims(claimSet("iss", "https://evil.test"))), "invalid"},
		{"iss missing", rs(atkClaims(claimDel("iss"))), "invalid"},
		{"iss a prefix of the accepted one", rs(atkClaims(claimSet("iss", "https://issuer.tes"))), "invalid"},
		{"iss a number", rs(atkClaims(claimSet("iss", 1))), "invalid"},
		{"wrong aud", rs(atkClaims(claimSet("aud", "other-api"))), "invalid"},
		{"aud missing", rs(atkClaims(claimDel("aud"))), "invalid"},
		{"aud array without the accepted one", rs(atkClaims(claimSet("aud", []string{"a", "b"}))), "invalid"},
		{"aud empty array", rs(atkClaims(claimSet("aud", []string{}))), "invalid"},
	}

	for _, mode := range []string{"close", "status"} {
		t.Run(mode, func(t *testing.T) {
			up := newUpstream(t)
			addr := startCaddy(t, rsaSite(pemFile, "max_token_size 1KiB\n\t\treject "+mode), up.addr())
			checkUpstreamSaw(t, up, runTokenCases(t, addr, mode, cases))
		})
	}
}

// TestAttackKeyTypes: ES256 and EdDSA tokens verify with PEM keys, and
// nothing verifies with a key of another type or curve.
func TestAttackKeyTypes(t *testing.T) {
	keys, evil := testKeys(), attackerKeys()
	ecPEM := writePublicPEM(t, &keys.ec.PublicKey)
	edPEM := writePublicPEM(t, keys.ed.Public())
	ecBytes, err := os.ReadFile(ecPEM)
	if err != nil {
		t.Fatal(err)
	}
	up := newUpstream(t)
	addr := startCaddy(t, `
	ws_auth {
		public_key `+ecPEM+`
		public_key `+edPEM+`
	}
	reverse_proxy %UPSTREAM%`, up.addr())

	es := sign(t, jwt.SigningMethodES256, keys.ec, claims("alice"), "")
	zeroSig := strings.Join(strings.Split(es, ".")[:2], ".") + "." + b64url(make([]byte, 64))
	cases := []attackCase{
		{"ES256 by the P-256 PEM key", es, "accepted"},
		{"EdDSA by the Ed25519 PEM key", sign(t, jwt.SigningMethodEdDSA, keys.ed, claims("alice"), ""), "accepted"},
		{"ES256 with an unknown kid", sign(t, jwt.SigningMethodES256, keys.ec, claims("alice"), "kid-x"), "accepted"},
		// The hand-made signer is sound: its ES256 token is accepted.
		{"ES256 by the P-256 key, hand-made", signECDSAAnyCurve(t, "ES256", keys.ec, "", claims("alice")), "accepted"},
		{"ES384 signed by the P-256 key", signECDSAAnyCurve(t, "ES384", keys.ec, "", claims("alice")), "invalid"},
		{"ES512 signed by the P-256 key", signECDSAAnyCurve(t, "ES512", keys.ec, "", claims("alice")), "invalid"},
		{"ES256 signed by another P-256 key", sign(t, jwt.SigningMethodES256, evil.ec, claims("alice"), ""), "invalid"},
		{"ES256 with r = s = 0", zeroSig, "invalid"},
		{"ES256 with a DER signature", func() string {
			signing := strings.Join(strings.Split(es, ".")[:2], ".")
			sum := sha256.Sum256([]byte(signing))
			der, err := ecdsa.SignASN1(rand.Reader, keys.ec, sum[:])
			if err != nil {
				t.Fatal(err)
			}
			return signing + "." + b64url(der)
		}(), "invalid"},
		{"EdDSA with a flipped signature", flipSignature(sign(t, jwt.SigningMethodEdDSA, keys.ed, claims("alice"), "")), "invalid"},
		{"RS256, no RSA key configured", sign(t, jwt.SigningMethodRS256, keys.rsa, claims("alice"), ""), "invalid"},
		{"HS256 keyed with the EC PEM file", sign(t, jwt.SigningMethodHS256, ecBytes, claims("alice"), ""), "invalid"},
		{"HS256 keyed with the Ed25519 public key", sign(t, jwt.SigningMethodHS256, []byte(keys.ed.Public().(ed25519.PublicKey)), claims("alice"), ""), "invalid"},
	}
	checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", cases))
}

// TestAttackUserClaim: with user_claim email the user is the email claim,
// which must be a non-empty string; sub no longer matters.
func TestAttackUserClaim(t *testing.T) {
	keys := testKeys()
	pemFile := writePublicPEM(t, &keys.rsa.PublicKey)
	up := newUpstream(t)
	addr := startCaddy(t, rsaSite(pemFile, "user_claim email"), up.addr())

	rs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodRS256, keys.rsa, c, "") }
	cases := []attackCase{
		{"email present", rs(atkClaims(claimSet("email", "alice@example.test"))), "accepted"},
		{"email present, no sub", rs(atkClaims(claimSet("email", "alice@example.test"), claimDel("sub"))), "accepted"},
		{"email missing (sub present)", rs(atkClaims()), "invalid"},
		{"email empty", rs(atkClaims(claimSet("email", ""))), "invalid"},
		{"email a number", rs(atkClaims(claimSet("email", 7))), "invalid"},
		{"email an object", rs(atkClaims(claimSet("email", map[string]any{"v": "alice@example.test"}))), "invalid"},
		{"email in a nested object only", rs(atkClaims(claimSet("user", map[string]any{"email": "alice@example.test"}))), "invalid"},
	}
	n := runTokenCases(t, addr, "close", cases)
	checkUpstreamSaw(t, up, n)
	for i, r := range up.requests() {
		if got := r.Header.Get("X-User"); got != "alice@example.test" {
			t.Errorf("accepted client %d: upstream X-User = %q, want the email", i, got)
		}
	}
}

// TestAttackLeeway: leeway admits small clock skew on nbf, iat and exp,
// and no more.
func TestAttackLeeway(t *testing.T) {
	keys := testKeys()
	pemFile := writePublicPEM(t, &keys.rsa.PublicKey)
	up := newUpstream(t)
	addr := startCaddy(t, rsaSite(pemFile, "leeway 2m"), up.addr())

	rs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodRS256, keys.rsa, c, "") }
	n := time.Now()
	cases := []attackCase{
		{"nbf 60s in the future", rs(atkClaims(claimSet("nbf", n.Add(time.Minute).Unix()))), "accepted"},
		{"iat 60s in the future", rs(atkClaims(claimSet("iat", n.Add(time.Minute).Unix()))), "accepted"},
		{"exp 60s ago", rs(atkClaims(claimSet("exp", n.Add(-time.Minute).Unix()))), "accepted"},
		{"nbf 10m in the future", rs(atkClaims(claimSet("nbf", n.Add(10*time.Minute).Unix()))), "invalid"},
		{"iat 10m in the future", rs(atkClaims(claimSet("iat", n.Add(10*time.Minute).Unix()))), "invalid"},
		{"exp 10m ago", rs(atkClaims(claimSet("exp", n.Add(-10*time.Minute).Unix()))), "expired"},
		{"exp 10m ago, bad signature", flipSignature(rs(atkClaims(claimSet("exp", n.Add(-10*time.Minute).Unix())))), "invalid"},
	}
	checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", cases))
}

// TestAttackAlgorithmsOption: an explicit allow-list narrows what the key
// may verify.
func TestAttackAlgorithmsOption(t *testing.T) {
	keys := testKeys()
	pemFile := writePublicPEM(t, &keys.rsa.PublicKey)
	up := newUpstream(t)
	addr := startCaddy(t, rsaSite(pemFile, "algorithms RS256"), up.addr())

	cases := []attackCase{
		{"RS256", sign(t, jwt.SigningMethodRS256, keys.rsa, atkClaims(), ""), "accepted"},
		{"PS256 by the same key", sign(t, jwt.SigningMethodPS256, keys.rsa, atkClaims(), ""), "invalid"},
		{"RS384 by the same key", sign(t, jwt.SigningMethodRS384, keys.rsa, atkClaims(), ""), "invalid"},
		{"alg none", forgeToken(`{"alg":"none"}`, atkClaims(), nil), "invalid"},
	}
	checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", cases))
}

// TestAttackAlgorithmsConfig: an allow-list that admits "none", or an
// algorithm no configured key can verify, does not load, and the error
// names the option.
func TestAttackAlgorithmsConfig(t *testing.T) {
	pemFile := writePublicPEM(t, &testKeys().rsa.PublicKey)
	for _, tc := range []struct{ algs, mention string }{
		{"none", "none"},
		{"NONE", "none"},
		{"RS256 none", "none"},
		{"HS256", "HS256"},
		{"RS256 HS256", "HS256"},
		{"ES256", "ES256"},
		{"RS257", "RS257"},
	} {
		t.Run(tc.algs, func(t *testing.T) {
			err := loadMustFail(t, rsaSite(pemFile, "algorithms "+tc.algs))
			if !strings.Contains(err.Error(), "algorithms") || !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(tc.mention)) {
				t.Errorf("algorithms %s: error %q does not name the option and %s", tc.algs, err, tc.mention)
			}
		})
	}
}

// loadMustFail loads a Caddyfile site that must not load and returns the
// error. It takes the harness's lock, as startCaddy does, so a test must
// not call it after startCaddy (which keeps the lock until the test ends).
func loadMustFail(t *testing.T, site string) error {
	t.Helper()
	caddyMu.Lock()
	defer caddyMu.Unlock()
	cfg := testConfig(fmt.Sprintf("127.0.0.1:%d", freePort(t)), site, "127.0.0.1:9")
	err := loadCaddyfile(cfg)
	if err == nil {
		_ = caddy.Stop()
		t.Fatalf("config loaded, want an error:\n%s", cfg)
	}
	return err
}

// TestAttackNonUpgrade: a plain request with a forged token gets 401 like
// an upgrade, and does not reach the upstream either.
func TestAttackNonUpgrade(t *testing.T) {
	keys := testKeys()
	pemFile := writePublicPEM(t, &keys.rsa.PublicKey)
	up := newUpstream(t)
	addr := startCaddy(t, rsaSite(pemFile, ""), up.addr())
	for _, tok := range []string{
		forgeToken(`{"alg":"none"}`, atkClaims(), nil),
		sign(t, jwt.SigningMethodHS256, []byte(readFileT(t, pemFile)), atkClaims(), ""),
	} {
		req, _ := http.NewRequest("GET", "http://"+addr+"/api", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
			t.Errorf("plain request with a forged token: %d %q, want 401 invalid_token", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
	checkUpstreamSaw(t, up, 0)
}

func readFileT(t testing.TB, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
