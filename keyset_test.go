package wsauth

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/caddyserver/caddy/v2"
)

// Key sets as identity providers publish them: keys ws_auth cannot use
// among good ones, a kid listed twice, symmetric keys, the RFC 9864 name
// Ed25519. Each is tried from a jwks_file and from a remote jwks, which
// must behave the same.

// keySetOf is a JWK Set of raw JSON members, so that a test can put in it
// what jwkset would not marshal.
func keySetOf(members ...string) []byte {
	return []byte(`{"keys":[` + strings.Join(members, ",") + `]}`)
}

// jwkMembers is the JSON of each JWK.
func jwkMembers(keys ...jwkset.JWKMarshal) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = mustJSON(k)
	}
	return out
}

// jwkUse is jwkOf with a use.
func jwkUse(t testing.TB, pub any, kid string, alg jwkset.ALG, use jwkset.USE) jwkset.JWKMarshal {
	t.Helper()
	j, err := jwkset.NewJWKFromKey(pub, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: alg, USE: use}})
	if err != nil {
		t.Fatal(err)
	}
	return j.Marshal()
}

// ed25519WithCert is the Ed25519 test key as some providers publish it:
// with its certificate (x5c and x5t) and the given alg, possibly none.
func ed25519WithCert(t *testing.T, kid, alg string) string {
	t.Helper()
	k := testKeys()
	der := selfSigned(t, k.ed.Public(), k.ed)
	sum := sha1.Sum(der)
	m := map[string]any{
		"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
		"x":   b64url(k.ed.Public().(ed25519.PublicKey)),
		"x5c": []string{base64.StdEncoding.EncodeToString(der)},
		"x5t": b64url(sum[:]),
	}
	if alg != "" {
		m["alg"] = alg
	}
	return mustJSON(m)
}

// unusableKeys are keys that a set may hold and ws_auth cannot use, each
// with its kid: a secp256k1 key (Ethereum's curve, which neither jwkset
// nor golang-jwt verifies), an EC point that is not on its curve, a key
// whose x5c is a string rather than an array, and an RSA key whose
// certificate holds another key.
func unusableKeys(t *testing.T) map[string]string {
	k := testKeys()
	other := rotationKeys()[1]
	n32 := b64url(bytes.Repeat([]byte{7}, 32))
	otherCert := base64.StdEncoding.EncodeToString(selfSigned(t, &k.rsa.PublicKey, k.rsa))
	rsaOf := func(kid string, x5c any) string {
		m := map[string]any{}
		if err := json.Unmarshal([]byte(mustJSON(jwkUse(t, &other.PublicKey, kid, jwkset.AlgRS256, jwkset.UseSig))), &m); err != nil {
			t.Fatal(err)
		}
		m["x5c"] = x5c
		return mustJSON(m)
	}
	return map[string]string{
		"secp256k1":  `{"kty":"EC","crv":"secp256k1","kid":"secp256k1","use":"sig","alg":"ES256K","x":"` + n32 + `","y":"` + n32 + `"}`,
		"off-curve":  `{"kty":"EC","crv":"P-256","kid":"off-curve","use":"sig","alg":"ES256","x":"` + n32 + `","y":"` + n32 + `"}`,
		"x5c-string": rsaOf("x5c-string", otherCert),
		"x5c-other":  rsaOf("x5c-other", []string{otherCert}),
	}
}

