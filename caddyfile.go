package wsauth

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
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
//		rate_limit messages <n>/<duration> [per connection|user] [drop|close|notify]
//		max_message_size <size>
//		blocklist_file <path>
//
//		expire_connections on|off
//		revalidate <duration>
//		refresh_message [<type>]
//	}
//
// token_source, secret, public_key, jwks, jwks_file, algorithms, issuer,
// audience, scopes, allowed_origins and close_code may be repeated (a
// close_code once per reason, first_message once, rate_limit once per
// kind); the other options may be given once.
//
// Each option is parsed by its own function (caddyfileOptions), which
// applies to the value it has just read the same rule function that
// checkConfig applies to JSON, so that the error names the file and line:
// algorithm names ("none" is refused), origin patterns, scopes, token
// sources (header field names, cookie names and subprotocol markers must
// be tokens), a jwks URL (https, or plain http to a loopback address; one
// with a placeholder is checked at load), jwks refresh and timeout,
// rate_limit bounds (HandshakeRate.check, MessageRate.check), leeway,
// reject, max_message_size (checkMaxMessageSize), revalidate
// (checkRevalidate) and the refresh_message type (checkRefreshType). The
// rules that need the whole block run after it, at the line that named
// the value: that a cookie token source comes with allowed_origins, that
// there is a key source, and that every algorithm can be verified by a
// configured type of key (checkKeyTypes). checkConfig itself runs last,
// at the directive, so that the Caddyfile accepts nothing that JSON
// refuses. The Caddyfile adds one rule of its own: the environment
// variables a secret names ({env.NAME}) are set where it is adapted. Key
// files, key sets and secret values are checked at provision.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	// Errors about the block as a whole are reported at the directive.
	directive := d.Token()
	if d.NextArg() {
		return d.ArgErr()
	}

	p := &caddyfileParser{h: h, d: d, algTokens: make(map[string]caddyfile.Token)}
	seen := make(map[string]bool)
	var last string // the previous option, for a block it does not take
	for d.NextBlock(0) {
		name := d.Val()
		if name == "{" && last != "" {
			return d.Errf("%s: unexpected block", last)
		}
		last = name
		opt, ok := caddyfileOptions[name]
		if !ok {
			return d.Errf("unrecognized subdirective '%s'", name)
		}
		if opt.once {
			if seen[name] {
				return d.Errf("%s: already specified", name)
			}
			seen[name] = true
		}
		if err := opt.parse(p); err != nil {
			return err
		}
	}
	return p.checkBlock(directive)
}

// caddyfileParser is one ws_auth block being parsed: the handler it
// fills, and where values were named, for the rules checked after the
// block.
type caddyfileParser struct {
	h *Handler
	d *caddyfile.Dispenser
	// cookie is the first token_source cookie, nil if none.
	cookie *caddyfile.Token
	// algTokens is where each algorithm was first named.
	algTokens map[string]caddyfile.Token
}

// caddyfileOption is how an option of the ws_auth block is parsed.
type caddyfileOption struct {
	once  bool // the option may be given once
	parse func(p *caddyfileParser) error
}

