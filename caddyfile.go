package wsauth

import (
	"errors"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/golang-jwt/jwt/v5"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("ws_auth", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("ws_auth", httpcaddyfile.After, "forward_auth")
}

func parseCaddyfile(helper httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	h := new(Handler)
	err := h.UnmarshalCaddyfile(helper.Dispenser)
	return h, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	ws_auth [<matcher>] {
//		token_source query [<param>]
//		token_source header [<name> [<scheme>]]
//		token_source cookie <name>
//		token_source subprotocol [<marker>]
//		token_source first_message [<type> [<timeout>]]
//
//		secret <value>
//		public_key <pem_file>
//		jwks <url> {
//			refresh <duration>
//			timeout <duration>
//		}
//		jwks_file <path>
//		algorithms <alg...>
//		issuer <iss...>
//		audience <aud...>
//		leeway <duration>
//		user_claim <claim>
//		max_token_size <size>
//
//		scopes <scope...>
//		scope_claim <claim>
//
//		allowed_origins <origin...>
//		allow_missing_origin
//		upgrades_only
//
//		reject close|status
//		close_code <reason> <code>
//		strip_token on|off
//
//		rate_limit handshakes <n>/<duration> [per ip|user]
//		blocklist_file <path>
//	}
//
// token_source, secret, public_key, jwks, jwks_file, algorithms, issuer,
// audience, scopes, allowed_origins and close_code may be repeated (a
// close_code once per reason, first_message once); the other options may
// be given once.
//
// What the Caddyfile alone decides is checked here, so that the error
// names the file and line: algorithm names ("none" is refused), origin
// patterns, scopes, that a cookie token source comes with allowed_origins,
// token source names and schemes (header field names, cookie names and
// subprotocol markers must be tokens), a jwks URL (https, or plain http to
// a loopback address; one with a placeholder is checked at load), jwks
// refresh (at least 10s) and timeout (at most 1m), rate_limit bounds,
// leeway (at most 1h), that there is a key source, that every algorithm
// can be verified by a configured type of key (checkKeyTypes), and that
// the environment variables a secret names ({env.NAME}) are set. The same
// rules run again at provision, for JSON configs, where the environment
// is the one Caddy runs in. Key files, key sets and secret values are
// checked at provision.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	// Errors about the block as a whole are reported at the directive.
	directive := d.Token()
	if d.NextArg() {
		return d.ArgErr()
	}

	seen := make(map[string]bool)
	once := func(opt string) error {
		if seen[opt] {
			return d.Errf("%s: already specified", opt)
		}
		seen[opt] = true
		return nil
	}

	// A cookie rides along with any cross-site WebSocket, so a cookie
	// source needs an Origin check (see Validate); the error is made where
	// the source is written, and returned if no allowed_origins follows.
	var cookieErr error

	// Where each algorithm was named, for an error found after the block.
	algTokens := make(map[string]caddyfile.Token)

	var last string // the previous option, for a block it does not take
	for d.NextBlock(0) {
		opt := d.Val()
		if opt == "{" && last != "" {
			return d.Errf("%s: unexpected block", last)
		}
		last = opt
		switch opt {
		case "token_source":
			ts, err := parseTokenSource(d)
			if err != nil {
				return err
			}
			if ts.Source == "first_message" {
				if err := once("token_source first_message"); err != nil {
					return err
				}
			}
			if ts.Source == "cookie" && cookieErr == nil {
				cookieErr = d.Errf("token_source cookie: requires allowed_origins (cross-site WebSocket hijacking)")
			}
			h.TokenSources = append(h.TokenSources, ts)

		case "secret":
			v, err := parseSecret(d)
			if err != nil {
				return err
			}
			h.Secrets = append(h.Secrets, v)

		case "public_key":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			h.PublicKeys = append(h.PublicKeys, v)

		case "jwks":
			url, err := oneArg(d)
			if err != nil {
				return err
			}
			// A placeholder is judged at load, when it has a value.
			if !strings.Contains(url, "{") {
				if _, err := checkJWKSURL(url); err != nil {
					return d.WrapErr(err)
				}
			}
			src := &JWKSSource{URL: url}
			var lastSub string
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				sub := d.Val()
				if sub == "{" && lastSub != "" {
					return d.Errf("jwks %s: unexpected block", lastSub)
				}
				lastSub = sub
				var dst *caddy.Duration
				var check func(time.Duration) error
				switch sub {
				case "refresh":
					dst, check = &src.Refresh, checkJWKSRefresh
				case "timeout":
					dst, check = &src.Timeout, checkJWKSTimeout
				default:
					return d.Errf("jwks: unrecognized subdirective '%s'", sub)
				}
				if *dst != 0 {
					return d.Errf("jwks %s: already specified", sub)
				}
				v, err := oneArgOf(d, "jwks "+sub)
				if err != nil {
					return err
				}
				dur, err := caddy.ParseDuration(v)
				if err != nil || dur <= 0 {
					return d.Errf("jwks %s: invalid duration %q", sub, v)
				}
				if err := check(dur); err != nil {
					return d.Errf("jwks %s: %v", sub, err)
				}
				*dst = caddy.Duration(dur)
			}
			h.JWKS = append(h.JWKS, src)

		case "jwks_file":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			h.JWKSFiles = append(h.JWKSFiles, v)

		case "algorithms", "issuer", "audience", "scopes", "allowed_origins":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("%s: needs at least one value", opt)
			}
			for _, a := range args {
				if a == "" {
					return d.Errf("%s: empty value", opt)
				}
			}
			switch opt {
			case "algorithms":
				for _, alg := range args {
					if strings.EqualFold(alg, "none") {
						return d.Errf("algorithms: 'none' is never accepted")
					}
					if jwt.GetSigningMethod(alg) == nil {
						return d.Errf("algorithms: unknown algorithm %q", alg)
					}
				}
				for _, alg := range args {
					if _, dup := algTokens[alg]; !dup {
						algTokens[alg] = d.Token()
					}
				}
				h.Algorithms = append(h.Algorithms, args...)
			case "issuer":
				h.Issuers = append(h.Issuers, args...)
			case "audience":
				h.Audiences = append(h.Audiences, args...)
			case "scopes":
				for _, s := range args {
					if strings.ContainsAny(s, " \t") {
						return d.Errf("scopes: invalid scope %q", s)
					}
				}
				h.Scopes = append(h.Scopes, args...)
			case "allowed_origins":
				if _, err := compileOrigins(args); err != nil {
					return d.WrapErr(err)
				}
				h.AllowedOrigins = append(h.AllowedOrigins, args...)
			}

		case "leeway":
			if err := once(opt); err != nil {
				return err
			}
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur < 0 {
				return d.Errf("leeway: invalid duration %q", v)
			}
			if err := checkLeeway(dur); err != nil {
				return d.WrapErr(err)
			}
			h.Leeway = caddy.Duration(dur)

		case "user_claim", "scope_claim":
			if err := once(opt); err != nil {
				return err
			}
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			if opt == "user_claim" {
				h.UserClaim = v
			} else {
				h.ScopeClaim = v
			}

		case "max_token_size":
			if err := once(opt); err != nil {
				return err
			}
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			size, err := humanize.ParseBytes(v)
			if err != nil || size == 0 || size > 1<<20 {
				return d.Errf("max_token_size: invalid size %q (1B to 1MiB)", v)
			}
			h.MaxTokenSize = int(size)

		case "allow_missing_origin", "upgrades_only":
			if err := once(opt); err != nil {
				return err
			}
			if d.NextArg() {
				return d.Errf("%s: takes no arguments", opt)
			}
			if opt == "upgrades_only" {
				h.UpgradesOnly = true
			} else {
				h.AllowMissingOrigin = true
			}

		case "reject":
			if err := once(opt); err != nil {
				return err
			}
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			if v != "close" && v != "status" {
				return d.Errf("reject: must be close or status, not %q", v)
			}
			h.Reject = v

		case "close_code":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("close_code: want <reason> <code>")
			}
			if _, ok := reasonByName(args[0]); !ok {
				return d.Errf("close_code: unknown reason %q", args[0])
			}
			code, err := strconv.Atoi(args[1])
			if err != nil || !validCloseCode(code) {
				return d.Errf("close_code: invalid code %q (1000-1003, 1007-1014, 3000-4999)", args[1])
			}
			if h.CloseCodes == nil {
				h.CloseCodes = make(map[string]int)
			}
			if _, dup := h.CloseCodes[args[0]]; dup {
				return d.Errf("close_code: %s already specified", args[0])
			}
			h.CloseCodes[args[0]] = code

		case "strip_token":
			if err := once(opt); err != nil {
				return err
			}
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			var on bool
			switch v {
			case "on":
				on = true
			case "off":
			default:
				return d.Errf("strip_token: must be on or off, not %q", v)
			}
			h.StripToken = &on

		case "rate_limit":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("rate_limit: want handshakes <n>/<duration> [per ip|user]")
			}
			if args[0] != "handshakes" {
				if args[0] == "messages" {
					return d.Errf("rate_limit messages: not available in this version of ws_auth yet")
				}
				return d.Errf("rate_limit: unknown kind %q (want handshakes)", args[0])
			}
			if h.RateLimits != nil && h.RateLimits.Handshakes != nil {
				return d.Errf("rate_limit handshakes: already specified")
			}
			if len(args) != 2 && len(args) != 4 {
				return d.Errf("rate_limit handshakes: want <n>/<duration> [per ip|user]")
			}
			n, win, err := parseRate(args[1])
			if err == nil {
				err = checkRate(n, win)
			}
			if err != nil {
				return d.Errf("rate_limit handshakes: %v", err)
			}
			hr := &HandshakeRate{Events: n, Window: caddy.Duration(win)}
			if len(args) == 4 {
				if args[2] != "per" || (args[3] != "ip" && args[3] != "user") {
					return d.Errf("rate_limit handshakes: want per ip or per user, not %q", strings.Join(args[2:], " "))
				}
				hr.Per = args[3]
			}
			if h.RateLimits == nil {
				h.RateLimits = new(RateLimits)
			}
			h.RateLimits.Handshakes = hr

		case "blocklist_file":
			if err := once(opt); err != nil {
				return err
			}
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			h.BlocklistFile = v

		case "max_connections_per_user", "max_message_size",
			"block_after", "redis", "expire_connections", "revalidate", "refresh_message":
			return d.Errf("%s: not available in this version of ws_auth yet", opt)

		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	if cookieErr != nil && len(h.AllowedOrigins) == 0 {
		return cookieErr
	}
	// The key sources and algorithms, judged by key type as Provision
	// judges them first (checkKeyTypes); which algorithms a public_key
	// verifies depends on its file, read at load.
	if err := checkHandlerKeyTypes(h); err != nil {
		if errors.Is(err, errNoKeyConfigured) {
			return errAt(directive, "ws_auth: %v", err)
		}
		for _, alg := range h.Algorithms {
			if err := checkKeyTypes(len(h.Secrets), len(h.PublicKeys), len(h.JWKS)+len(h.JWKSFiles), []string{alg}); err != nil {
				return errAt(algTokens[alg], "%v", err)
			}
		}
		return errAt(directive, "%v", err)
	}
	return nil
}

