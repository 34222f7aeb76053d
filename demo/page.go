package demo

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Page{})
}

// pageHTML is the demo page. It is self-contained: its CSS and JavaScript
// are inline and it loads nothing from elsewhere. The markers __LOGIN_PATH__
// and __WS_PATH__ are replaced, HTML-escaped, at provision time.
//
//go:embed page.html
var pageHTML string

// Page serves the demo's browser page (module http.handlers.ws_demo_page).
//
// The page logs in through a ws_demo_login endpoint, opens the WebSocket
// protected by ws_auth with the token in the query string or in the
// Sec-WebSocket-Protocol header, and shows every message and every close code
// with its meaning. One-click buttons try a valid, an expired, an
// under-scoped, a missing and a forged token.
//
// It answers GET and HEAD; other methods get 405. The response forbids any
// resource that is not inline in the page (Content-Security-Policy).
type Page struct {
	// Path of the ws_demo_login endpoint the page posts to, on the same
	// host. Default: /login
	LoginPath string `json:"login_path,omitempty"`

	// Path of the WebSocket endpoint protected by ws_auth, on the same
	// host; the page picks ws: or wss: to match its own scheme.
	// Default: /ws
	WebSocketPath string `json:"websocket_path,omitempty"`

	// Where people open the page, e.g. http://localhost:8080/. When set,
	// it is logged at INFO level when the module is provisioned ("demo:
	// open <url>"), so that whoever starts Caddy sees where to go. It must
	// be an absolute http or https URL. Default: no such line.
	URL string `json:"url,omitempty"`

	body []byte
	csp  string
}

// CaddyModule returns the Caddy module information.
func (Page) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.ws_demo_page",
		New: func() caddy.Module { return new(Page) },
	}
}

// Provision renders the page once, computes its Content-Security-Policy
// and logs where to open it.
func (p *Page) Provision(ctx caddy.Context) error {
	if p.LoginPath == "" {
		p.LoginPath = "/login"
	}
	if p.WebSocketPath == "" {
		p.WebSocketPath = "/ws"
	}
	body := strings.NewReplacer(
		"__LOGIN_PATH__", html.EscapeString(p.LoginPath),
		"__WS_PATH__", html.EscapeString(p.WebSocketPath),
	).Replace(pageHTML)

	// Allow exactly the inline script and style of this page, by hash, so
	// nothing injected and nothing external can run or load.
	script, err := inlineBlock(body, "script")
	if err != nil {
		return err
	}
	style, err := inlineBlock(body, "style")
	if err != nil {
		return err
	}
	p.csp = "default-src 'none'; " +
		"script-src '" + sha256Source(script) + "'; " +
		"style-src '" + sha256Source(style) + "'; " +
		"connect-src 'self' ws: wss:; " +
		"img-src data:; " +
		"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
	p.body = []byte(body)
	if p.URL != "" {
		ctx.Logger().Info("demo: open "+p.URL, zap.String("url", p.URL))
	}
	return nil
}

// Validate checks that both paths are absolute and that the URL, if any, is
// an absolute http or https URL.
func (p *Page) Validate() error {
	if !strings.HasPrefix(p.LoginPath, "/") {
		return fmt.Errorf("login_path must start with '/': %q", p.LoginPath)
	}
	if !strings.HasPrefix(p.WebSocketPath, "/") {
		return fmt.Errorf("websocket_path must start with '/': %q", p.WebSocketPath)
	}
	if p.URL != "" {
		return checkPageURL(p.URL)
	}
	return nil
}

// checkPageURL is the rule for the page's url.
func checkPageURL(v string) error {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("url must be an absolute http or https URL: %q", v)
	}
	return nil
}

// ServeHTTP serves the page. It never calls the next handler.
func (p *Page) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed", r.Method))
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(p.body)))
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", p.csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	_, err := w.Write(p.body)
	return err
}

// inlineBlock returns the text between <tag> and </tag>, which must occur
// exactly once in body.
func inlineBlock(body, tag string) (string, error) {
	open, end := "<"+tag+">", "</"+tag+">"
	if strings.Count(body, open) != 1 || strings.Count(body, end) != 1 {
		return "", fmt.Errorf("embedded page must have exactly one inline <%s> block", tag)
	}
	_, rest, _ := strings.Cut(body, open)
	text, _, _ := strings.Cut(rest, end)
	return text, nil
}

// sha256Source returns the CSP hash source of an inline block.
func sha256Source(text string) string {
	sum := sha256.Sum256([]byte(text))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Page)(nil)
	_ caddy.Validator             = (*Page)(nil)
	_ caddyhttp.MiddlewareHandler = (*Page)(nil)
	_ caddyfile.Unmarshaler       = (*Page)(nil)
)
