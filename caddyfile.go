package wsauth

import (
	"strconv"

	"github.com/dustin/go-humanize"

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
//	}
//
// token_source, secret, public_key, jwks, jwks_file, algorithms, issuer,
// audience, scopes, allowed_origins and close_code may be repeated; the
// other options may be given once.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
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

	for d.NextBlock(0) {
		opt := d.Val()
		switch opt {
		case "token_source":
			ts, err := parseTokenSource(d)
			if err != nil {
				return err
			}
			h.TokenSources = append(h.TokenSources, ts)

		case "secret":
			v, err := oneArg(d)
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
			src := &JWKSSource{URL: url}
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				sub := d.Val()
				switch sub {
				case "refresh", "timeout":
					v, err := oneArg(d)
					if err != nil {
						return err
					}
					dur, err := caddy.ParseDuration(v)
					if err != nil || dur <= 0 {
						return d.Errf("jwks %s: invalid duration %q", sub, v)
					}
					if sub == "refresh" {
						src.Refresh = caddy.Duration(dur)
					} else {
						src.Timeout = caddy.Duration(dur)
					}
				default:
					return d.Errf("jwks: unrecognized subdirective '%s'", sub)
				}
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
			switch opt {
			case "algorithms":
				h.Algorithms = append(h.Algorithms, args...)
			case "issuer":
				h.Issuers = append(h.Issuers, args...)
			case "audience":
				h.Audiences = append(h.Audiences, args...)
			case "scopes":
				h.Scopes = append(h.Scopes, args...)
			case "allowed_origins":
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

		case "rate_limit", "max_connections_per_user", "max_message_size", "blocklist_file",
			"block_after", "redis", "expire_connections", "revalidate", "refresh_message":
			return d.Errf("%s: not available in this version of ws_auth yet", opt)

		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	return nil
}

func parseTokenSource(d *caddyfile.Dispenser) (TokenSource, error) {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return TokenSource{}, d.Errf("token_source: missing source (query, header, cookie or subprotocol)")
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
		return ts, d.Errf("token_source first_message: not available in this version of ws_auth yet")
	default:
		return ts, d.Errf("token_source: unknown source %q (want query, header, cookie or subprotocol)", ts.Source)
	}
	if len(rest) > 0 {
		ts.Name = rest[0]
	}
	return ts, nil
}

func oneArg(d *caddyfile.Dispenser) (string, error) {
	opt := d.Val()
	if !d.NextArg() {
		return "", d.Errf("%s: missing value", opt)
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s: too many arguments", opt)
	}
	return v, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