// caddyfileOptions are the options of the ws_auth block.
var caddyfileOptions = map[string]caddyfileOption{
	"token_source":         {parse: (*caddyfileParser).tokenSource},
	"secret":               {parse: (*caddyfileParser).secret},
	"public_key":           {parse: (*caddyfileParser).publicKey},
	"jwks":                 {parse: (*caddyfileParser).jwks},
	"oidc":                 {parse: (*caddyfileParser).oidc},
	"token_cache":          {once: true, parse: (*caddyfileParser).tokenCache},
	"jwks_file":            {parse: (*caddyfileParser).jwksFile},
	"introspect":           {once: true, parse: (*caddyfileParser).introspect},
	"session_check":        {once: true, parse: (*caddyfileParser).sessionCheck},
	"algorithms":           {parse: (*caddyfileParser).algorithms},
	"issuer":               {parse: (*caddyfileParser).issuer},
	"audience":             {parse: (*caddyfileParser).audience},
	"leeway":               {once: true, parse: (*caddyfileParser).leeway},
	"user_claim":           {once: true, parse: (*caddyfileParser).userClaim},
	"max_token_size":       {once: true, parse: (*caddyfileParser).maxTokenSize},
	"scopes":               {parse: (*caddyfileParser).scopes},
	"scope_claim":          {once: true, parse: (*caddyfileParser).scopeClaim},
	"allowed_origins":      {parse: (*caddyfileParser).allowedOrigins},
	"allow_missing_origin": {once: true, parse: (*caddyfileParser).allowMissingOrigin},
	"upgrades_only":        {once: true, parse: (*caddyfileParser).upgradesOnly},
	"reject":               {once: true, parse: (*caddyfileParser).reject},
	"close_code":           {parse: (*caddyfileParser).closeCode},
	"strip_token":          {once: true, parse: (*caddyfileParser).stripToken},
	"rate_limit":           {parse: (*caddyfileParser).rateLimit},
	"max_message_size":     {once: true, parse: (*caddyfileParser).maxMessageSize},
	"blocklist_file":       {once: true, parse: (*caddyfileParser).blocklistFile},
	"expire_connections":   {once: true, parse: (*caddyfileParser).expireConnections},
	"revalidate":           {once: true, parse: (*caddyfileParser).revalidate},
	"refresh_message":      {once: true, parse: (*caddyfileParser).refreshMessage},

	// Options of SPEC.md that later versions add.
	"max_connections_per_user": {once: true, parse: (*caddyfileParser).maxConnectionsPerUser},
	"block_after":              {once: true, parse: (*caddyfileParser).blockAfter},
	"redis":                    {once: true, parse: (*caddyfileParser).redis},
}

func (p *caddyfileParser) tokenSource() error {
	ts, err := parseTokenSource(p.d)
	if err != nil {
		return err
	}
	if err := checkTokenSources(append(p.h.TokenSources, ts)); err != nil {
		return p.d.WrapErr(err)
	}
	if ts.Source == "cookie" && p.cookie == nil {
		tok := p.d.Token()
		p.cookie = &tok
	}
	p.h.TokenSources = append(p.h.TokenSources, ts)
	return nil
}

func (p *caddyfileParser) secret() error {
	v, err := parseSecret(p.d)
	if err != nil {
		return err
	}
	p.h.Secrets = append(p.h.Secrets, v)
	return nil
}

func (p *caddyfileParser) publicKey() error {
	v, err := oneArg(p.d)
	if err != nil {
		return err
	}
	p.h.PublicKeys = append(p.h.PublicKeys, v)
	return nil
}

func (p *caddyfileParser) jwks() error {
	src, err := p.remoteSource("jwks")
	if err != nil {
		return err
	}
	p.h.JWKS = append(p.h.JWKS, src)
	return nil
}

func (p *caddyfileParser) oidc() error {
	src, err := p.remoteSource("oidc")
	if err != nil {
		return err
	}
	p.h.OIDC = append(p.h.OIDC, src)
	return nil
}

// remoteSource parses `jwks <url> { ... }` or `oidc <issuer_url> { ... }`:
// refresh, timeout and tls_trust_pool, as reverse_proxy's transport writes
// the last.
func (p *caddyfileParser) remoteSource(opt string) (*JWKSSource, error) {
	d := p.d
	url, err := oneArg(d)
	if err != nil {
		return nil, err
	}
	// A placeholder is judged at load, when it has a value.
	if !strings.Contains(url, "{") {
		check := func(u string) error { _, err := checkJWKSURL(u); return err }
		if opt == "oidc" {
			check = func(u string) error { _, err := checkIssuerURL(u); return err }
		}
		if err := check(url); err != nil {
			return nil, d.WrapErr(err)
		}
	}
	src := &JWKSSource{URL: url}
	var last string
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if sub == "{" && last != "" {
			return nil, d.Errf("%s %s: unexpected block", opt, last)
		}
		last = sub
		if sub == "tls_trust_pool" {
			if src.CARaw, err = p.trustPool(opt, src.CARaw); err != nil {
				return nil, err
			}
			continue
		}
		var dst *caddy.Duration
		var check func(time.Duration) error
		switch sub {
		case "refresh":
			dst, check = &src.Refresh, checkJWKSRefresh
		case "timeout":
			dst, check = &src.Timeout, checkJWKSTimeout
		default:
			return nil, d.Errf("%s: unrecognized subdirective '%s'", opt, sub)
		}
		if *dst != 0 {
			return nil, d.Errf("%s %s: already specified", opt, sub)
		}
		v, err := oneArgOf(d, opt+" "+sub)
		if err != nil {
			return nil, err
		}
		dur, err := caddy.ParseDuration(v)
		if err != nil {
			return nil, d.Errf("%s %s: invalid duration %q", opt, sub, v)
		}
		if err := check(dur); err != nil {
			return nil, d.Errf("%s %s: %v", opt, sub, err)
		}
		*dst = caddy.Duration(dur)
	}
	return src, nil
}

