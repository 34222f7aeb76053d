package wsauth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/spf13/cobra"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

// The ws-auth command and its subcommands:
//
//	caddy ws-auth token    signs a token (tests, demos, scripts)
//	caddy ws-auth revoke   adds an entry to the blocklist of a running Caddy
//	caddy ws-auth unrevoke removes one
//
// revoke and unrevoke talk to the admin API's /ws_auth/blocklist endpoint,
// as `caddy reload` talks to /load (caddycmd.AdminAPIRequest).
func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "ws-auth",
		Usage: "token|revoke|unrevoke",
		Short: "Signs tokens for ws_auth and edits its blocklist",
		Long: `
Tools for the ws_auth handler.

  caddy ws-auth token     signs a JWT, for tests, demos and scripts
  caddy ws-auth revoke    adds a user, token or IP to the blocklist of a
                          running Caddy, through its admin API
  caddy ws-auth unrevoke  removes it

Run "caddy ws-auth <subcommand> --help" for the flags of each.
`,
		CobraFunc: addWSAuthCommands,
	})
}

// blocklistPath is the admin API endpoint of the blocklist (admin.go).
const blocklistPath = "/ws_auth/blocklist"

// defaultTokenTTL is how long a token from `ws-auth token` lasts by default.
const defaultTokenTTL = "1h"

// addWSAuthCommands adds the subcommands to the ws-auth command.
func addWSAuthCommands(cmd *cobra.Command) {
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if len(args) == 0 {
			return c.Help()
		}
		return fmt.Errorf("unknown subcommand %q: want token, revoke or unrevoke", args[0])
	}

	token := &cobra.Command{
		Use:   "token (--secret <secret> | --key <private.pem>) --sub <user> [--scope <scopes>] [--ttl <duration>] [--aud <audience>]... [--iss <issuer>] [--kid <key id>] [--alg <algorithm>] [--claim <name>=<value>]...",
		Short: "Signs a JWT and writes it to stdout",
		Long: `
Signs a JWT that ws_auth accepts when configured with the matching key, and
writes it to stdout on one line. For tests, demos and scripts: in production,
tokens come from your identity provider.

The token holds sub, iat (now), exp (now + --ttl), a random jti (16 bytes,
hex), and scope, aud and iss when given.

--secret
    The HMAC secret, as ws_auth's secret option takes it: a literal value,
    or base64:<...> for raw bytes (standard or URL alphabet, padded or not).
    It is the secret itself, not a placeholder: from the environment, use
    --secret "$WS_SECRET". HS256 unless --alg says HS384 or HS512.

--key
    A PEM file with a private key: RSA (PKCS#1 or PKCS#8, 2048 bits or
    more; RS256 by default, or RS384, RS512, PS256, PS384, PS512), ECDSA
    (PKCS#8 or SEC1; ES256 for P-256, ES384 for P-384, ES512 for P-521) or
    Ed25519 (PKCS#8; EdDSA). Exactly one of --secret and --key is required.

--alg
    The algorithm, within the key's family; one that does not fit the key
    is refused.

--sub
    The user (required).

--scope
    Granted scopes, space-separated: --scope "chat:read chat:write".

--ttl
    Lifetime: exp is now + ttl. Default: 1h.

--aud, --iss
    The audience and the issuer. --aud may be repeated: the claim is then
    an array.

--kid
    The key ID, in the token's header, for a key set (jwks, jwks_file).

--claim
    Another claim, name=value; may be repeated. The value is read as JSON
    when it parses (42, true, {"id":"acme"}, ["a","b"]) and as a string
    otherwise. jti=<id> replaces the random jti; nbf may be set here too.
    sub, scope, aud, iss, exp and iat have their own flags.
`,
		Args: cobra.NoArgs,
	}
	f := token.Flags()
	f.String("secret", "", "HMAC secret (base64:<...> for raw bytes)")
	f.String("key", "", "PEM file with an RSA, ECDSA or Ed25519 private key")
	f.String("sub", "", "the user (sub claim); required")
	f.String("scope", "", "granted scopes, space-separated")
	f.String("ttl", defaultTokenTTL, "lifetime of the token")
	f.StringArray("aud", nil, "audience (aud claim); may be repeated")
	f.String("iss", "", "issuer (iss claim)")
	f.String("kid", "", "key ID (kid header)")
	f.String("alg", "", "signing algorithm, within the key's family (default: HS256, RS256, or the curve's ES* or EdDSA)")
	f.StringArray("claim", nil, "another claim, name=value (value as JSON if it parses); may be repeated")
	token.RunE = withOutput(cmdToken)

	revoke := &cobra.Command{
		Use:   "revoke --kind sub|jti|ip --value <value> [--ttl <duration>] [--reason <text>] [--address <interface>] [--config <path> [--adapter <name>]]",
		Short: "Adds an entry to the blocklist of a running Caddy",
		Long: `
Adds a user (sub), a token ID (jti) or an IP address or CIDR range (ip) to
the ws_auth blocklist of a running Caddy, through its admin API
(POST /ws_auth/blocklist). Live connections that match are closed at once
(1008 "revoked"). The API's answer, the entry as JSON, is written to stdout;
a refusal is written to stderr, with a non-zero exit status.

--ttl
    How long the entry lasts. Without it, the request carries no ttl and
    the admin API's default applies.

--reason
    A note kept with the entry.

--address, --config, --adapter
    Where the admin API listens, as for "caddy stop": --address, or the
    admin address of the config file given with --config, or the default,
    localhost:2019.
`,
		Args: cobra.NoArgs,
	}
	f = revoke.Flags()
	f.String("kind", "", "what to block: sub, jti or ip")
	f.String("value", "", "the user, token ID, or IP address or CIDR range")
	f.String("ttl", "", "how long the entry lasts (default: the admin API's)")
	f.String("reason", "", "a note kept with the entry")
	addAdminFlags(revoke)
	revoke.RunE = withOutput(cmdRevoke)

	unrevoke := &cobra.Command{
		Use:   "unrevoke --kind sub|jti|ip --value <value> [--address <interface>] [--config <path> [--adapter <name>]]",
		Short: "Removes an entry from the blocklist of a running Caddy",
		Long: `
Removes an entry from the ws_auth blocklist of a running Caddy, through its
admin API (DELETE /ws_auth/blocklist). The API's answer is written to
stdout; a refusal, such as an entry that is not there, is written to
stderr, with a non-zero exit status. --address, --config and --adapter are
as for revoke.
`,
		Args: cobra.NoArgs,
	}
	f = unrevoke.Flags()
	f.String("kind", "", "what the entry blocks: sub, jti or ip")
	f.String("value", "", "the user, token ID, or IP address or CIDR range")
	addAdminFlags(unrevoke)
	unrevoke.RunE = withOutput(cmdUnrevoke)

	cmd.AddCommand(token, revoke, unrevoke)
}

