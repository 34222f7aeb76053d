package wsauth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// example.Caddyfile uses the demo directives; demo does not import
	// this package, so the test may import it.
	_ "github.com/wsauth/caddy-wsauth/demo"
)

// adaptDir holds the Caddyfile adapt tests, in Caddy's own format
// (caddytest/integration/caddyfile_adapt): a Caddyfile, a line of ten
// dashes, then either the expected JSON or, for a Caddyfile that must not
// adapt, a substring of the error.
const adaptDir = "testdata/caddyfile_adapt"

// validateSecret is an HMAC secret long enough not to be warned about.
const validateSecret = "caddyfile-test-secret-long-enough-for-hs256"

// parseErrLocation is what d.Errf appends to a parse error.
var parseErrLocation = regexp.MustCompile(`, at Caddyfile:\d+`)

func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(adaptDir, "*.caddyfiletest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no .caddyfiletest files in %s", adaptDir)
	}
	// The examples read their secret from {env.WS_SECRET}, which the
	// parser requires to be set where the Caddyfile is adapted; the error
	// tests for unset variables name WSAUTH_TEST_UNSET_* instead.
	t.Setenv("WS_SECRET", validateSecret)
	for _, file := range files {
		name := filepath.Base(file)
		t.Run(strings.TrimSuffix(name, ".caddyfiletest"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			text := strings.ReplaceAll(string(data), "\r\n", "\n")
			cfgText, expected, ok := strings.Cut(text, "\n----------\n")
			if !ok {
				t.Fatalf("%s: no line of ten dashes between the Caddyfile and the expected result", name)
			}
			// As Caddy's runner does: the formatter expects a final newline.
			cfgText = strings.TrimSpace(cfgText) + "\n"
			expected = strings.TrimSpace(expected)
			if expected == "" {
				t.Fatalf("%s: empty expected result", name)
			}

			if expected[0] == '{' {
				if !caddytest.CompareAdapt(t, name, cfgText, "caddyfile", expected) {
					got, _, err := adaptCaddyfile(cfgText)
					t.Errorf("%s: adapted config differs from the expected JSON (diff on stdout); error: %v; got:\n%s", name, err, got)
				}
				// CompareAdapt only logs warnings (an unformatted Caddyfile,
				// an unknown module); the examples here should have none.
				if _, warnings, _ := adaptCaddyfile(cfgText); len(warnings) > 0 {
					t.Errorf("%s: adapting gave warnings: %v", name, warnings)
				}
				return
			}

			_, _, err = adaptCaddyfile(cfgText)
			if err == nil {
				t.Fatalf("%s: adapted, want an error containing %q", name, expected)
			}
			if !strings.Contains(err.Error(), expected) {
				t.Errorf("%s: error\n\t%v\nwant it to contain\n\t%s", name, err, expected)
			}
			if !parseErrLocation.MatchString(err.Error()) {
				t.Errorf("%s: error %q does not name the file and line (\", at Caddyfile:<line>\")", name, err)
			}
		})
	}
}

// adaptCaddyfile adapts cfg with the caddyfile adapter, as `caddy adapt`
// does, and returns the JSON indented with tabs.
func adaptCaddyfile(cfg string) ([]byte, []caddyconfig.Warning, error) {
	js, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
	if err != nil {
		return nil, warnings, err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, js, "", "\t"); err != nil {
		return nil, warnings, err
	}
	return buf.Bytes(), warnings, nil
}

// validateJSON loads a config as `caddy validate` does: every module is
// provisioned and validated, then cleaned up, and nothing is started.
func validateJSON(js []byte) error {
	var cfg caddy.Config
	if err := json.Unmarshal(js, &cfg); err != nil {
		return err
	}
	return caddy.Validate(&cfg)
}

// validateSite adapts a Caddyfile serving site (the inside of a site
// block), then validates the result. stage tells which step failed.
func validateSite(site string) (stage string, err error) {
	cfg := "http://localhost:9080 {\n" + site + "\n}\n"
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
	if err != nil {
		return "adapt", err
	}
	if err := validateJSON(js); err != nil {
		return "provision", err
	}
	return "", nil
}