// trustPool parses `tls_trust_pool <module> ...` in opt's block, as
// reverse_proxy's transport writes it; had is what an earlier one set.
func (p *caddyfileParser) trustPool(opt string, had json.RawMessage) (json.RawMessage, error) {
	d := p.d
	if had != nil {
		return nil, d.Errf("%s tls_trust_pool: already specified", opt)
	}
	if !d.NextArg() {
		return nil, d.Errf("%s tls_trust_pool: missing module name (file, inline, ...)", opt)
	}
	name := d.Val()
	mod, err := caddyfile.UnmarshalModule(d, "tls.ca_pool.source."+name)
	if err != nil {
		return nil, fmt.Errorf("%s tls_trust_pool: %w", opt, err) // err names the line
	}
	ca, ok := mod.(caddytls.CA)
	if !ok {
		return nil, d.Errf("%s tls_trust_pool: module %s is no CA pool", opt, name)
	}
	return caddyconfig.JSONModuleObject(ca, "provider", name, nil), nil
}

// introspect parses `introspect <url> { ... }`.
func (p *caddyfileParser) introspect() error {
	in := &Introspection{}
	err := p.endpointBlock("introspect", &in.URL, &in.CheckOptions, map[string]*string{
		"client_id": &in.ClientID, "client_secret": &in.ClientSecret, "bearer_token": &in.BearerToken,
	}, nil)
	if err == nil {
		p.h.Introspect = in
	}
	return err
}

// sessionCheck parses `session_check <url> { ... }`.
func (p *caddyfileParser) sessionCheck() error {
	sc := &SessionCheck{}
	err := p.endpointBlock("session_check", &sc.URL, &sc.CheckOptions, map[string]*string{
		"user_header": &sc.UserHeader, "scopes_header": &sc.ScopesHeader,
	}, func(sub, v string) error {
		if !validHeaderName(v) {
			return fmt.Errorf("session_check %s: %q is not a header name", sub, v)
		}
		return nil
	})
	if err == nil {
		p.h.SessionCheck = sc
	}
	return err
}

// endpointBlock parses the URL and block of introspect or session_check
// (opt): the sub-options of one value each in own, with check for their
// values, and those they share (checkOption).
func (p *caddyfileParser) endpointBlock(opt string, url *string, o *CheckOptions, own map[string]*string, check func(sub, v string) error) error {
	d := p.d
	var err error
	if *url, err = oneArg(d); err != nil {
		return err
	}
	if err := checkCheckURL(opt, *url, opt == "introspect"); err != nil {
		return d.WrapErr(err)
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		dst, ok := own[sub]
		if !ok {
			if err := p.checkOption(opt, o); err != nil {
				return err
			}
			continue
		}
		if *dst != "" {
			return d.Errf("%s %s: already specified", opt, sub)
		}
		if *dst, err = oneArgOf(d, opt+" "+sub); err != nil {
			return err
		}
		if check != nil {
			if err := check(sub, *dst); err != nil {
				return d.WrapErr(err)
			}
		}
	}
	return nil
}

