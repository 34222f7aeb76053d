package wsauth

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/spf13/cobra"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

// The ws-auth command runs in-process, as `caddy ws-auth ...` runs it:
// the cobra command that RegisterCommand's CobraFunc builds, with its
// output captured.

// runWSAuth runs `caddy ws-auth <args>` and returns what it wrote to
// stdout.
func runWSAuth(t testing.TB, args ...string) (string, error) {
	t.Helper()
	cmd := &cobra.Command{Use: "ws-auth", SilenceUsage: true}
	addWSAuthCommands(cmd)
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(io.Discard)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

// writePEMBlocks writes PEM blocks to one file and returns its path.
func writePEMBlocks(t testing.TB, blocks ...*pem.Block) string {
	t.Helper()
	var data []byte
	for _, b := range blocks {
		data = append(data, pem.EncodeToMemory(b)...)
	}
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func pkcs8(t testing.TB, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// cliSite checks a token of the command line tests with the key option
// given, and hands its claims to the upstream.
func cliSite(key string) string {
	return `
	ws_auth {
		` + key + `
		issuer ` + testIssuer + `
		audience ` + testAudience + `
		scopes chat:read
	}
	reverse_proxy %UPSTREAM% {
		header_up X-User {http.auth.user.id}
		header_up X-Scopes {ws_auth.scopes}
		header_up X-Jti {ws_auth.jti}
		header_up X-Org {ws_auth.claims.org.id}
		header_up X-Num {ws_auth.claims.num}
		header_up X-Flag {ws_auth.claims.flag}
		header_up X-Team {ws_auth.claims.team}
	}`
}

// TestTokenCommandAccepted signs a token with `caddy ws-auth token` for
// every kind of key, and a real Caddy configured with the matching secret
// or public key accepts it and hands its claims to the upstream.
func TestTokenCommandAccepted(t *testing.T) {
	keys := testKeys()
	// Bytes whose base64 differs between the standard and URL alphabets
	// (+/ against -_): the command and the config read both.
	raw := bytes.Repeat([]byte{0xfb, 0xff, 0xbf}, 11)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	ecSEC1, err := x509.MarshalECPrivateKey(keys.ec)
	if err != nil {
		t.Fatal(err)
	}
	// the curve's OID, as `openssl ecparam -genkey` writes it before the key
	p256Params, err := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		key  []string // the command's key flags
		site string   // the ws_auth key option
		alg  string   // the token's alg
	}{
		{"HS256 literal secret", []string{"--secret", testSecret}, "secret " + testSecret, "HS256"},
		{"HS256 base64 secret", []string{"--secret", "base64:" + base64.RawURLEncoding.EncodeToString(raw)},
			"secret base64:" + base64.StdEncoding.EncodeToString(raw), "HS256"},
		{"HS512", []string{"--secret", testSecret, "--alg", "HS512"}, "secret " + testSecret, "HS512"},
		{"RS256 PKCS#8", []string{"--key", writePEM(t, "PRIVATE KEY", pkcs8(t, keys.rsa))},
			"public_key " + writePublicPEM(t, &keys.rsa.PublicKey), "RS256"},
		{"PS256 PKCS#1", []string{"--key", writePEM(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(keys.rsa)), "--alg", "PS256"},
			"public_key " + writePublicPEM(t, &keys.rsa.PublicKey), "PS256"},
		{"ES256 SEC1 after EC PARAMETERS", []string{"--key", writePEMBlocks(t,
			&pem.Block{Type: "EC PARAMETERS", Bytes: p256Params},
			&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecSEC1})},
			"public_key " + writePublicPEM(t, &keys.ec.PublicKey), "ES256"},
		{"ES384 PKCS#8", []string{"--key", writePEM(t, "PRIVATE KEY", pkcs8(t, p384))},
			"public_key " + writePublicPEM(t, &p384.PublicKey), "ES384"},
		{"ES512 PKCS#8", []string{"--key", writePEM(t, "PRIVATE KEY", pkcs8(t, p521))},
			"public_key " + writePublicPEM(t, &p521.PublicKey), "ES512"},
		{"EdDSA PKCS#8", []string{"--key", writePEM(t, "PRIVATE KEY", pkcs8(t, keys.ed))},
			"public_key " + writePublicPEM(t, keys.ed.Public()), "EdDSA"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"token"}, tc.key...)
			args = append(args, "--sub", "alice", "--scope", " chat:read  chat:write ",
				"--aud", testAudience, "--iss", testIssuer, "--ttl", "90m", "--kid", "k1",
				"--claim", `org={"id":"acme"}`, "--claim", "num=42", "--claim", "flag=true",
				"--claim", "team=red team")
			before := time.Now().Unix()
			out, err := runWSAuth(t, args...)
			if err != nil {
				t.Fatalf("ws-auth %s: %v", strings.Join(args, " "), err)
			}
			if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
				t.Fatalf("output %q: want one line", out)
			}
			tok := strings.TrimSuffix(out, "\n")

			// what the token says, before a server checks it
			parsed, _, err := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{})
			if err != nil {
				t.Fatal(err)
			}
			if parsed.Header["alg"] != tc.alg || parsed.Header["kid"] != "k1" {
				t.Errorf("header %v: want alg %s and kid k1", parsed.Header, tc.alg)
			}
			c := parsed.Claims.(jwt.MapClaims)
			iat, _ := c["iat"].(float64)
			exp, _ := c["exp"].(float64)
			if int64(iat) < before || int64(iat) > time.Now().Unix() || exp-iat != 90*60 {
				t.Errorf("iat %v, exp %v: want iat now and exp iat+90m", c["iat"], c["exp"])
			}
			if _, ok := c["nbf"]; ok {
				t.Errorf("nbf %v: want none", c["nbf"])
			}

			up := newUpstream(t)
			addr := startCaddy(t, cliSite(tc.site), up.addr())
			c2, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + tok})
			if got := outcome(t, c2, resp, err); got != "accepted" {
				t.Fatalf("token of ws-auth %s: %s, want accepted", strings.Join(args, " "), got)
			}
			reqs := up.requests()
			if len(reqs) != 1 {
				t.Fatalf("upstream saw %d requests, want 1", len(reqs))
			}
			h := reqs[0].Header
			for name, want := range map[string]string{
				"X-User":   "alice",
				"X-Scopes": "chat:read chat:write",
				"X-Org":    "acme",
				"X-Num":    "42",
				"X-Flag":   "true",
				"X-Team":   "red team",
			} {
				if got := h.Get(name); got != want {
					t.Errorf("%s: %q, want %q", name, got, want)
				}
			}
			if jti := h.Get("X-Jti"); !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(jti) {
				t.Errorf("X-Jti %q: want 16 random bytes in hex", jti)
			}
		})
	}
}