// unsetVarHint explains an empty secret: Caddy replaces {$NAME} before
// any directive sees the tokens, an unset variable with nothing, so the
// name of the variable is gone by then.
const unsetVarHint = " (a {$NAME} whose environment variable is not set is replaced with nothing)"

// parseSecret returns the value of a secret option. A secret that names
// an environment variable ({env.NAME}) that is unset or empty here is an
// error, found where the Caddyfile is adapted: `caddy run` adapts it in
// the environment it runs in. The value itself is never in an error.
func parseSecret(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.Errf("secret: missing value%s", unsetVarHint)
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("secret: too many arguments")
	}
	if v == "" || v == "base64:" {
		return "", d.Errf("secret: empty value%s", unsetVarHint)
	}
	for _, m := range envPlaceholder.FindAllStringSubmatch(v, -1) {
		val, ok := os.LookupEnv(m[1])
		if !ok {
			return "", d.Errf("secret: environment variable %s is not set (%s)", m[1], m[0])
		}
		if val == "" {
			return "", d.Errf("secret: environment variable %s is empty (%s)", m[1], m[0])
		}
	}
	return v, nil
}

// envPlaceholder matches an {env.NAME} placeholder, with NAME as its group.
var envPlaceholder = regexp.MustCompile(`\{env\.([^{}]+)\}`)