// checkOption parses the sub-options that introspect and session_check
// share: `cache <ttl> [<negative_ttl>]`, `timeout <duration>` and
// `tls_trust_pool <module> ...`.
func (p *caddyfileParser) checkOption(opt string, o *CheckOptions) error {
	d := p.d
	sub := d.Val()
	var err error
	switch sub {
	case "tls_trust_pool":
		o.CARaw, err = p.trustPool(opt, o.CARaw)
		return err
	case "cache":
		if o.Cache != nil {
			return d.Errf("%s cache: already specified", opt)
		}
		args := d.RemainingArgs()
		if len(args) < 1 || len(args) > 2 {
			return d.Errf("%s cache: want cache <ttl> [<negative_ttl>]", opt)
		}
		var ds [2]caddy.Duration
		for i, a := range args {
			v, err := caddy.ParseDuration(a)
			if err != nil {
				return d.Errf("%s cache: invalid duration %q", opt, a)
			}
			ds[i] = caddy.Duration(v)
		}
		o.Cache = &ds[0]
		if len(args) == 2 {
			o.NegativeCache = &ds[1]
		}
	case "timeout":
		if o.Timeout != 0 {
			return d.Errf("%s timeout: already specified", opt)
		}
		v, err := oneArgOf(d, opt+" timeout")
		if err != nil {
			return err
		}
		dur, err := caddy.ParseDuration(v)
		if err != nil || dur <= 0 {
			return d.Errf("%s timeout: invalid duration %q", opt, v)
		}
		o.Timeout = caddy.Duration(dur)
	default:
		return d.Errf("%s: unrecognized subdirective '%s'", opt, sub)
	}
	if err := o.check(opt); err != nil {
		return d.WrapErr(err)
	}
	return nil
}

// tokenCache parses `token_cache <entries> [<max_age>]`, or
// `token_cache off`.
func (p *caddyfileParser) tokenCache() error {
	d := p.d
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return d.Errf("token_cache: want token_cache <entries> [<max_age>], or token_cache off")
	}
	tc := &TokenCache{}
	if args[0] == "off" {
		if len(args) > 1 {
			return d.Errf("token_cache off: takes no max_age")
		}
		n := 0
		tc.Entries = &n
	} else {
		n, err := strconv.Atoi(args[0])
		if err != nil {
			return d.Errf("token_cache: want a number of entries, not %q", args[0])
		}
		tc.Entries = &n
	}
	if len(args) == 2 {
		age, err := caddy.ParseDuration(args[1])
		if err != nil {
			return d.Errf("token_cache: invalid duration %q", args[1])
		}
		tc.MaxAge = caddy.Duration(age)
	}
	if err := tc.check(); err != nil {
		return d.WrapErr(err)
	}
	p.h.TokenCache = tc
	return nil
}

func (p *caddyfileParser) jwksFile() error {
	v, err := oneArg(p.d)
	if err != nil {
		return err
	}
	p.h.JWKSFiles = append(p.h.JWKSFiles, v)
	return nil
}

func (p *caddyfileParser) algorithms() error {
	algs, err := values(p.d)
	if err != nil {
		return err
	}
	for _, alg := range algs {
		if err := checkAlgorithm(alg); err != nil {
			return p.d.WrapErr(err)
		}
		if _, dup := p.algTokens[alg]; !dup {
			p.algTokens[alg] = p.d.Token()
		}
	}
	p.h.Algorithms = append(p.h.Algorithms, algs...)
	return nil
}

func (p *caddyfileParser) issuer() error {
	v, err := values(p.d)
	if err != nil {
		return err
	}
	p.h.Issuers = append(p.h.Issuers, v...)
	return nil
}

func (p *caddyfileParser) audience() error {
	v, err := values(p.d)
	if err != nil {
		return err
	}
	p.h.Audiences = append(p.h.Audiences, v...)
	return nil
}

func (p *caddyfileParser) leeway() error {
	v, err := oneArg(p.d)
	if err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return p.d.Errf("leeway: invalid duration %q", v)
	}
	if err := checkLeeway(dur); err != nil {
		return p.d.WrapErr(err)
	}
	p.h.Leeway = caddy.Duration(dur)
	return nil
}

func (p *caddyfileParser) userClaim() error {
	v, err := oneArg(p.d)
	if err != nil {
		return err
	}
	p.h.UserClaim = v
	return nil
}

// maxTokenSize reads a humanized size; 0, which in JSON is the default,
// is refused with the sizes checkMaxTokenSize refuses.
func (p *caddyfileParser) maxTokenSize() error {
	v, err := oneArg(p.d)
	if err != nil {
		return err
	}
	size, err := humanize.ParseBytes(v)
	if err != nil || size == 0 || checkMaxTokenSize(int(size)) != nil {
		return p.d.Errf("max_token_size: invalid size %q (1B to 1MiB)", v)
	}
	p.h.MaxTokenSize = int(size)
	return nil
}