// TestTokenCommandClaims checks the claims the flags make, without a
// server: the JSON reading of --claim, a given jti, several audiences, a
// ttl in Caddy's syntax.
func TestTokenCommandClaims(t *testing.T) {
	out, err := runWSAuth(t, "token", "--secret", testSecret, "--sub", "bob",
		"--aud", "a", "--aud", "b", "--ttl", "1d",
		"--claim", "jti=my-id", "--claim", "n=12345678901234567890", "--claim", "s=12abc",
		"--claim", `q="quoted"`, "--claim", "e=", "--claim", "list=[1,2]", "--claim", "two=1 2",
		"--claim", "eq=a=b", "--claim", "nbf=100")
	if err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(out)
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]json.RawMessage
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"sub":  `"bob"`,
		"aud":  `["a","b"]`,
		"jti":  `"my-id"`,
		"n":    `12345678901234567890`, // as written, not through a float64
		"s":    `"12abc"`,
		"q":    `"quoted"`,
		"e":    `""`,
		"list": `[1,2]`,
		"two":  `"1 2"`,
		"eq":   `"a=b"`,
		"nbf":  `100`,
	} {
		if got := string(c[name]); got != want {
			t.Errorf("claim %s: %s, want %s", name, got, want)
		}
	}
	if _, ok := c["scope"]; ok {
		t.Errorf("scope %s: want none without --scope", c["scope"])
	}
	var iat, exp int64
	_ = json.Unmarshal(c["iat"], &iat)
	_ = json.Unmarshal(c["exp"], &exp)
	if exp-iat != 24*3600 {
		t.Errorf("exp-iat = %d, want 1d", exp-iat)
	}
	// the default lifetime is an hour
	out, err = runWSAuth(t, "token", "--secret", testSecret, "--sub", "bob")
	if err != nil {
		t.Fatal(err)
	}
	parsed, _, _ := jwt.NewParser().ParseUnverified(strings.TrimSpace(out), jwt.MapClaims{})
	cl := parsed.Claims.(jwt.MapClaims)
	if cl["exp"].(float64)-cl["iat"].(float64) != 3600 {
		t.Errorf("default ttl: exp %v, iat %v, want an hour apart", cl["exp"], cl["iat"])
	}
}

