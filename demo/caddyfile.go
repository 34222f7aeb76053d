package demo

import (
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	// All three answer requests themselves, so they sit with the other
	// responding handlers.
	httpcaddyfile.RegisterHandlerDirective("ws_demo_page", parsePage)
	httpcaddyfile.RegisterDirectiveOrder("ws_demo_page", httpcaddyfile.Before, "respond")
	httpcaddyfile.RegisterHandlerDirective("ws_demo_login", parseLogin)
	httpcaddyfile.RegisterDirectiveOrder("ws_demo_login", httpcaddyfile.Before, "respond")
	httpcaddyfile.RegisterHandlerDirective("ws_demo_echo", parseEcho)
	httpcaddyfile.RegisterDirectiveOrder("ws_demo_echo", httpcaddyfile.Before, "respond")
}

func parsePage(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	p := new(Page)
	err := p.UnmarshalCaddyfile(h.Dispenser)
	return p, err
}

func parseLogin(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	l := new(Login)
	err := l.UnmarshalCaddyfile(h.Dispenser)
	return l, err
}

func parseEcho(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	e := new(Echo)
	err := e.UnmarshalCaddyfile(h.Dispenser)
	return e, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	ws_demo_page [<matcher>] {
//	    login_path <path>       # default /login
//	    websocket_path <path>   # default /ws
//	    url <url>               # logged at start: "demo: open <url>"
//	}
func (p *Page) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "login_path":
			if p.LoginPath != "" {
				return d.Errf("login_path already specified: %s", p.LoginPath)
			}
			v, err := pathArg(d)
			if err != nil {
				return err
			}
			p.LoginPath = v
		case "websocket_path":
			if p.WebSocketPath != "" {
				return d.Errf("websocket_path already specified: %s", p.WebSocketPath)
			}
			v, err := pathArg(d)
			if err != nil {
				return err
			}
			p.WebSocketPath = v
		case "url":
			if p.URL != "" {
				return d.Errf("url already specified: %s", p.URL)
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			v := d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			if err := checkPageURL(v); err != nil {
				return d.Err(err.Error())
			}
			p.URL = v
		default:
			return d.Errf("unrecognized subdirective '%s'", d.Val())
		}
	}
	return nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	ws_demo_login [<matcher>] {
//	    secret <value>      # required; placeholders and "base64:<...>" work
//	    issuer <iss>        # optional iss claim
//	    audience <aud>      # optional aud claim
//	}
func (l *Login) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var dst *string
		switch d.Val() {
		case "secret":
			dst = &l.Secret
		case "issuer":
			dst = &l.Issuer
		case "audience":
			dst = &l.Audience
		default:
			return d.Errf("unrecognized subdirective '%s'", d.Val())
		}
		name := d.Val()
		if *dst != "" {
			// the secret's value is not repeated in the error
			return d.Errf("%s already specified", name)
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		v := d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		if v == "" {
			return d.Errf("%s must not be empty", name)
		}
		*dst = v
	}
	if l.Secret == "" {
		return d.Err("ws_demo_login requires a secret")
	}
	return nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	ws_demo_echo [<matcher>] {
//	    idle_timeout <duration>   # default 1m
//	}
func (e *Echo) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "idle_timeout":
			if e.IdleTimeout != 0 {
				return d.Errf("idle_timeout already specified: %v", time.Duration(e.IdleTimeout))
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return d.Errf("parsing idle_timeout: %v", err)
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			if dur <= 0 {
				return d.Errf("idle_timeout must be positive: %s", d.Val())
			}
			e.IdleTimeout = caddy.Duration(dur)
		default:
			return d.Errf("unrecognized subdirective '%s'", d.Val())
		}
	}
	return nil
}

// pathArg reads the one argument of the current subdirective, which must be
// an absolute path.
func pathArg(d *caddyfile.Dispenser) (string, error) {
	name := d.Val()
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	if !strings.HasPrefix(v, "/") {
		return "", d.Errf("%s must start with '/': %s", name, v)
	}
	return v, nil
}