func (p *caddyfileParser) scopes() error {
	scopes, err := values(p.d)
	if err != nil {
		return err
	}
	for _, s := range scopes {
		if err := checkScope(s); err != nil {
			return p.d.WrapErr(err)
		}
	}
	p.h.Scopes = append(p.h.Scopes, scopes...)
	return nil
}

func (p *caddyfileParser) scopeClaim() error {
	v, err := oneArg(p.d)
	if err != nil {
		return err
	}
	p.h.ScopeClaim = v
	return nil
}

func (p *caddyfileParser) allowedOrigins() error {
	origins, err := values(p.d)
	if err != nil {
		return err
	}
	if _, err := compileOrigins(origins); err != nil {
		return p.d.WrapErr(err)
	}
	p.h.AllowedOrigins = append(p.h.AllowedOrigins, origins...)
	return nil
}

func (p *caddyfileParser) allowMissingOrigin() error {
	if err := noArgs(p.d); err != nil {
		return err
	}
	p.h.AllowMissingOrigin = true
	return nil
}

func (p *caddyfileParser) upgradesOnly() error {
	if err := noArgs(p.d); err != nil {
		return err
	}
	p.h.UpgradesOnly = true
	return nil
}

func (p *caddyfileParser) reject() error {
	v, err := oneArg(p.d)
	if err != nil {
		return err
	}
	if err := checkReject(v); err != nil {
		return p.d.WrapErr(err)
	}
	p.h.Reject = v
	return nil
}

// closeCode reads one override; the reason and the code are judged by
// the functions compileCloseCodes uses, and the error shows what was
// written.
func (p *caddyfileParser) closeCode() error {
	d := p.d
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
	if _, dup := p.h.CloseCodes[args[0]]; dup {
		return d.Errf("close_code: %s already specified", args[0])
	}
	if p.h.CloseCodes == nil {
		p.h.CloseCodes = make(map[string]int)
	}
	p.h.CloseCodes[args[0]] = code
	return nil
}

func (p *caddyfileParser) stripToken() error {
	on, err := onOff(p.d)
	if err != nil {
		return err
	}
	p.h.StripToken = &on
	return nil
}

// rateLimit reads `rate_limit <kind> ...` into RateLimits, each kind
// once.
func (p *caddyfileParser) rateLimit() error {
	d := p.d
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.Errf("rate_limit: want handshakes or messages, then <n>/<duration>")
	}
	if p.h.RateLimits == nil {
		p.h.RateLimits = new(RateLimits)
	}
	switch args[0] {
	case "handshakes":
		return p.rateLimitHandshakes(args[1:])
	case "messages":
		return p.rateLimitMessages(args[1:])
	}
	return d.Errf("rate_limit: unknown kind %q (want handshakes or messages)", args[0])
}

// rateLimitHandshakes reads the arguments of `rate_limit handshakes`:
// <n>/<duration> [per ip|user].
func (p *caddyfileParser) rateLimitHandshakes(args []string) error {
	d := p.d
	if p.h.RateLimits.Handshakes != nil {
		return d.Errf("rate_limit handshakes: already specified")
	}
	if len(args) != 1 && len(args) != 3 {
		return d.Errf("rate_limit handshakes: want <n>/<duration> [per ip|user]")
	}
	n, win, err := parseRate(args[0])
	if err != nil {
		return d.Errf("rate_limit handshakes: %v", err)
	}
	hr := &HandshakeRate{Events: n, Window: caddy.Duration(win)}
	if len(args) == 3 {
		if args[1] != "per" || checkRatePer(args[2]) != nil {
			return d.Errf("rate_limit handshakes: want per ip or per user, not %q", strings.Join(args[1:], " "))
		}
		hr.Per = args[2]
	}
	if err := hr.check(); err != nil {
		return d.WrapErr(err)
	}
	p.h.RateLimits.Handshakes = hr
	return nil
}