// TestTokenCommandErrors: bad flags fail with a message that says which,
// and write no token.
func TestTokenCommandErrors(t *testing.T) {
	keys := testKeys()
	rsaKey := writePEM(t, "PRIVATE KEY", pkcs8(t, keys.rsa))
	ecKey := writePEM(t, "PRIVATE KEY", pkcs8(t, keys.ec))
	edKey := writePEM(t, "PRIVATE KEY", pkcs8(t, keys.ed))
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	x25519, _ := ecdh.X25519().GenerateKey(rand.Reader)
	encrypted := writePEM(t, "ENCRYPTED PRIVATE KEY", []byte("not really"))
	twoKeys := writePEMBlocks(t, &pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8(t, keys.ed)},
		&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8(t, keys.ec)})
	const secretText = "this-secret-must-never-appear-in-an-error!"

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"both keys", []string{"--secret", testSecret, "--key", rsaKey, "--sub", "a"}, "exactly one of --secret and --key"},
		{"no key", []string{"--sub", "a"}, "exactly one of --secret and --key"},
		{"no sub", []string{"--secret", testSecret}, "--sub is required"},
		{"ttl 0", []string{"--secret", testSecret, "--sub", "a", "--ttl", "0"}, "--ttl must be at least 1s"},
		{"ttl negative", []string{"--secret", testSecret, "--sub", "a", "--ttl", "-1h"}, "--ttl must be at least 1s"},
		{"ttl under a second", []string{"--secret", testSecret, "--sub", "a", "--ttl", "500ms"}, "--ttl must be at least 1s"},
		{"ttl not a duration", []string{"--secret", testSecret, "--sub", "a", "--ttl", "soon"}, "--ttl:"},
		{"claim without =", []string{"--secret", testSecret, "--sub", "a", "--claim", "org"}, `--claim "org": want <name>=<value>`},
		{"claim without name", []string{"--secret", testSecret, "--sub", "a", "--claim", "=x"}, `--claim "=x": want <name>=<value>`},
		{"claim sub", []string{"--secret", testSecret, "--sub", "a", "--claim", "sub=bob"}, "--claim sub: set by --sub"},
		{"claim exp", []string{"--secret", testSecret, "--sub", "a", "--claim", "exp=1"}, "--claim exp: set by --ttl"},
		{"claim twice", []string{"--secret", testSecret, "--sub", "a", "--claim", "x=1", "--claim", "x=2"}, "--claim x: given twice"},
		{"empty aud", []string{"--secret", testSecret, "--sub", "a", "--aud", ""}, "--aud: empty audience"},
		{"secret with RS256", []string{"--secret", testSecret, "--sub", "a", "--alg", "RS256"}, "--alg RS256 does not fit an HMAC secret (HS256, HS384, HS512)"},
		{"secret with none", []string{"--secret", testSecret, "--sub", "a", "--alg", "none"}, "--alg none does not fit an HMAC secret"},
		{"RSA key with ES256", []string{"--key", rsaKey, "--sub", "a", "--alg", "ES256"}, "--alg ES256 does not fit an RSA key"},
		{"RSA key with HS256", []string{"--key", rsaKey, "--sub", "a", "--alg", "HS256"}, "--alg HS256 does not fit an RSA key"},
		{"P-256 key with ES384", []string{"--key", ecKey, "--sub", "a", "--alg", "ES384"}, "--alg ES384 does not fit a P-256 key (ES256)"},
		{"Ed25519 key with ES256", []string{"--key", edKey, "--sub", "a", "--alg", "ES256"}, "--alg ES256 does not fit an Ed25519 key (EdDSA)"},
		{"X25519 key", []string{"--key", writePEM(t, "PRIVATE KEY", pkcs8(t, x25519)), "--sub", "a"}, "unsupported key type *ecdh.PrivateKey"},
		{"P-224 key", []string{"--key", writePEM(t, "PRIVATE KEY", pkcs8(t, p224)), "--sub", "a"}, "unsupported ECDSA curve P-224"},
		{"short RSA key", []string{"--key", writePEM(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(small)), "--sub", "a"}, "RSA key of 1024 bits is too short"},
		{"public key", []string{"--key", writePublicPEM(t, &keys.rsa.PublicKey), "--sub", "a"}, "only a public key or certificate"},
		{"not PEM", []string{"--key", writePEMBlocks(t), "--sub", "a"}, "no private key found"},
		{"encrypted key", []string{"--key", encrypted, "--sub", "a"}, "is encrypted"},
		{"two keys", []string{"--key", twoKeys, "--sub", "a"}, "more than one private key"},
		{"corrupt key", []string{"--key", writePEM(t, "PRIVATE KEY", []byte("junk")), "--sub", "a"}, "parsing PRIVATE KEY"},
		{"missing key file", []string{"--key", filepath.Join(t.TempDir(), "none.pem"), "--sub", "a"}, "no such file"},
		{"placeholder secret", []string{"--secret", "{env.WS_SECRET}", "--sub", "a"}, "--secret {env.WS_SECRET}: a Caddy placeholder"},
		{"bad base64 secret", []string{"--secret", "base64:" + secretText, "--sub", "a"}, "--secret: invalid base64"},
		{"empty base64 secret", []string{"--secret", "base64:", "--sub", "a"}, "--secret: empty"},
		{"positional argument", []string{"--secret", testSecret, "--sub", "a", "extra"}, "unknown command"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runWSAuth(t, append([]string{"token"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ws-auth token %s: error %v, want one with %q", strings.Join(tc.args, " "), err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), secretText) {
				t.Errorf("the error %q holds the secret", err)
			}
			if out != "" {
				t.Errorf("stdout %q: want nothing", out)
			}
		})
	}
}