// startCaddyLogged is startCaddy with every log of the process, at DEBUG,
// written to a file: logged returns its entries so far.
func startCaddyLogged(t *testing.T, site, upstream string) (addr string, logged func() []map[string]any) {
	t.Helper()
	caddyMu.Lock()
	t.Cleanup(caddyMu.Unlock)
	file := filepath.Join(t.TempDir(), "caddy.log")
	addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := fmt.Sprintf("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tlog default {\n\t\toutput file %s\n\t\tlevel DEBUG\n\t}\n}\n\nhttp://%s {\n%s\n}\n",
		file, addr, strings.ReplaceAll(site, "%UPSTREAM%", upstream))
	if err := loadCaddyfile(cfg); err != nil {
		t.Fatalf("loading config: %v\n%s", err, cfg)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	waitListening(t, addr)
	return addr, func() []map[string]any { return readLog(t, file) }
}

// readLog reads a JSON log file into its entries.
func readLog(t testing.TB, file string) []map[string]any {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e map[string]any
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// findLog returns the first entry whose msg contains want["msg"] and whose
// other fields equal the rest of want.
func findLog(entries []map[string]any, want map[string]string) map[string]any {
	for _, e := range entries {
		ok := true
		for k, v := range want {
			s, _ := e[k].(string)
			if k == "msg" && !strings.Contains(s, v) || k != "msg" && s != v {
				ok = false
				break
			}
		}
		if ok {
			return e
		}
	}
	return nil
}

// writeKeySet writes a JWK Set file and returns its path.
func writeKeySet(t testing.TB, body []byte) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(file, body, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// keySetSites serves body as a jwks_file and as a remote jwks, and runs
// check against a Caddy for each, with opts in the ws_auth block; set is
// how ws_auth names the key set.
func keySetSites(t *testing.T, body []byte, opts string, check func(t *testing.T, addr, set string, logged func() []map[string]any)) {
	t.Run("jwks_file", func(t *testing.T) {
		file := writeKeySet(t, body)
		up := newUpstream(t)
		addr, logged := startCaddyLogged(t, "\tws_auth {\n\t\tjwks_file "+file+"\n\t\t"+opts+"\n\t}\n\treverse_proxy %UPSTREAM%", up.addr())
		check(t, addr, "jwks_file "+file, logged)
	})
	t.Run("jwks", func(t *testing.T) {
		srv := newJWKSServer(t)
		srv.setBody(body)
		up := newUpstream(t)
		addr, logged := startCaddyLogged(t, jwksSite(srv.URL, "1s", opts), up.addr())
		check(t, addr, "jwks "+srv.URL, logged)
	})
}

// TestKeySetUnusableKeys: a key that cannot be used (secp256k1, a point
// off its curve, a malformed x5c, a certificate of another key) is
// skipped with a warning naming its kid and the set, and the other keys
// of the set keep verifying, from a jwks_file as from a remote jwks; an
// Ed25519 key published with its certificate and without alg, which
// jwkset alone refuses, is used.
func TestKeySetUnusableKeys(t *testing.T) {
	keys := testKeys()
	bad := unusableKeys(t)
	members := append(jwkMembers(standardSet(t)...), ed25519WithCert(t, "ed-x5c", ""))
	for _, m := range bad {
		members = append(members, m)
	}
	c := claims("alice")
	cases := []attackCase{
		{"RS256, kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-1"), "accepted"},
		{"ES256, kid", sign(t, jwt.SigningMethodES256, keys.ec, c, "ec-1"), "accepted"},
		{"EdDSA, kid", sign(t, jwt.SigningMethodEdDSA, keys.ed, c, "ed-1"), "accepted"},
		{"EdDSA, kid of the Ed25519 key with a certificate and no alg", sign(t, jwt.SigningMethodEdDSA, keys.ed, c, "ed-x5c"), "accepted"},
		{"RS256, no kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, ""), "accepted"},
		{"ES256 by the EC key, kid of the secp256k1 key", sign(t, jwt.SigningMethodES256, keys.ec, c, "secp256k1"), "invalid"},
		{"RS256 by the key whose certificate is another's, its kid", sign(t, jwt.SigningMethodRS256, rotationKeys()[1], c, "x5c-other"), "invalid"},
		{"RS256 by that key, no kid", sign(t, jwt.SigningMethodRS256, rotationKeys()[1], c, ""), "invalid"},
	}
	keySetSites(t, keySetOf(members...), "", func(t *testing.T, addr, set string, logged func() []map[string]any) {
		runTokenCases(t, addr, "close", cases)
		entries := logged()
		for kid := range bad {
			if findLog(entries, map[string]string{"msg": "skipping a key", "kid": kid, "set": set}) == nil {
				t.Errorf("no warning names the skipped key %q of %s", kid, set)
			}
		}
		for _, kid := range []string{"rsa-1", "ed-x5c"} {
			if e := findLog(entries, map[string]string{"msg": "skipping a key", "kid": kid}); e != nil {
				t.Errorf("the usable key %q was skipped: %v", kid, e)
			}
		}
	})

	// A refresh that brings a new key next to one that cannot be used
	// brings the new key.
	t.Run("jwks refresh", func(t *testing.T) {
		next := rotationKeys()[0]
		srv := newJWKSServer(t, standardSet(t)...)
		up := newUpstream(t)
		addr, logged := startCaddyLogged(t, jwksSite(srv.URL, "100ms", ""), up.addr())
		srv.setBody(keySetOf(append(members, mustJSON(jwkOf(t, &next.PublicKey, "rsa-2", jwkset.AlgRS256)))...))
		srv.waitFetches(t, srv.fetches.Load()+2)
		runTokenCases(t, addr, "close", append(cases,
			attackCase{"RS256 by the new key, its kid", sign(t, jwt.SigningMethodRS256, next, c, "rsa-2"), "accepted"}))
		if findLog(logged(), map[string]string{"msg": "skipping a key", "kid": "secp256k1", "set": "jwks " + srv.URL}) == nil {
			t.Errorf("no warning names the skipped key")
		}
	})

	// A set where no key can be used is a failed fetch: the last good
	// set keeps serving.
	t.Run("jwks refresh without a usable key", func(t *testing.T) {
		srv := newJWKSServer(t, standardSet(t)...)
		up := newUpstream(t)
		addr, logged := startCaddyLogged(t, jwksSite(srv.URL, "100ms", ""), up.addr())
		var only []string
		for _, m := range bad {
			only = append(only, m)
		}
		srv.setBody(keySetOf(only...))
		srv.waitFetches(t, srv.fetches.Load()+2)
		runTokenCases(t, addr, "close", []attackCase{cases[0], cases[1], cases[2], cases[4]})
		if findLog(logged(), map[string]string{"msg": "serving the last good set", "url": srv.URL}) == nil {
			t.Errorf("no warning that the last good set is serving")
		}
	})
}

// TestParseKeySet: a JWK Set is parsed key by key, as jwkset parses a
// fetched set: the keys it refuses are skipped with their index, kid and
// reason, an Ed25519 key with a certificate is given alg EdDSA, and a
// fetched set is handed to jwkset without the skipped keys (unchanged when
// none is), or refused when no key is left.
func TestParseKeySet(t *testing.T) {
	bad := unusableKeys(t)
	good := jwkMembers(standardSet(t)...)
	members := []string{good[0], good[1], bad["secp256k1"], "42", ed25519WithCert(t, "ed-x5c", ""), bad["x5c-string"], good[2]}
	keys, skipped, amended, err := parseKeySet(keySetOf(members...))
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range keys {
		kids = append(kids, k.Marshal().KID)
		if k.Marshal().KID == "ed-x5c" && k.Marshal().ALG != jwkset.AlgEdDSA {
			t.Errorf("the Ed25519 key with a certificate has alg %q, want EdDSA", k.Marshal().ALG)
		}
	}
	if got, want := strings.Join(kids, " "), "rsa-1 rsa-any ed-x5c ec-1"; got != want {
		t.Errorf("kept %q, want %q", got, want)
	}
	var got []string
	for _, s := range skipped {
		got = append(got, fmt.Sprintf("%d %s", s.index, s.kid))
	}
	if g, want := strings.Join(got, ", "), "2 secp256k1, 3 , 5 x5c-string"; g != want {
		t.Errorf("skipped %q, want %q", g, want)
	}
	if !amended {
		t.Errorf("the Ed25519 key with a certificate was not amended")
	}
	if l := skippedList(skipped); !strings.Contains(l, `key 3, kid "secp256k1": `) || !strings.Contains(l, "secp256k1\"") {
		t.Errorf("skippedList = %q", l)
	}
	for _, raw := range []string{`[]`, `{"keys":{}}`, `{"keys":[`, `"keys"`} {
		if _, _, _, err := parseKeySet([]byte(raw)); err == nil {
			t.Errorf("parseKeySet(%s): no error", raw)
		}
	}

	// What a fetch hands jwkset.
	const set = "jwks https://idp.example/jwks"
	for name, body := range map[string][]byte{
		"every key usable": keySetOf(good...),
		"no keys":          []byte(`{"keys":[]}`),
		"not a set":        []byte(`{"issuer":"https://idp.example","jwks_uri":"https://idp.example/jwks"}`),
		"not JSON":         []byte(`{"keys": [`),
	} {
		out, err := usableKeySet(body, set)
		if err != nil || !bytes.Equal(out, body) {
			t.Errorf("%s: usableKeySet changed the body (error %v)", name, err)
		}
	}
	out, err := usableKeySet(keySetOf(members...), set)
	if err != nil {
		t.Fatal(err)
	}
	var parsed jwkset.JWKSMarshal
	if err := json.Unmarshal(out, &parsed); err != nil {
		t.Fatal(err)
	}
	kids = nil
	for _, m := range parsed.Keys {
		// As jwkset parses a fetched set: any error fails it whole.
		if _, err := jwkset.NewJWKFromMarshal(m, jwkset.JWKMarshalOptions{Private: true}, jwkset.JWKValidateOptions{}); err != nil {
			t.Errorf("jwkset refuses key %q of the set handed to it: %v", m.KID, err)
		}
		kids = append(kids, m.KID)
	}
	if got, want := strings.Join(kids, " "), "rsa-1 rsa-any ed-x5c ec-1"; got != want {
		t.Errorf("handed jwkset %q, want %q", got, want)
	}
	if _, err := usableKeySet(keySetOf(bad["secp256k1"], bad["off-curve"]), set); err == nil ||
		!strings.Contains(err.Error(), "no usable key") || !strings.Contains(err.Error(), `kid "off-curve"`) {
		t.Errorf("a set without a usable key: %v, want an error naming its keys", err)
	}
}

// TestKeySetDuplicateKID: a kid listed twice (the same key for enc and for
// sig, one key for two algs, two keys) picks the key whose use and alg fit
// the token, whatever the order of the set.
func TestKeySetDuplicateKID(t *testing.T) {
	keys := testKeys()
	other := rotationKeys()[0]
	enc := jwkUse(t, &keys.rsa.PublicKey, "dup", jwkset.AlgRSAOAEP, jwkset.UseEnc)
	sig := jwkUse(t, &keys.rsa.PublicKey, "dup", jwkset.AlgRS256, jwkset.UseSig)
	rs := jwkUse(t, &other.PublicKey, "two-algs", jwkset.AlgRS256, "")
	ps := jwkUse(t, &other.PublicKey, "two-algs", jwkset.AlgPS256, "")
	ec := jwkUse(t, &keys.ec.PublicKey, "two-keys", jwkset.AlgES256, "")
	ed := jwkUse(t, keys.ed.Public(), "two-keys", jwkset.AlgEdDSA, "")
	c := claims("alice")
	cases := []attackCase{
		{"RS256, kid listed for enc and for sig", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "dup"), "accepted"},
		{"PS256, kid listed for enc and for RS256", sign(t, jwt.SigningMethodPS256, keys.rsa, c, "dup"), "invalid"},
		{"RS256 by another key, kid listed for enc and for sig", sign(t, jwt.SigningMethodRS256, other, c, "dup"), "invalid"},
		{"RS256, kid listed for RS256 and PS256", sign(t, jwt.SigningMethodRS256, other, c, "two-algs"), "accepted"},
		{"PS256, kid listed for RS256 and PS256", sign(t, jwt.SigningMethodPS256, other, c, "two-algs"), "accepted"},
		{"RS384, kid listed for RS256 and PS256", sign(t, jwt.SigningMethodRS384, other, c, "two-algs"), "invalid"},
		{"ES256, kid of an EC and an Ed25519 key", sign(t, jwt.SigningMethodES256, keys.ec, c, "two-keys"), "accepted"},
		{"EdDSA, kid of an EC and an Ed25519 key", sign(t, jwt.SigningMethodEdDSA, keys.ed, c, "two-keys"), "accepted"},
		{"RS256 by the RSA key, kid of an EC and an Ed25519 key", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "two-keys"), "invalid"},
	}
	for name, set := range map[string][]jwkset.JWKMarshal{
		"enc first": {enc, sig, rs, ps, ec, ed},
		"sig first": {sig, enc, ps, rs, ed, ec},
	} {
		t.Run(name, func(t *testing.T) {
			keySetSites(t, jwkSetJSON(t, set...), "", func(t *testing.T, addr, _ string, _ func() []map[string]any) {
				runTokenCases(t, addr, "close", cases)
			})
		})
	}
}

// octMember is a symmetric key as a JWK, with alg if not empty.
func octMember(kid string, key []byte, alg string) string {
	m := map[string]any{"kty": "oct", "kid": kid, "k": b64url(key)}
	if alg != "" {
		m["alg"] = alg
	}
	return mustJSON(m)
}

// TestKeySetSymmetricDefault: an oct key in a jwks_file makes the HMAC
// algorithms it may verify part of the default algorithms, as "what the
// keys can verify" promises; one served over HTTP is never used.
func TestKeySetSymmetricDefault(t *testing.T) {
	keys := testKeys()
	anyHS := []byte("an-oct-key-of-at-least-32-bytes-for-any-HS")
	only256 := []byte("another-oct-key-at-least-32-bytes-for-HS256")
	body := keySetOf(append(jwkMembers(jwkOf(t, &keys.rsa.PublicKey, "rsa-1", jwkset.AlgRS256)),
		octMember("hmac", anyHS, ""), octMember("hmac-256", only256, "HS256"))...)
	c := claims("alice")
	keySetSites(t, body, "", func(t *testing.T, addr, set string, _ func() []map[string]any) {
		fromFile := strings.HasPrefix(set, "jwks_file")
		want := "accepted"
		if !fromFile {
			want = "invalid"
		}
		runTokenCases(t, addr, "close", []attackCase{
			{"HS256, kid of the oct key", sign(t, jwt.SigningMethodHS256, anyHS, c, "hmac"), want},
			{"HS384, kid of the oct key", sign(t, jwt.SigningMethodHS384, anyHS, c, "hmac"), want},
			{"HS512, no kid", sign(t, jwt.SigningMethodHS512, anyHS, c, ""), want},
			{"HS256, kid of the HS256 key", sign(t, jwt.SigningMethodHS256, only256, c, "hmac-256"), want},
			{"HS512, kid of the HS256 key", sign(t, jwt.SigningMethodHS512, only256, c, "hmac-256"), "invalid"},
			{"HS256 by another secret, kid of the oct key", sign(t, jwt.SigningMethodHS256, []byte("made-up-secret-of-at-least-32-bytes!"), c, "hmac"), "invalid"},
			{"RS256, kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-1"), "accepted"},
		})
	})
}