// rateLimitMessages reads the arguments of `rate_limit messages`:
// <n>/<duration> [per connection|user] [drop|close|notify], the per
// clause and the action each optional, in that order.
func (p *caddyfileParser) rateLimitMessages(args []string) error {
	const usage = "rate_limit messages: want <n>/<duration> [per connection|user] [drop|close|notify]"
	d := p.d
	if p.h.RateLimits.Messages != nil {
		return d.Errf("rate_limit messages: already specified")
	}
	if len(args) == 0 {
		return d.Errf(usage)
	}
	n, win, err := parseRate(args[0])
	if err != nil {
		return d.Errf("rate_limit messages: %v", err)
	}
	mr := &MessageRate{Events: n, Window: caddy.Duration(win)}
	rest := args[1:]
	if len(rest) > 0 && rest[0] == "per" {
		if len(rest) < 2 || checkMessagePer(rest[1]) != nil {
			return d.Errf("rate_limit messages: want per connection or per user, not %q", strings.Join(rest[:min(2, len(rest))], " "))
		}
		mr.Per, rest = rest[1], rest[2:]
	}
	if len(rest) > 0 {
		if err := checkMessageAction(rest[0]); err != nil {
			return d.Errf("rate_limit messages: %v", err)
		}
		mr.Action, rest = rest[0], rest[1:]
	}
	if len(rest) > 0 && rest[0] == "per" {
		return d.Errf("rate_limit messages: %q comes before the action", strings.Join(rest, " "))
	}
	if len(rest) > 0 {
		return d.Errf(usage)
	}
	if err := mr.check(); err != nil {
		return d.WrapErr(err)
	}
	p.h.RateLimits.Messages = mr
	return nil
}

// maxMessageSize reads a humanized size; 0, which in JSON means no
// limit, is refused with the sizes checkMaxMessageSize refuses.
func (p *caddyfileParser) maxMessageSize() error {
	v, err := oneArg(p.d)
	if err != nil {
		return err
	}
	size, err := humanize.ParseBytes(v)
	if err != nil || size == 0 || size > math.MaxInt64 || checkMaxMessageSize(int64(size)) != nil {
		return p.d.Errf("max_message_size: invalid size %q (1B to 1GiB)", v)
	}
	p.h.MaxMessageSize = int64(size)
	return nil
}

func (p *caddyfileParser) blocklistFile() error {
	v, err := oneArg(p.d)
	if err != nil {
		return err
	}
	p.h.BlocklistFile = v
	return nil
}

func (p *caddyfileParser) expireConnections() error {
	on, err := onOff(p.d)
	if err != nil {
		return err
	}
	p.h.ExpireConnections = &on
	return nil
}

func (p *caddyfileParser) revalidate() error {
	v, err := oneArg(p.d)
	if err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return p.d.Errf("revalidate: invalid duration %q", v)
	}
	if err := checkRevalidate(dur); err != nil {
		return p.d.WrapErr(err)
	}
	p.h.Revalidate = caddy.Duration(dur)
	return nil
}

// refreshMessage reads `refresh_message [<type>]`; without a type, the
// type is refresh_token.
func (p *caddyfileParser) refreshMessage() error {
	d := p.d
	typ := defaultRefreshType
	if d.NextArg() {
		typ = d.Val()
		if d.NextArg() {
			return d.Errf("refresh_message: too many arguments")
		}
	}
	if err := checkRefreshType(typ); err != nil {
		return d.WrapErr(err)
	}
	p.h.RefreshMessage = typ
	return nil
}

// maxConnectionsPerUser reads `max_connections_per_user <n>`.
func (p *caddyfileParser) maxConnectionsPerUser() error {
	v, err := oneArg(p.d)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n == 0 {
		return p.d.Errf("max_connections_per_user: want a number of connections from 1, not %q", v)
	}
	if err := checkMaxConnections(n); err != nil {
		return p.d.WrapErr(err)
	}
	p.h.MaxConnectionsPerUser = n
	return nil
}