// TestWSAuthCommandRegistered: `caddy ws-auth` is a Caddy command with the
// three subcommands, and an unknown one is an error.
func TestWSAuthCommandRegistered(t *testing.T) {
	c, ok := caddycmd.Commands()["ws-auth"]
	if !ok || c.CobraFunc == nil {
		t.Fatal("ws-auth is not a registered command")
	}
	cmd := &cobra.Command{Use: "ws-auth"}
	c.CobraFunc(cmd)
	var names []string
	for _, sub := range cmd.Commands() {
		names = append(names, sub.Name())
	}
	if got := strings.Join(names, " "); got != "revoke token unrevoke" {
		t.Errorf("subcommands %q, want revoke token unrevoke", got)
	}
	if _, err := runWSAuth(t, "tokn"); err == nil || !strings.Contains(err.Error(), `unknown subcommand "tokn"`) {
		t.Errorf("ws-auth tokn: %v, want an unknown subcommand error", err)
	}
}

// adminStandIn is an httptest server in the place of Caddy's admin
// endpoint: it records each request and answers what the test says.
type adminStandIn struct {
	*httptest.Server
	got    []adminRequest
	status int
	answer string
	ctype  string
}

type adminRequest struct {
	method, path, host, origin, ctype string
	body                              map[string]any
}