// signAs signs an Ed25519 token whose header names alg, which golang-jwt
// only writes as EdDSA.
func signAs(t testing.TB, alg string, key ed25519.PrivateKey, kid string, c jwt.MapClaims) string {
	t.Helper()
	h := map[string]any{"alg": alg, "typ": "JWT"}
	if kid != "" {
		h["kid"] = kid
	}
	signing := b64url([]byte(mustJSON(h))) + "." + b64url([]byte(mustJSON(c)))
	sig, err := jwt.SigningMethodEdDSA.Sign(signing, key)
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + b64url(sig)
}

// TestEd25519AlgorithmName: RFC 9864's name Ed25519 is EdDSA with an
// Ed25519 key: accepted in a token's header, in a key set's alg and in the
// algorithms option, where either name allows both.
func TestEd25519AlgorithmName(t *testing.T) {
	keys := testKeys()
	_, evil, _ := ed25519.GenerateKey(nil)
	pemFile := writePublicPEM(t, keys.ed.Public())
	c := claims("alice")
	byPEM := []attackCase{
		{"alg Ed25519", signAs(t, "Ed25519", keys.ed, "", c), "accepted"},
		{"alg EdDSA", signAs(t, "EdDSA", keys.ed, "", c), "accepted"},
		{"alg Ed25519 by another key", signAs(t, "Ed25519", evil, "", c), "invalid"},
		{"alg ed25519", signAs(t, "ed25519", keys.ed, "", c), "invalid"},
	}
	for _, opts := range []string{"", "algorithms Ed25519", "algorithms EdDSA"} {
		t.Run("public_key "+opts, func(t *testing.T) {
			up := newUpstream(t)
			addr := startCaddy(t, "\tws_auth {\n\t\tpublic_key "+pemFile+"\n\t\t"+opts+"\n\t}\n\treverse_proxy %UPSTREAM%", up.addr())
			checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", byPEM))
		})
	}

	pub := b64url(keys.ed.Public().(ed25519.PublicKey))
	body := keySetOf(
		`{"kty":"OKP","crv":"Ed25519","kid":"ed-new","use":"sig","alg":"Ed25519","x":"`+pub+`"}`,
		ed25519WithCert(t, "ed-x5c-new", "Ed25519"),
		`{"kty":"OKP","crv":"Ed25519","kid":"ed-old","alg":"EdDSA","x":"`+pub+`"}`,
		mustJSON(jwkOf(t, &keys.rsa.PublicKey, "rsa-1", jwkset.AlgRS256)),
	)
	var cases []attackCase
	for _, kid := range []string{"ed-new", "ed-x5c-new", "ed-old", ""} {
		for _, alg := range []string{"Ed25519", "EdDSA"} {
			cases = append(cases, attackCase{"alg " + alg + ", kid " + kid, signAs(t, alg, keys.ed, kid, c), "accepted"})
		}
	}
	cases = append(cases,
		attackCase{"alg Ed25519 by another key, kid", signAs(t, "Ed25519", evil, "ed-new", c), "invalid"},
		attackCase{"RS256, kid of a key for Ed25519", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "ed-new"), "invalid"},
		attackCase{"RS256, kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, "rsa-1"), "accepted"},
	)
	keySetSites(t, body, "", func(t *testing.T, addr, _ string, _ func() []map[string]any) {
		runTokenCases(t, addr, "close", cases)
	})

	t.Run("option", func(t *testing.T) {
		stage, err := validateSite("\tws_auth {\n\t\tsecret " + validateSecret + "\n\t\talgorithms Ed25519\n\t}")
		if want := "algorithms: no configured key can verify Ed25519: it needs a public_key"; err == nil || stage != "adapt" || !strings.Contains(err.Error(), want) {
			t.Errorf("algorithms Ed25519 with only a secret: error at %s: %v, want at adapt: %q", stage, err, want)
		}
		js := `{"handler":"ws_auth","public_keys":["` + pemFile + `"],"algorithms":["Ed25519"]}`
		if err := validateJSON(handlerConfig(js)); err != nil {
			t.Errorf("JSON algorithms Ed25519: %v", err)
		}
		js = `{"handler":"ws_auth","public_keys":["` + writePublicPEM(t, &keys.rsa.PublicKey) + `"],"algorithms":["Ed25519"]}`
		if err := validateJSON(handlerConfig(js)); err == nil || !strings.Contains(err.Error(), "no configured key can verify Ed25519") {
			t.Errorf("JSON algorithms Ed25519 with an RSA key: %v", err)
		}
	})
}