// blockAfter reads `block_after <n> failures within <duration> for
// <duration>`.
func (p *caddyfileParser) blockAfter() error {
	d := p.d
	args := d.RemainingArgs()
	const want = "want block_after <n> failures within <duration> for <duration>"
	if len(args) != 6 || args[1] != "failures" || args[2] != "within" || args[4] != "for" {
		return d.Errf("%s", want)
	}
	n, err := strconv.Atoi(args[0])
	if err != nil {
		return d.Errf("block_after: want a number of failures, not %q", args[0])
	}
	within, err := caddy.ParseDuration(args[3])
	if err != nil {
		return d.Errf("block_after: invalid duration %q", args[3])
	}
	ban, err := caddy.ParseDuration(args[5])
	if err != nil {
		return d.Errf("block_after: invalid duration %q", args[5])
	}
	ba := &BlockAfter{Failures: n, Within: caddy.Duration(within), For: caddy.Duration(ban)}
	if err := ba.check(); err != nil {
		return d.WrapErr(err)
	}
	p.h.BlockAfter = ba
	return nil
}

// redis parses `redis <url> [<key_prefix>] [{ lease <duration> }]` into
// the ws_auth.stores.redis module.
func (p *caddyfileParser) redis() error {
	d := p.d
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return d.Errf("redis: want redis <url> [<key_prefix>]")
	}
	rs := &RedisStore{URL: args[0]}
	if len(args) == 2 {
		rs.KeyPrefix = args[1]
	}
	var last string
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if sub == "{" && last != "" {
			return d.Errf("redis %s: unexpected block", last)
		}
		last = sub
		if sub != "lease" {
			return d.Errf("redis: unrecognized subdirective '%s'", sub)
		}
		if rs.Lease != 0 {
			return d.Errf("redis lease: already specified")
		}
		v, err := oneArgOf(d, "redis lease")
		if err != nil {
			return err
		}
		dur, err := caddy.ParseDuration(v)
		if err != nil {
			return d.Errf("redis lease: invalid duration %q", v)
		}
		rs.Lease = caddy.Duration(dur)
	}
	if err := rs.check(); err != nil {
		return d.WrapErr(err)
	}
	p.h.StoreRaw = caddyconfig.JSONModuleObject(rs, "module", "redis", nil)
	return nil
}

// checkBlock applies the rules that need the whole block, each error at
// the line that named the value, then checkConfig, at the directive.
func (p *caddyfileParser) checkBlock(directive caddyfile.Token) error {
	h := p.h
	if err := checkCookieOrigins(h.TokenSources, h.AllowedOrigins); err != nil {
		return errAt(*p.cookie, "%v", err)
	}
	// The key sources and algorithms, judged by key type; which
	// algorithms a public_key verifies depends on its file, read at load.
	if err := checkHandlerKeyTypes(h); err != nil {
		if errors.Is(err, errNoKeyConfigured) {
			return errAt(directive, "ws_auth: %v", err)
		}
		if h.Introspect != nil || h.SessionCheck != nil {
			return errAt(directive, "%v", err)
		}
		for _, alg := range h.Algorithms {
			if err := checkKeyTypes(len(h.Secrets), len(h.PublicKeys), len(h.JWKS)+len(h.JWKSFiles), []string{alg}); err != nil {
				return errAt(p.algTokens[alg], "%v", err)
			}
		}
		return errAt(directive, "%v", err)
	}
	if err := h.checkConfig(); err != nil {
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

// parseTokenSource reads the arguments of a token_source; its values are
// judged by checkTokenSources.
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
			// 0, the default in JSON, is no timeout to write; the bound
			// is checkTokenSource's.
			dur, err := caddy.ParseDuration(rest[1])
			if err != nil || dur <= 0 {
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
	return ts, nil
}

// values returns the arguments of an option that takes one or more
// non-empty values.
func values(d *caddyfile.Dispenser) ([]string, error) {
	opt := d.Val()
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.Errf("%s: needs at least one value", opt)
	}
	for _, a := range args {
		if a == "" {
			return nil, d.Errf("%s: empty value", opt)
		}
	}
	return args, nil
}

// onOff returns the value of an option that is on or off.
func onOff(d *caddyfile.Dispenser) (bool, error) {
	opt := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return false, err
	}
	switch v {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	return false, d.Errf("%s: must be on or off, not %q", opt, v)
}

// noArgs refuses arguments to a flag option.
func noArgs(d *caddyfile.Dispenser) error {
	if opt := d.Val(); d.NextArg() {
		return d.Errf("%s: takes no arguments", opt)
	}
	return nil
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