func newAdminStandIn(t *testing.T) *adminStandIn {
	a := &adminStandIn{status: http.StatusOK, answer: "{}", ctype: "application/json"}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := adminRequest{method: r.Method, path: r.URL.Path, host: r.Host,
			origin: r.Header.Get("Origin"), ctype: r.Header.Get("Content-Type")}
		if err := json.NewDecoder(r.Body).Decode(&req.body); err != nil {
			t.Errorf("request body: %v", err)
		}
		a.got = append(a.got, req)
		w.Header().Set("Content-Type", a.ctype)
		w.WriteHeader(a.status)
		io.WriteString(w, a.answer)
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *adminStandIn) addr() string { return strings.TrimPrefix(a.URL, "http://") }

// TestRevokeCommand: revoke and unrevoke send the admin API the request
// of its contract (method, path, JSON body) from the same origin as
// `caddy reload`, print its answer, and turn its refusals into errors
// with its message. The admin module itself is not on this branch: the
// server here stands in for it.
func TestRevokeCommand(t *testing.T) {
	a := newAdminStandIn(t)
	entry := `{"kind":"sub","value":"alice","expires":"2030-01-01T00:00:00Z","reason":"account closed"}`

	t.Run("revoke", func(t *testing.T) {
		a.got, a.status, a.answer = nil, http.StatusCreated, entry+"\n"
		out, err := runWSAuth(t, "revoke", "--kind", "sub", "--value", "alice", "--ttl", "1h",
			"--reason", "account closed", "--address", a.addr())
		if err != nil {
			t.Fatal(err)
		}
		if out != entry+"\n" {
			t.Errorf("stdout %q, want the answer %q", out, entry)
		}
		want := adminRequest{method: "POST", path: "/ws_auth/blocklist", host: a.addr(),
			origin: "http://" + a.addr(), ctype: "application/json",
			body: map[string]any{"kind": "sub", "value": "alice", "ttl": "1h0m0s", "reason": "account closed"}}
		if len(a.got) != 1 || fmt.Sprint(a.got[0]) != fmt.Sprint(want) {
			t.Errorf("requests %+v, want %+v", a.got, want)
		}
	})

	t.Run("revoke without ttl or reason, ttl in days", func(t *testing.T) {
		a.got, a.status, a.answer = nil, http.StatusOK, `{"kind":"ip"}`
		if _, err := runWSAuth(t, "revoke", "--kind", "ip", "--value", "203.0.113.0/24", "--address", a.addr()); err != nil {
			t.Fatal(err)
		}
		if _, err := runWSAuth(t, "revoke", "--kind", "jti", "--value", "x", "--ttl", "2d", "--address", a.addr()); err != nil {
			t.Fatal(err)
		}
		if len(a.got) != 2 {
			t.Fatalf("%d requests, want 2", len(a.got))
		}
		if got := mustJSON(a.got[0].body); got != `{"kind":"ip","value":"203.0.113.0/24"}` {
			t.Errorf("body %s: want no ttl and no reason", got)
		}
		if got := a.got[1].body["ttl"]; got != "48h0m0s" {
			t.Errorf("ttl %v, want 48h0m0s", got)
		}
	})

	t.Run("unrevoke", func(t *testing.T) {
		a.got, a.status, a.answer = nil, http.StatusOK, `{"removed":true}`
		out, err := runWSAuth(t, "unrevoke", "--kind", "sub", "--value", "alice", "--address", a.addr())
		if err != nil {
			t.Fatal(err)
		}
		if out != "{\"removed\":true}\n" {
			t.Errorf("stdout %q", out)
		}
		if len(a.got) != 1 || a.got[0].method != "DELETE" || a.got[0].path != "/ws_auth/blocklist" ||
			mustJSON(a.got[0].body) != `{"kind":"sub","value":"alice"}` {
			t.Errorf("requests %+v, want DELETE /ws_auth/blocklist {kind, value}", a.got)
		}
	})

	refusals := []struct {
		name          string
		args          []string
		status        int
		answer, ctype string
		want          string
	}{
		{"not on the list", []string{"unrevoke", "--kind", "sub", "--value", "bob"},
			404, `{"error":"sub bob is not on the blocklist"}`, "application/json",
			"HTTP 404: sub bob is not on the blocklist"},
		{"bad request", []string{"revoke", "--kind", "ip", "--value", "300.1.2.3"},
			400, `{"error":"ip: invalid address 300.1.2.3"}`, "application/json",
			"HTTP 400: ip: invalid address 300.1.2.3"},
		{"server error", []string{"revoke", "--kind", "sub", "--value", "bob"},
			500, "redis down\n", "text/plain",
			"HTTP 500: redis down"},
		{"no such endpoint", []string{"revoke", "--kind", "sub", "--value", "bob"},
			404, "404 page not found\n", "text/plain",
			"HTTP 404: no /ws_auth/blocklist endpoint there (is that Caddy built with the ws_auth plugin?)"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			a.got, a.status, a.answer, a.ctype = nil, tc.status, tc.answer, tc.ctype
			out, err := runWSAuth(t, append(tc.args, "--address", a.addr())...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one with %q", err, tc.want)
			}
			if out != "" {
				t.Errorf("stdout %q: want nothing", out)
			}
			if len(a.got) != 1 {
				t.Errorf("%d requests, want 1", len(a.got))
			}
		})
	}
	a.ctype = "application/json"

	// checked before any request
	bad := []struct {
		args []string
		want string
	}{
		{[]string{"revoke", "--value", "alice"}, "--kind is required"},
		{[]string{"revoke", "--kind", "user", "--value", "alice"}, `--kind "user": want sub, jti or ip`},
		{[]string{"revoke", "--kind", "sub"}, "--value is required"},
		{[]string{"revoke", "--kind", "sub", "--value", "a", "--ttl", "0"}, "--ttl must be positive"},
		{[]string{"revoke", "--kind", "sub", "--value", "a", "--ttl", "-1h"}, "--ttl must be positive"},
		{[]string{"revoke", "--kind", "sub", "--value", "a", "--ttl", "later"}, "--ttl:"},
		{[]string{"unrevoke", "--kind", "sub"}, "--value is required"},
		{[]string{"unrevoke", "--kind", "sub", "--value", "a", "--ttl", "1h"}, "unknown flag: --ttl"},
	}
	for _, tc := range bad {
		a.got = nil
		_, err := runWSAuth(t, append(tc.args, "--address", a.addr())...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ws-auth %s: error %v, want one with %q", strings.Join(tc.args, " "), err, tc.want)
		}
		if len(a.got) != 0 {
			t.Errorf("ws-auth %s: sent a request", strings.Join(tc.args, " "))
		}
	}

	// nothing listening
	a.Close()
	_, err := runWSAuth(t, "revoke", "--kind", "sub", "--value", "alice", "--address", a.addr())
	if err == nil || !strings.Contains(err.Error(), "admin API at "+a.addr()) {
		t.Errorf("revoke with no admin API: %v, want an error naming its address", err)
	}
}