// addAdminFlags adds the flags that say where the admin API is, as
// `caddy stop` and `caddy reload` have them.
func addAdminFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.String("address", "", "the admin API's address (default: from --config, or "+caddy.DefaultAdminListen+")")
	f.StringP("config", "c", "", "a config file to read the admin address from")
	f.StringP("adapter", "a", "", "the adapter of --config")
}

// withOutput is caddycmd.WrapCommandFuncForCobra for a function that also
// gets the command's output (stdout, unless a test sets another): errors
// go through Caddy's logger to stderr, and make the exit status non-zero.
func withOutput(fn func(io.Writer, caddycmd.Flags) (int, error)) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		return caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
			return fn(cmd.OutOrStdout(), fl)
		})(cmd, args)
	}
}

// tokenOptions are the flags of `ws-auth token`.
type tokenOptions struct {
	secret  string
	keyFile string
	sub     string
	scope   string
	ttl     time.Duration
	aud     []string
	iss     string
	kid     string
	alg     string
	claims  []string // name=value
}

func cmdToken(w io.Writer, fl caddycmd.Flags) (int, error) {
	o := tokenOptions{
		secret:  fl.String("secret"),
		keyFile: fl.String("key"),
		sub:     fl.String("sub"),
		scope:   fl.String("scope"),
		iss:     fl.String("iss"),
		kid:     fl.String("kid"),
		alg:     fl.String("alg"),
	}
	var err error
	if o.ttl, err = caddy.ParseDuration(fl.String("ttl")); err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("--ttl: %v", err)
	}
	o.aud, o.claims = stringArray(fl, "aud"), stringArray(fl, "claim")
	tok, err := mintToken(o, time.Now())
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if _, err := fmt.Fprintln(w, tok); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	return caddy.ExitCodeSuccess, nil
}

// stringArray returns the values of a repeated flag as given. (GetStringArray
// goes through the flag's CSV form, in which a lone empty value is lost.)
func stringArray(fl caddycmd.Flags, name string) []string {
	return fl.Lookup(name).Value.(interface{ GetSlice() []string }).GetSlice()
}

// claimFlags are the claims that --claim may not set, with the flag that
// sets them.
var claimFlags = map[string]string{
	"sub":   "--sub",
	"scope": "--scope",
	"aud":   "--aud",
	"iss":   "--iss",
	"exp":   "--ttl",
	"iat":   "the time of signing",
}