// TestAlgNotAccepted: the detail of a refusal for an algorithm names it,
// quoted and cut short, and is still errAlg.
func TestAlgNotAccepted(t *testing.T) {
	for alg, want := range map[string]string{
		"HS256":                   `signing algorithm not accepted: "HS256"`,
		"a\x00\n":                 `signing algorithm not accepted: "a\x00\n"`,
		strings.Repeat("x", 1000): `signing algorithm not accepted: "` + strings.Repeat("x", 32) + `…"`,
	} {
		err := algNotAccepted([]byte(alg))
		if err.Error() != want || !errors.Is(err, errAlg) {
			t.Errorf("algNotAccepted(%q) = %q, want %q wrapping errAlg", alg, err, want)
		}
	}
}

// TestAlgNotAcceptedLogged: a token of an algorithm the handler does not
// accept is refused with a log line that names the algorithm.
func TestAlgNotAcceptedLogged(t *testing.T) {
	up := newUpstream(t)
	addr, logged := startCaddyLogged(t, "\tws_auth {\n\t\tsecret "+testSecret+"\n\t\talgorithms HS256\n\t}\n\treverse_proxy %UPSTREAM%", up.addr())
	tok := sign(t, jwt.SigningMethodHS384, []byte(testSecret), claims("alice"), "")
	runTokenCases(t, addr, "close", []attackCase{{"HS384 where only HS256 is accepted", tok, "invalid"}})
	e := findLog(logged(), map[string]string{"msg": "websocket refused", "reason": "invalid"})
	if e == nil {
		t.Fatal("no refusal logged")
	}
	if d, _ := e["detail"].(string); d != `signing algorithm not accepted: "HS384"` {
		t.Errorf("refusal detail %q, want it to name HS384", d)
	}
}