// TestRevokeCommandAddressFromConfig: without --address, the admin
// address comes from --config, as for `caddy stop`.
func TestRevokeCommandAddressFromConfig(t *testing.T) {
	a := newAdminStandIn(t)
	cfg := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(cfg, []byte("{\n\tadmin "+a.addr()+"\n}\n\nhttp://localhost:9080 {\n\trespond ok\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := runWSAuth(t, "unrevoke", "--kind", "jti", "--value", "x", "--config", cfg, "--adapter", "caddyfile"); err != nil {
		t.Fatal(err)
	}
	if len(a.got) != 1 || a.got[0].origin != "http://"+a.addr() {
		t.Errorf("requests %+v, want one to the config's admin address", a.got)
	}
}

// TestREADMECommandLine: the README's token example, run as written
// against example.Caddyfile, opens the demo's WebSocket; and every flag
// the section names exists.
func TestREADMECommandLine(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n### Command line\n")
	if !ok {
		t.Fatal("README.md has no Command line section")
	}
	section, _, _ = strings.Cut(section, "\n## ")

	cmd := &cobra.Command{Use: "ws-auth"}
	addWSAuthCommands(cmd)
	for _, m := range regexp.MustCompile(`--([a-z][a-z-]*)`).FindAllStringSubmatch(section, -1) {
		found := false
		for _, sub := range cmd.Commands() {
			found = found || sub.Flags().Lookup(m[1]) != nil
		}
		if !found {
			t.Errorf("the README names --%s, which no ws-auth subcommand has", m[1])
		}
	}

	const prefix = "TOKEN=$(go run ./cmd/caddy ws-auth "
	var line string
	for l := range strings.Lines(section) {
		if strings.HasPrefix(l, prefix) {
			line = strings.TrimSpace(strings.TrimPrefix(l, prefix))
		}
	}
	line, ok = strings.CutSuffix(line, ")")
	if !ok {
		t.Fatalf("no line %s...) in the section", prefix)
	}
	args, err := shellWords(line)
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	out, err := runWSAuth(t, args...)
	if err != nil {
		t.Fatalf("ws-auth %s: %v", line, err)
	}

	// The demo with its own default secret.
	t.Setenv("WS_SECRET", "")
	os.Unsetenv("WS_SECRET")
	d := startExampleDemo(t)
	c, _, err := dial(fmt.Sprintf("127.0.0.1:%d", d.port), "/ws", dialOpts{
		query:  "token=" + strings.TrimSpace(out),
		origin: "http://localhost:" + strconv.Itoa(d.port),
	})
	if err != nil {
		t.Fatalf("dial with the README's token: %v", err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var welcome struct{ Type, User, Scopes string }
	if err := c.ReadJSON(&welcome); err != nil {
		t.Fatalf("reading the welcome: %v", err)
	}
	if welcome.Type != "welcome" || welcome.User != "alice" || welcome.Scopes != "chat:read" {
		t.Errorf("welcome %+v, want alice with chat:read", welcome)
	}
}

// shellWords splits a command line as sh does for words in plain, single
// or double quotes; anything that sh would expand is refused, so that a
// README example runs as written.
func shellWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	in := false // inside a word
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; {
		case ch == ' ' || ch == '\t':
			if in {
				words, in = append(words, w.String()), false
				w.Reset()
			}
		case ch == '\'' || ch == '"':
			end := strings.IndexByte(s[i+1:], ch)
			if end < 0 {
				return nil, fmt.Errorf("unclosed %c", ch)
			}
			q := s[i+1 : i+1+end]
			if ch == '"' && strings.ContainsAny(q, "$`\\") {
				return nil, fmt.Errorf("expansion in %q", q)
			}
			w.WriteString(q)
			in = true
			i += end + 1
		case strings.IndexByte("$`\\|&;<>()*?[#~", ch) >= 0:
			return nil, fmt.Errorf("%c: not a plain word", ch)
		default:
			w.WriteByte(ch)
			in = true
		}
	}
	if in {
		words = append(words, w.String())
	}
	return words, nil
}

// TestRevokeCommandEndToEnd: `caddy ws-auth revoke` against a real Caddy's
// admin API closes the user's live connection with 1008 "revoked" and
// refuses the next handshake; `unrevoke` lets the user in again.
func TestRevokeCommandEndToEnd(t *testing.T) {
	up := newLiveUpstream(t)
	a := startAdminCaddy(t, site(""), up.addr())
	tok := hs256(t, claims("erin"))
	c := dialLive(t, liveURL(a.addr, "/ws", tok))
	c.echo("before")
	if out, err := runWSAuth(t, "revoke", "--kind", "sub", "--value", "erin", "--ttl", "1h", "--reason", "test", "--address", a.admin); err != nil {
		t.Fatalf("revoke: %v (%s)", err, out)
	}
	if got := c.closeWithin(5 * time.Second); got != "close 1008 revoked" {
		t.Errorf("erin's connection after revoke: %s, want close 1008 revoked", got)
	}
	if got := dialOutcome(t, a.addr, "/ws", tok); got != "close 1008 blocked" {
		t.Errorf("erin's handshake after revoke: %s, want close 1008 blocked", got)
	}
	if out, err := runWSAuth(t, "unrevoke", "--kind", "sub", "--value", "erin", "--address", a.admin); err != nil {
		t.Fatalf("unrevoke: %v (%s)", err, out)
	}
	if got := dialOutcome(t, a.addr, "/ws", tok); got != "accepted" {
		t.Errorf("erin's handshake after unrevoke: %s, want accepted", got)
	}
	waitLiveCount(t, 0)
}