// mintToken signs a token by o, issued at now.
func mintToken(o tokenOptions, now time.Time) (string, error) {
	method, key, err := signingKey(o)
	if err != nil {
		return "", err
	}
	if o.sub == "" {
		return "", fmt.Errorf("--sub is required")
	}
	if o.ttl < time.Second {
		return "", fmt.Errorf("--ttl must be at least 1s, not %v", o.ttl)
	}

	c := jwt.MapClaims{}
	for _, kv := range o.claims {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			return "", fmt.Errorf("--claim %q: want <name>=<value>", kv)
		}
		if by, ok := claimFlags[name]; ok {
			return "", fmt.Errorf("--claim %s: set by %s", name, by)
		}
		if _, dup := c[name]; dup {
			return "", fmt.Errorf("--claim %s: given twice", name)
		}
		c[name] = claimValue(value)
	}
	c["sub"] = o.sub
	c["iat"] = now.Unix()
	c["exp"] = now.Add(o.ttl).Unix()
	if _, ok := c["jti"]; !ok {
		var id [16]byte
		_, _ = rand.Read(id[:]) // crypto/rand.Read does not fail
		c["jti"] = hex.EncodeToString(id[:])
	}
	if scope := strings.Join(strings.Fields(o.scope), " "); scope != "" {
		c["scope"] = scope
	}
	switch {
	case slices.Contains(o.aud, ""):
		return "", fmt.Errorf("--aud: empty audience")
	case len(o.aud) == 1:
		c["aud"] = o.aud[0]
	case len(o.aud) > 1:
		c["aud"] = o.aud
	}
	if o.iss != "" {
		c["iss"] = o.iss
	}

	tok := jwt.NewWithClaims(method, c)
	if o.kid != "" {
		tok.Header["kid"] = o.kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		return "", fmt.Errorf("signing: %v", err)
	}
	return s, nil
}

// claimValue reads a --claim value: JSON if it is one whole JSON value
// (numbers are kept as written), else the string itself.
func claimValue(s string) any {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return s
	}
	if _, err := dec.Token(); err != io.EOF {
		return s // more after the first value: "1 2", "{} x"
	}
	return v
}

// signingKey returns the method and key that o asks for: an HMAC secret
// or a private key, and an algorithm of the key's family.
func signingKey(o tokenOptions) (jwt.SigningMethod, any, error) {
	if (o.secret == "") == (o.keyFile == "") {
		return nil, nil, fmt.Errorf("give exactly one of --secret and --key")
	}
	var (
		key    any
		algs   []string // the key's family; the first is the default
		family string   // for errors
	)
	if o.secret != "" {
		// A placeholder would be taken as the secret itself, and the
		// token would fail against the config it was copied from.
		if unknownPlaceholder.FindString(o.secret) == o.secret {
			return nil, nil, fmt.Errorf("--secret %s: a Caddy placeholder, not a secret; give the value itself, e.g. --secret \"$WS_SECRET\"", o.secret)
		}
		secret, err := decodeSecret(o.secret)
		if err != nil {
			return nil, nil, fmt.Errorf("--secret: %v", err) // never the value
		}
		if len(secret) < 32 {
			caddy.Log().Warn("the HMAC secret is shorter than 32 bytes; use a long random secret")
		}
		key, algs, family = secret, hmacAlgs, "an HMAC secret"
	} else {
		priv, err := loadPEMPrivateKey(o.keyFile)
		if err != nil {
			return nil, nil, fmt.Errorf("--key %s: %v", o.keyFile, err)
		}
		switch k := priv.(type) {
		case *rsa.PrivateKey:
			if bits := k.N.BitLen(); bits < minRSABits {
				return nil, nil, fmt.Errorf("--key %s: RSA key of %d bits is too short (minimum %d)", o.keyFile, bits, minRSABits)
			}
			algs, family = rsaAlgs, "an RSA key"
		case *ecdsa.PrivateKey:
			curve := k.Curve.Params().Name
			alg, ok := ecdsaAlgs[curve]
			if !ok {
				return nil, nil, fmt.Errorf("--key %s: unsupported ECDSA curve %s (want P-256, P-384 or P-521)", o.keyFile, curve)
			}
			algs, family = []string{alg}, "a "+curve+" key"
		case ed25519.PrivateKey:
			algs, family = eddsaAlgs, "an Ed25519 key"
		default:
			return nil, nil, fmt.Errorf("--key %s: unsupported key type %T (want RSA, ECDSA or Ed25519)", o.keyFile, priv)
		}
		key = priv
	}

	alg := o.alg
	if alg == "" {
		alg = algs[0]
	}
	if !slices.Contains(algs, alg) {
		return nil, nil, fmt.Errorf("--alg %s does not fit %s (%s)", alg, family, strings.Join(algs, ", "))
	}
	return jwt.GetSigningMethod(alg), key, nil
}