// handlerConfig is a minimal JSON config whose only route runs handler,
// for what the Caddyfile parser refuses before provision could.
func handlerConfig(handler string) []byte {
	return []byte(`{"apps":{"http":{"servers":{"srv0":{"listen":[":9080"],"routes":[{"handle":[` + handler + `]}]}}}}}`)
}

// writePrivatePEM writes an ECDSA private key as PKCS#8 PEM, as someone
// who confuses the two halves of a key pair would give it to public_key.
func writePrivatePEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, "PRIVATE KEY", der)
}

// TestCaddyfileValidate checks that a config error found when the
// adapted config is loaded (`caddy validate`, `caddy run`) names the
// option, and that the errors the parser can find already, it finds,
// with the file and line.
func TestCaddyfileValidate(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	private := writePrivatePEM(t)

	// A config that must load, so that the failures below are the
	// option's and not the harness's.
	t.Run("valid", func(t *testing.T) {
		stage, err := validateSite("\tws_auth {\n\t\tsecret " + validateSecret + "\n\t\tallowed_origins https://app.example.com\n\t\ttoken_source cookie session\n\t}\n\trespond ok")
		if err != nil {
			t.Fatalf("%s: %v", stage, err)
		}
	})

	// The live-connection options at their bounds load too.
	t.Run("valid live connection options", func(t *testing.T) {
		stage, err := validateSite("\tws_auth {\n\t\tsecret " + validateSecret + "\n\t\texpire_connections off\n\t\trevalidate 24h\n\t\tmax_message_size 1GiB\n\t\trefresh_message renew\n\t\trate_limit messages 1000000/1s per connection notify\n\t}\n\trespond ok")
		if err != nil {
			t.Fatalf("%s: %v", stage, err)
		}
	})

	tests := []struct {
		name  string
		site  string
		stage string   // where the error must come from: adapt or provision
		want  []string // substrings of the error
	}{
		{
			name:  "no key",
			site:  "\tws_auth {\n\t\tissuer me\n\t}",
			stage: "adapt",
			want:  []string{"ws_auth: no key configured: need secret, public_key, jwks, oidc or jwks_file (or introspect or session_check for opaque credentials)", ", at Caddyfile:2"},
		},
		{
			name:  "public_key missing file",
			site:  "\tws_auth {\n\t\tpublic_key " + missing + "\n\t}",
			stage: "provision",
			want:  []string{"public_key " + missing, "no such file"},
		},
		{
			name:  "public_key holding a private key",
			site:  "\tws_auth {\n\t\tpublic_key " + private + "\n\t}",
			stage: "provision",
			want:  []string{"public_key " + private, "private key"},
		},
		{
			name:  "secret placeholder that is not set",
			site:  "\tws_auth {\n\t\tsecret {env.WSAUTH_TEST_UNSET_SECRET}\n\t}",
			stage: "adapt",
			want:  []string{"secret: environment variable WSAUTH_TEST_UNSET_SECRET is not set ({env.WSAUTH_TEST_UNSET_SECRET})", ", at Caddyfile:3"},
		},
		{
			name:  "secret base64 placeholder that is not set",
			site:  "\tws_auth {\n\t\tsecret base64:{env.WSAUTH_TEST_UNSET_SECRET}\n\t}",
			stage: "adapt",
			want:  []string{"secret: environment variable WSAUTH_TEST_UNSET_SECRET is not set ({env.WSAUTH_TEST_UNSET_SECRET})", ", at Caddyfile:3"},
		},
		{
			name:  "secret {$NAME} that is not set",
			site:  "\tws_auth {\n\t\tsecret {$WSAUTH_TEST_UNSET_SECRET}\n\t}",
			stage: "adapt",
			want:  []string{"secret: missing value (a {$NAME} whose environment variable is not set is replaced with nothing)", ", at Caddyfile:3"},
		},
		{
			name:  "jwks URL with a placeholder is judged at load",
			site:  "\tws_auth {\n\t\tjwks {env.WSAUTH_TEST_UNSET_URL}\n\t}",
			stage: "provision",
			want:  []string{"jwks: not a URL"},
		},
		{
			name:  "algorithms that no key type verifies",
			site:  "\tws_auth {\n\t\tsecret " + validateSecret + "\n\t\talgorithms RS256\n\t}",
			stage: "adapt",
			want:  []string{"algorithms: no configured key can verify RS256: it needs a public_key, jwks or jwks_file", ", at Caddyfile:4"},
		},
		{
			// Which asymmetric algorithms a public_key verifies depends
			// on its file, read at load.
			name:  "algorithms that the public key file does not verify",
			site:  "\tws_auth {\n\t\tpublic_key " + writePublicPEM(t, &testKeys().rsa.PublicKey) + "\n\t\talgorithms ES256\n\t}",
			stage: "provision",
			want:  []string{"algorithms: no configured key can verify ES256"},
		},
		{
			name:  "algorithms none",
			site:  "\tws_auth {\n\t\tsecret " + validateSecret + "\n\t\talgorithms none\n\t}",
			stage: "adapt",
			want:  []string{"algorithms: 'none' is never accepted", ", at Caddyfile:4"},
		},
		{
			name:  "token_source cookie without allowed_origins",
			site:  "\tws_auth {\n\t\tsecret " + validateSecret + "\n\t\ttoken_source cookie session\n\t}",
			stage: "adapt",
			want:  []string{"token_source cookie: requires allowed_origins", ", at Caddyfile:4"},
		},
		{
			name:  "allowed_origins entry that is not an origin",
			site:  "\tws_auth {\n\t\tsecret " + validateSecret + "\n\t\tallowed_origins app.example.com\n\t}",
			stage: "adapt",
			want:  []string{"allowed_origins", `"app.example.com" is not an origin`, ", at Caddyfile:4"},
		},
	}
	// An environment variable that is set but empty is as good as unset.
	t.Run("secret placeholder that is empty", func(t *testing.T) {
		t.Setenv("WSAUTH_TEST_EMPTY_SECRET", "")
		stage, err := validateSite("\tws_auth {\n\t\tsecret {env.WSAUTH_TEST_EMPTY_SECRET}\n\t}")
		want := "secret: environment variable WSAUTH_TEST_EMPTY_SECRET is empty ({env.WSAUTH_TEST_EMPTY_SECRET}), at Caddyfile:3"
		if err == nil || stage != "adapt" || !strings.Contains(err.Error(), want) {
			t.Errorf("error at %s: %v, want at adapt: %q", stage, err, want)
		}
	})

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stage, err := validateSite(tt.site)
			if err == nil {
				t.Fatalf("config loaded, want an error containing %q", tt.want)
			}
			if stage != tt.stage {
				t.Errorf("error at %s, want at %s: %v", stage, tt.stage, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n\t%v\nwant it to contain %q", err, w)
				}
			}
		})
	}

	// What the parser refuses must still be refused when written in JSON,
	// where only Provision and Validate see it.
	jsonTests := []struct {
		name    string
		handler string
		want    []string
	}{
		{
			name:    "algorithms none",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"algorithms":["none"]}`,
			want:    []string{"algorithms", "none"},
		},
		{
			name:    "token_source cookie without allowed_origins",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"token_sources":[{"source":"cookie","name":"session"}]}`,
			want:    []string{"token_source cookie", "allowed_origins"},
		},
		{
			name:    "allowed_origins entry that is not an origin",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"allowed_origins":["app.example.com"]}`,
			want:    []string{"allowed_origins", "app.example.com"},
		},
		{
			name:    "token_source cookie without a name",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"allowed_origins":["https://app.example.com"],"token_sources":[{"source":"cookie"}]}`,
			want:    []string{"token_source cookie", "name"},
		},
		{
			name:    "close_code for an unknown reason",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"close_codes":{"sleepy":4000}}`,
			want:    []string{"close_code", "sleepy"},
		},
		{
			name:    "close_code 1005",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"close_codes":{"expired":1005}}`,
			want:    []string{"close_code", "1005"},
		},
		{
			name:    "jwks over plain http to another host",
			handler: `{"handler":"ws_auth","jwks":[{"url":"http://idp.example.com/jwks.json"}]}`,
			want:    []string{"jwks http://idp.example.com/jwks.json", "https"},
		},
		{
			name:    "jwks with another scheme",
			handler: `{"handler":"ws_auth","jwks":[{"url":"file:///etc/jwks.json"}]}`,
			want:    []string{"jwks", "https://"},
		},
		{
			name:    "jwks refresh below the floor",
			handler: `{"handler":"ws_auth","jwks":[{"url":"https://idp.example.com/jwks.json","refresh":"1ns"}]}`,
			want:    []string{"jwks https://idp.example.com/jwks.json refresh: must be at least"},
		},
		{
			name:    "jwks refresh negative",
			handler: `{"handler":"ws_auth","jwks":[{"url":"https://idp.example.com/jwks.json","refresh":"-1h"}]}`,
			want:    []string{"jwks https://idp.example.com/jwks.json refresh: must be at least"},
		},
		{
			name:    "jwks timeout over 1m",
			handler: `{"handler":"ws_auth","jwks":[{"url":"https://idp.example.com/jwks.json","timeout":"2m"}]}`,
			want:    []string{"jwks https://idp.example.com/jwks.json timeout: must be more than 0 and at most 1m0s"},
		},
		{
			name:    "jwks timeout negative",
			handler: `{"handler":"ws_auth","jwks":[{"url":"https://idp.example.com/jwks.json","timeout":"-1s"}]}`,
			want:    []string{"jwks https://idp.example.com/jwks.json timeout: must be more than 0"},
		},
		{
			name:    "rate_limit handshakes faster than 1ms per event",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"rate_limits":{"handshakes":{"events":10000,"window":"1s"}}}`,
			want:    []string{"rate_limit handshakes: the window must be at most 8784h0m0s, and at least 1ms per event"},
		},
		{
			name:    "rate_limit handshakes window over a year",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"rate_limits":{"handshakes":{"events":1,"window":"367d"}}}`,
			want:    []string{"rate_limit handshakes: the window must be at most 8784h0m0s, and at least 1ms per event"},
		},
		{
			name:    "rate_limits handshakes per host",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"rate_limits":{"handshakes":{"events":10,"window":"1m","per":"host"}}}`,
			want:    []string{`rate_limit handshakes: per must be ip or user, not "host"`},
		},
		{
			// The name before rate_limits: strict decoding refuses it
			// rather than load a config without its limit.
			name:    "handshake_rate, the former name of rate_limits.handshakes",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"handshake_rate":{"events":10,"window":"1m"}}`,
			want:    []string{"handshake_rate"},
		},
		{
			name:    "token_source header with an invalid name",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"token_sources":[{"source":"header","name":"X Token"}]}`,
			want:    []string{`token_source header: "X Token" is not a valid header field name`},
		},
		{
			name:    "token_source header with a scheme holding a space",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"token_sources":[{"source":"header","name":"Authorization","scheme":"Bearer x"}]}`,
			want:    []string{`token_source header: scheme "Bearer x" is not a valid authentication scheme`},
		},
		{
			name:    "token_source subprotocol marker with a comma",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"token_sources":[{"source":"subprotocol","name":"access_token, x"}]}`,
			want:    []string{`token_source subprotocol: marker "access_token, x" is not a valid subprotocol`},
		},
		{
			name:    "token_source cookie with an invalid name",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"allowed_origins":["https://app.example.com"],"token_sources":[{"source":"cookie","name":"a;b"}]}`,
			want:    []string{`token_source cookie: "a;b" is not a valid cookie name`},
		},
		{
			name:    "token_source first_message timeout over 1m",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"token_sources":[{"source":"first_message","timeout":"2m"}]}`,
			want:    []string{"token_source first_message: timeout must be between 0 and 1m0s"},
		},
		{
			name:    "token_source query with a timeout",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"token_sources":[{"source":"query","timeout":"5s"}]}`,
			want:    []string{"token_source query: timeout applies to first_message only"},
		},
		{
			name:    "leeway over 1h",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"leeway":"2h"}`,
			want:    []string{"leeway: must be at most 1h0m0s (a longer leeway makes exp meaningless)"},
		},
		{
			name:    "secret empty",
			handler: `{"handler":"ws_auth","secrets":[""]}`,
			want:    []string{"secret 1: empty"},
		},
		{
			name:    "no key",
			handler: `{"handler":"ws_auth","issuers":["me"]}`,
			want:    []string{"no key configured: need secret, public_key, jwks, oidc or jwks_file (or introspect or session_check for opaque credentials)"},
		},
		{
			name:    "algorithms that no key type verifies",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"algorithms":["RS256"]}`,
			want:    []string{"algorithms: no configured key can verify RS256: it needs a public_key, jwks or jwks_file"},
		},
		{
			name:    "secret placeholder that is not set",
			handler: `{"handler":"ws_auth","secrets":["{env.WSAUTH_TEST_UNSET_SECRET}"]}`,
			want:    []string{"secret {env.WSAUTH_TEST_UNSET_SECRET}: empty (is the environment variable set?)"},
		},
		{
			name:    "secret base64 placeholder that is not set",
			handler: `{"handler":"ws_auth","secrets":["base64:{env.WSAUTH_TEST_UNSET_SECRET}"]}`,
			want:    []string{"secret base64:{env.WSAUTH_TEST_UNSET_SECRET}: empty (is the environment variable set?)"},
		},
		{
			name:    "reject maybe",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"reject":"maybe"}`,
			want:    []string{"reject", "maybe"},
		},
		{
			name:    "revalidate below 1s",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"revalidate":"500ms"}`,
			want:    []string{"revalidate: must be 0 (only when the blocklist changes) or between 1s and 24h0m0s"},
		},
		{
			name:    "revalidate negative",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"revalidate":"-1m"}`,
			want:    []string{"revalidate: must be 0 (only when the blocklist changes) or between 1s and 24h0m0s"},
		},
		{
			name:    "max_message_size over 1GiB",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"max_message_size":1073741825}`,
			want:    []string{"max_message_size: must be between 1 byte and 1GiB"},
		},
		{
			name:    "max_message_size negative",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"max_message_size":-1}`,
			want:    []string{"max_message_size: must be between 1 byte and 1GiB"},
		},
		{
			name:    "refresh_message with a quote",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"refresh_message":"re\"fresh"}`,
			want:    []string{`refresh_message: type must be 1 to 64 printable ASCII characters, without '"' or '\', not "re\"fresh"`},
		},
		{
			name:    "refresh_message with a control character",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"refresh_message":"re\nfresh"}`,
			want:    []string{`refresh_message: type must be 1 to 64 printable ASCII characters`},
		},
		{
			name:    "refresh_message not ASCII",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"refresh_message":"rafraîchir"}`,
			want:    []string{`refresh_message: type must be 1 to 64 printable ASCII characters`},
		},
		{
			name:    "rate_limit messages faster than 1µs per event",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"rate_limits":{"messages":{"events":1000001,"window":"1s"}}}`,
			want:    []string{"rate_limit messages: the window must be at most 8784h0m0s, and at least 1µs per event"},
		},
		{
			name:    "rate_limit messages without a window",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"rate_limits":{"messages":{"events":10}}}`,
			want:    []string{"rate_limit messages: need a positive count and window"},
		},
		{
			name:    "rate_limit messages per ip",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"rate_limits":{"messages":{"events":10,"window":"1s","per":"ip"}}}`,
			want:    []string{`rate_limit messages: per must be connection or user, not "ip"`},
		},
		{
			name:    "rate_limit messages action kick",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"rate_limits":{"messages":{"events":10,"window":"1s","action":"kick"}}}`,
			want:    []string{`rate_limit messages: action must be drop, close or notify, not "kick"`},
		},
		{
			// Both kinds are checked, not only the first one set.
			name:    "rate_limit messages next to valid handshakes",
			handler: `{"handler":"ws_auth","secrets":["` + validateSecret + `"],"rate_limits":{"handshakes":{"events":10,"window":"1m"},"messages":{"events":0,"window":"1s"}}}`,
			want:    []string{"rate_limit messages: need a positive count and window"},
		},
	}
	for _, tt := range jsonTests {
		t.Run("json/"+tt.name, func(t *testing.T) {
			err := validateJSON(handlerConfig(tt.handler))
			if err == nil {
				t.Fatalf("config loaded, want an error containing %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n\t%v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

// TestSecretErrorsKeepSecrets: an error about a secret shows the value
// configured only when it is made of placeholders (which say where the
// secret should have come from); a literal is named by its position.
func TestSecretErrorsKeepSecrets(t *testing.T) {
	const literal = "base64:not-base64-but-a-secret!"
	err := validateJSON(handlerConfig(`{"handler":"ws_auth","secrets":["` + validateSecret + `","` + literal + `"]}`))
	if err == nil {
		t.Fatal("config loaded, want an error")
	}
	if !strings.Contains(err.Error(), "secret 2: invalid base64") {
		t.Errorf("error %q does not name the secret by its position", err)
	}
	if strings.Contains(err.Error(), "not-base64-but-a-secret") {
		t.Errorf("error %q shows the secret", err)
	}
	// A literal next to a placeholder is a literal.
	t.Setenv("WSAUTH_TEST_EMPTY", "")
	err = validateJSON(handlerConfig(`{"handler":"ws_auth","secrets":["base64:{env.WSAUTH_TEST_EMPTY}!!!"]}`))
	if err == nil || strings.Contains(err.Error(), "{env.") || !strings.Contains(err.Error(), "secret 1:") {
		t.Errorf("error %v, want the secret named by its position, not shown", err)
	}
	// A placeholder unknown at load would be the secret itself, readable
	// in the config: refused, named when it is the whole value.
	for value, want := range map[string]string{
		"{env_WSAUTH_SECRET}":                    "secret {env_WSAUTH_SECRET}: not a placeholder known at load",
		"{http.request.header.X}":                "secret {http.request.header.X}: not a placeholder known at load",
		"a-long-literal-{typo.name}-and-more!!!": "secret 1: holds a placeholder not known at load",
	} {
		err := validateJSON(handlerConfig(`{"handler":"ws_auth","secrets":["` + value + `"]}`))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("secret %q: error %v, want %q", value, err, want)
		}
		if err != nil && want == "secret 1: holds a placeholder not known at load" && strings.Contains(err.Error(), "a-long-literal") {
			t.Errorf("error %q shows the secret", err)
		}
	}
}

// TestExampleCaddyfileAdapts checks that the demo config at the root of
// the repository adapts without warnings, puts ws_auth in its routes,
// and loads (`caddy validate`).
func TestExampleCaddyfileAdapts(t *testing.T) {
	const name = "example.Caddyfile"
	// As the demo's first run does, without WS_SECRET: the demo default
	// applies. TestREADMEBlocks validates it with WS_SECRET set.
	t.Setenv("WS_SECRET", "")
	os.Unsetenv("WS_SECRET")
	js := adaptExample(t)
	if !strings.Contains(string(js), `"handler":"ws_auth"`) {
		t.Errorf("%s adapts to a config without ws_auth:\n%s", name, js)
	}
	if err := validateJSON(js); err != nil {
		t.Errorf("validating %s: %v", name, err)
	}
}

// TestCaddyfileCoversEveryField checks that every JSON field of the
// handler is set by at least one of the adapt tests, so that an option
// added to the Handler struct without its Caddyfile form (SPEC.md: "the
// same options exist in JSON") is noticed.
func TestCaddyfileCoversEveryField(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(adaptDir, "*.caddyfiletest"))
	if err != nil {
		t.Fatal(err)
	}
	var expected strings.Builder
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if _, want, ok := strings.Cut(string(data), "\n----------\n"); ok && strings.HasPrefix(strings.TrimSpace(want), "{") {
			expected.WriteString(want)
		}
	}
	all := expected.String()
	for _, typ := range []reflect.Type{reflect.TypeFor[Handler](), reflect.TypeFor[TokenSource](), reflect.TypeFor[JWKSSource](), reflect.TypeFor[RateLimits](), reflect.TypeFor[HandshakeRate](), reflect.TypeFor[MessageRate]()} {
		for f := range typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if !f.IsExported() || name == "" || name == "-" {
				continue
			}
			if !strings.Contains(all, `"`+name+`":`) {
				t.Errorf("%s.%s (JSON %q) is set by no test in %s: does the Caddyfile have a way to set it?", typ.Name(), f.Name, name, adaptDir)
			}
		}
	}
}

// adaptExample adapts example.Caddyfile, in the environment as it is, and
// fails the test on an error or a warning.
func adaptExample(t *testing.T) []byte {
	t.Helper()
	const name = "example.Caddyfile"
	body, err := os.ReadFile(name)
	if errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s is missing: SPEC.md promises `go run ./cmd/caddy run --config %s`", name, name)
	}
	if err != nil {
		t.Fatal(err)
	}
	js, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": name})
	if err != nil {
		t.Fatalf("adapting %s: %v", name, err)
	}
	for _, w := range warnings {
		t.Errorf("adapting %s: warning: %s", name, w)
	}
	return js
}