// TestKeySetErrorsNameTheSet: what an operator reads names the key set it
// is about: a refusal for keys that were never fetched, the warning of a
// failed fetch (which says whether a last good set serves), a load error.
func TestKeySetErrorsNameTheSet(t *testing.T) {
	keys := testKeys()
	tok := sign(t, jwt.SigningMethodRS256, keys.rsa, claims("alice"), "rsa-1")
	t.Run("never fetched", func(t *testing.T) {
		url := fmt.Sprintf("http://127.0.0.1:%d/jwks", freePort(t)) // nothing listens there
		up := newUpstream(t)
		addr, logged := startCaddyLogged(t, jwksSite(url, "100ms", ""), up.addr())
		runTokenCases(t, addr, "close", []attackCase{{"RS256, kid", tok, "unavailable"}})
		entries := logged()
		if e := findLog(entries, map[string]string{"msg": "websocket refused", "reason": "unavailable"}); e == nil {
			t.Errorf("no refusal logged")
		} else if d, _ := e["detail"].(string); !strings.Contains(d, "signing keys unavailable") || !strings.Contains(d, "jwks "+url) {
			t.Errorf("refusal detail %q does not name the key set %s", d, url)
		}
		e := findLog(entries, map[string]string{"msg": "fetching JWK Set failed", "url": url})
		if e == nil {
			t.Fatalf("no warning of the failed fetch")
		}
		if msg := e["msg"].(string); strings.Contains(msg, "last good set") || !strings.Contains(msg, "no keys fetched yet") {
			t.Errorf("warning %q, want it to say that no keys were fetched yet", msg)
		}
	})
	t.Run("fetched once", func(t *testing.T) {
		srv := newJWKSServer(t, standardSet(t)...)
		up := newUpstream(t)
		addr, logged := startCaddyLogged(t, jwksSite(srv.URL, "100ms", ""), up.addr())
		srv.setMode("500")
		srv.waitFetches(t, srv.fetches.Load()+2)
		runTokenCases(t, addr, "close", []attackCase{{"RS256, kid", tok, "accepted"}})
		if findLog(logged(), map[string]string{"msg": "fetching JWK Set failed; serving the last good set", "url": srv.URL}) == nil {
			t.Errorf("no warning that the last good set serves")
		}
	})
	t.Run("jwks_file without a usable key", func(t *testing.T) {
		var bad []string
		for _, m := range unusableKeys(t) {
			bad = append(bad, m)
		}
		file := writeKeySet(t, keySetOf(bad...))
		err := loadMustFail(t, "ws_auth {\n\t\tjwks_file "+file+"\n\t}\n\treverse_proxy %UPSTREAM%")
		for _, w := range []string{"jwks_file " + file + ": no usable key", "secp256k1", "off-curve"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not contain %q", err, w)
			}
		}
	})
	t.Run("jwks not a URL", func(t *testing.T) {
		stage, err := validateSite("\tws_auth {\n\t\tjwks idp.example.com/jwks.json\n\t}")
		if want := "jwks idp.example.com/jwks.json: not a URL"; err == nil || stage != "adapt" || !strings.Contains(err.Error(), want) {
			t.Errorf("error at %s: %v, want at adapt: %q", stage, err, want)
		}
		// The URL is shown without what may be a credential.
		for raw, want := range map[string]string{
			"user:secret@idp.example.com/jwks?key=secret#secret": "jwks idp.example.com/jwks: not a URL",
			"https://user:secret@/jwks?key=secret":               "jwks https:///jwks: not a URL",
			"https://idp.example.com/%zz?key=secret":             "jwks https://idp.example.com/%zz: not a URL",
			"":                                                   "jwks: not a URL",
		} {
			_, err := checkJWKSURL(raw)
			if err == nil || !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "secret") {
				t.Errorf("checkJWKSURL(%q) = %v, want %q and no secret", raw, err, want)
			}
		}
	})
}