// loadPEMPrivateKey reads the private key of a PEM file. Other blocks (EC
// PARAMETERS, a certificate) are skipped; the file is read whatever it is,
// so that --key <(some command) works, but only its first MiB.
func loadPEMPrivateKey(file string) (any, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("larger than %d bytes", maxKeyFile)
	}

	var key any
	var public bool // the file holds a public key or a certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type == "ENCRYPTED PRIVATE KEY" || strings.Contains(block.Headers["Proc-Type"], "ENCRYPTED") {
			return nil, fmt.Errorf("the private key is encrypted; decrypt it first (openssl pkey -in <file> -out <new file>)")
		}
		var k any
		switch block.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(block.Bytes)
		case "PUBLIC KEY", "RSA PUBLIC KEY", "CERTIFICATE":
			public = true
			continue
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %v", block.Type, err)
		}
		if key != nil {
			return nil, fmt.Errorf("holds more than one private key")
		}
		key = k
	}
	if key == nil {
		if public {
			return nil, fmt.Errorf("holds no private key, only a public key or certificate: signing needs the private key")
		}
		return nil, fmt.Errorf("no private key found (want PEM: PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")
	}
	return key, nil
}

// blockRequest is the body of a request to the blocklist endpoint.
type blockRequest struct {
	Kind   string `json:"kind"`
	Value  string `json:"value"`
	TTL    string `json:"ttl,omitempty"`
	Reason string `json:"reason,omitempty"`
}

func cmdRevoke(w io.Writer, fl caddycmd.Flags) (int, error) {
	req, err := blockFlags(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if s := fl.String("ttl"); s != "" {
		ttl, err := caddy.ParseDuration(s)
		if err != nil {
			return caddy.ExitCodeFailedStartup, fmt.Errorf("--ttl: %v", err)
		}
		if ttl <= 0 {
			return caddy.ExitCodeFailedStartup, fmt.Errorf("--ttl must be positive, not %s", s)
		}
		// In Go's syntax, which a server parsing it either way reads
		// ("1d" is Caddy's own).
		req.TTL = ttl.String()
	}
	req.Reason = fl.String("reason")
	return blocklistRequest(w, fl, "POST", req)
}

func cmdUnrevoke(w io.Writer, fl caddycmd.Flags) (int, error) {
	req, err := blockFlags(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	return blocklistRequest(w, fl, "DELETE", req)
}

// blockFlags reads --kind and --value.
func blockFlags(fl caddycmd.Flags) (blockRequest, error) {
	req := blockRequest{Kind: fl.String("kind"), Value: fl.String("value")}
	switch req.Kind {
	case "sub", "jti", "ip":
	case "":
		return req, fmt.Errorf("--kind is required: sub, jti or ip")
	default:
		return req, fmt.Errorf("--kind %q: want sub, jti or ip", req.Kind)
	}
	if req.Value == "" {
		return req, fmt.Errorf("--value is required")
	}
	return req, nil
}

// blocklistRequest sends req to the blocklist endpoint of the admin API
// the flags point to, and writes the answer to w.
func blocklistRequest(w io.Writer, fl caddycmd.Flags, method string, req blockRequest) (int, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("finding the admin API's address: %v", err)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, blocklistPath, nil, bytes.NewReader(body))
	if err != nil {
		return caddy.ExitCodeFailedStartup, adminError(addr, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("reading the admin API's answer: %v", err)
	}
	answer = bytes.TrimSpace(answer)
	if len(answer) > 0 {
		if _, err := fmt.Fprintf(w, "%s\n", answer); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
	}
	return caddy.ExitCodeSuccess, nil
}

// adminErrorPrefix starts the error caddycmd.AdminAPIRequest returns for
// an answer of status 400 or more: "caddy responded with error: HTTP
// <status>: <body>".
const adminErrorPrefix = "caddy responded with error: HTTP "

// adminError turns an error of caddycmd.AdminAPIRequest into the admin
// API's own message, {"error": "..."}, with the status. An error of
// another form is returned as it is.
func adminError(addr string, err error) error {
	rest, ok := strings.CutPrefix(err.Error(), adminErrorPrefix)
	if !ok {
		return fmt.Errorf("admin API at %s: %v", addr, err)
	}
	status, body, ok := strings.Cut(rest, ": ")
	if !ok {
		return err
	}
	var answer struct {
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(body), &answer) == nil && answer.Error != "" {
		return fmt.Errorf("admin API at %s: HTTP %s: %s", addr, status, answer.Error)
	}
	// Not the endpoint's JSON: a 404 from the admin mux is plain text.
	if code, _ := strconv.Atoi(status); code == 404 {
		return fmt.Errorf("admin API at %s: HTTP 404: no %s endpoint there (is that Caddy built with the ws_auth plugin?)", addr, blocklistPath)
	}
	return fmt.Errorf("admin API at %s: HTTP %s: %s", addr, status, strings.TrimSpace(body))
}