// errAt is d.Errf for tok, a token the dispenser has moved past: the
// error names tok's file and line (and import chain), as d.Errf would
// have there.
func errAt(tok caddyfile.Token, format string, args ...any) error {
	d := caddyfile.NewDispenser([]caddyfile.Token{tok})
	d.Next()
	return d.Errf(format, args...)
}

func parseTokenSource(d *caddyfile.Dispenser) (TokenSource, error) {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return TokenSource{}, d.Errf("token_source: missing source (query, header, cookie, subprotocol or first_message)")
	}
	ts := TokenSource{Source: args[0]}
	rest := args[1:]
	switch ts.Source {
	case "query", "subprotocol":
		if len(rest) > 1 {
			return ts, d.Errf("token_source %s: too many arguments", ts.Source)
		}
	case "header":
		if len(rest) > 2 {
			return ts, d.Errf("token_source header: too many arguments")
		}
		if len(rest) == 2 {
			ts.Scheme = rest[1]
		}
	case "cookie":
		if len(rest) != 1 {
			return ts, d.Errf("token_source cookie: want exactly one cookie name")
		}
	case "first_message":
		if len(rest) > 2 {
			return ts, d.Errf("token_source first_message: too many arguments")
		}
		if len(rest) == 2 {
			dur, err := caddy.ParseDuration(rest[1])
			if err != nil || dur <= 0 || dur > maxFirstMessageTimeout {
				return ts, d.Errf("token_source first_message: invalid timeout %q (up to %s)", rest[1], maxFirstMessageTimeout)
			}
			ts.Timeout = caddy.Duration(dur)
		}
	default:
		return ts, d.Errf("token_source: unknown source %q (want query, header, cookie, subprotocol or first_message)", ts.Source)
	}
	if len(rest) > 0 {
		if rest[0] == "" {
			return ts, d.Errf("token_source %s: empty name", ts.Source)
		}
		ts.Name = rest[0]
	}
	if err := checkTokenSource(ts); err != nil {
		return ts, d.WrapErr(err)
	}
	return ts, nil
}

// oneArg returns the single, non-empty argument of the current option.
func oneArg(d *caddyfile.Dispenser) (string, error) {
	return oneArgOf(d, d.Val())
}

// oneArgOf is oneArg for an option whose errors are named opt.
func oneArgOf(d *caddyfile.Dispenser, opt string) (string, error) {
	if !d.NextArg() {
		return "", d.Errf("%s: missing value", opt)
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s: too many arguments", opt)
	}
	if v == "" {
		return "", d.Errf("%s: empty value", opt)
	}
	return v, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