// entraClaims are the claims of an Entra ID (v2) access token of a user in
// groups groups and roles app roles: Entra lists up to 200 group object
// IDs in a JWT, then sends an overage claim instead.
func entraClaims(groups, roles int) jwt.MapClaims {
	c := claims("9f1c2a6e-3b1d-4c59-9a77-0d1f4e8b2c31", func(c jwt.MapClaims) {
		c["aud"] = "api://2f0c5b1e-8a4d-4e2b-9c7f-6d3e1a0b5c48"
		c["iss"] = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
		c["aio"] = strings.Repeat("AWQAm/8Y", 17)
		c["azp"] = "2f0c5b1e-8a4d-4e2b-9c7f-6d3e1a0b5c48"
		c["azpacr"] = "0"
		c["name"] = "Alice Example"
		c["oid"] = "9f1c2a6e-3b1d-4c59-9a77-0d1f4e8b2c31"
		c["preferred_username"] = "alice@contoso.example"
		c["rh"] = "1.AXEAv4j5cvGGr0GRqy180BHbR0W5bB4KjU5OnH9tPhoLXEhxAB8."
		c["scp"] = "chat.read chat.write"
		c["tid"] = "72f988bf-86f1-41af-91ab-2d7cd011db47"
		c["uti"] = "3dBbmXq0p0ujnPzCqJQvAA"
		c["ver"] = "2.0"
		c["wids"] = []string{"b79fbf4d-3ef9-4689-8143-76b194e85509"}
	})
	var gs, rs []string
	for i := range groups {
		gs = append(gs, fmt.Sprintf("%08x-3b1d-4c59-9a77-0d1f4e8b2c31", i))
	}
	for i := range roles {
		rs = append(rs, fmt.Sprintf("Chat.Room%03d.ReadWrite", i))
	}
	c["groups"] = gs
	if roles > 0 {
		c["roles"] = rs
	}
	return c
}

// TestMaxTokenSizeDefault: the default max_token_size holds the largest
// tokens providers issue: an Entra ID token at its 200 groups with app
// roles; a token beyond it is refused as invalid.
func TestMaxTokenSizeDefault(t *testing.T) {
	keys := testKeys()
	pemFile := writePublicPEM(t, &keys.rsa.PublicKey)
	rs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodRS256, keys.rsa, c, "entra-key-id-1") }
	e150, e200 := rs(entraClaims(150, 0)), rs(entraClaims(200, 40))
	over := rs(claims("alice", func(c jwt.MapClaims) { c["pad"] = strings.Repeat("x", defaultMaxTokenSize*3/4) }))
	t.Logf("Entra token: %d bytes with 150 groups, %d with 200 groups and 40 roles; padded: %d", len(e150), len(e200), len(over))
	if len(over) <= defaultMaxTokenSize {
		t.Fatalf("the padded token is %d bytes, not over the default %d", len(over), defaultMaxTokenSize)
	}
	up := newUpstream(t)
	addr := startCaddy(t, "\tws_auth {\n\t\tpublic_key "+pemFile+"\n\t}\n\treverse_proxy %UPSTREAM%", up.addr())
	checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", []attackCase{
		{"Entra ID, 150 groups", e150, "accepted"},
		{"Entra ID, 200 groups and 40 roles", e200, "accepted"},
		{"larger than the default", over, "invalid"},
	}))
}
