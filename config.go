package wsauth

import (
	"fmt"
	"net/url"
	"strings"
	"time"
)

// checkConfig applies every rule that the configuration alone decides,
// and has no side effects: it reads no file, resolves no placeholder and
// fetches nothing. Provision runs it first, so that a bad value is refused
// before a key set is fetched, a blocklist watched or a rate limiter
// shared; the Caddyfile parser runs it last, as a net under the rules it
// applies option by option (with their line) through the same functions.
//
// What depends on the machine Caddy runs on is judged at load: key files,
// secret values and placeholders ({env.NAME} in a secret or a jwks URL),
// the blocklist file.
func (h *Handler) checkConfig() error {
	if err := checkTokenSources(h.TokenSources); err != nil {
		return err
	}
	if err := checkCookieOrigins(h.TokenSources, h.AllowedOrigins); err != nil {
		return err
	}
	for _, alg := range h.Algorithms {
		if err := checkAlgorithm(alg); err != nil {
			return err
		}
	}
	if err := checkHandlerKeyTypes(h); err != nil {
		return err
	}
	for _, src := range h.JWKS {
		if err := checkJWKSSource(src); err != nil {
			return err
		}
	}
	if h.TokenCache != nil {
		if err := h.TokenCache.check(); err != nil {
			return err
		}
	}
	for _, src := range h.OIDC {
		if err := checkOIDCSource(src); err != nil {
			return err
		}
	}
	if err := checkLeeway(time.Duration(h.Leeway)); err != nil {
		return err
	}
	if err := checkMaxTokenSize(h.MaxTokenSize); err != nil {
		return err
	}
	for _, s := range h.Scopes {
		if err := checkScope(s); err != nil {
			return err
		}
	}
	if _, err := compileOrigins(h.AllowedOrigins); err != nil {
		return err
	}
	if err := checkReject(h.Reject); err != nil {
		return err
	}
	// The rule is compileCloseCodes' own, run on a scratch handler so
	// that h is left as it was.
	scratch := Handler{CloseCodes: h.CloseCodes}
	if err := scratch.compileCloseCodes(); err != nil {
		return err
	}
	if h.RateLimits != nil {
		if err := h.RateLimits.check(); err != nil {
			return err
		}
	}
	if err := checkMaxConnections(h.MaxConnectionsPerUser); err != nil {
		return err
	}
	if h.BlockAfter != nil {
		if err := h.BlockAfter.check(); err != nil {
			return err
		}
	}
	if err := checkRevalidate(time.Duration(h.Revalidate)); err != nil {
		return err
	}
	if err := checkMaxMessageSize(h.MaxMessageSize); err != nil {
		return err
	}
	if h.RefreshMessage != "" {
		if err := checkRefreshType(h.RefreshMessage); err != nil {
			return err
		}
	}
	return nil
}

// checkTokenSources applies checkTokenSource to each source, and allows
// first_message once.
func checkTokenSources(sources []TokenSource) error {
	firstMessage := false
	for _, s := range sources {
		if err := checkTokenSource(s); err != nil {
			return err
		}
		if s.Source == "first_message" {
			if firstMessage {
				return fmt.Errorf("token_source first_message: already specified")
			}
			firstMessage = true
		}
	}
	return nil
}

// checkCookieOrigins is the rule that a cookie source comes with an Origin
// check: a cookie rides along with any cross-site WebSocket, so without
// one every page on the web could connect as the user.
func checkCookieOrigins(sources []TokenSource, origins []string) error {
	if len(origins) > 0 {
		return nil
	}
	for _, s := range sources {
		if s.Source == "cookie" {
			return fmt.Errorf("token_source cookie: requires allowed_origins (cross-site WebSocket hijacking)")
		}
	}
	return nil
}

// checkAlgorithm is the rule for a name in the algorithms allow-list:
// one that golang-jwt knows, or Ed25519 (signingMethod), and never "none".
func checkAlgorithm(alg string) error {
	if strings.EqualFold(alg, "none") {
		return fmt.Errorf("algorithms: 'none' is never accepted")
	}
	if signingMethod(alg) == nil {
		return fmt.Errorf("algorithms: unknown algorithm %q", alg)
	}
	return nil
}

// checkJWKSSource applies the rules of a remote key set: a URL
// (checkJWKSURL, unless it holds a placeholder, which is judged at load
// with its value), and a refresh and timeout within bounds when set.
func checkJWKSSource(src *JWKSSource) error {
	if src == nil || src.URL == "" {
		return fmt.Errorf("jwks: missing URL")
	}
	if !strings.Contains(src.URL, "{") {
		if _, err := checkJWKSURL(src.URL); err != nil {
			return err
		}
	}
	name := jwksName(src.URL)
	if src.Refresh != 0 {
		if err := checkJWKSRefresh(time.Duration(src.Refresh)); err != nil {
			return fmt.Errorf("%s refresh: %v", name, err)
		}
	}
	if src.Timeout != 0 {
		if err := checkJWKSTimeout(time.Duration(src.Timeout)); err != nil {
			return fmt.Errorf("%s timeout: %v", name, err)
		}
	}
	return nil
}

// jwksName names a key set in an error: "jwks" and its URL without
// credentials or query, when it has a host.
func jwksName(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Host != "" {
		return "jwks " + redactURL(u)
	}
	return "jwks"
}

// shownJWKS names a configured key set URL that may not parse in an
// error: "jwks" and the URL without what may be a credential (a query, a
// fragment, a user and password).
func shownJWKS(raw string) string {
	if raw == "" {
		return "jwks"
	}
	s, _, _ := strings.Cut(raw, "?")
	s, _, _ = strings.Cut(s, "#")
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		scheme, rest = "", s
	}
	end := strings.IndexByte(rest, '/')
	if end < 0 {
		end = len(rest)
	}
	if at := strings.LastIndexByte(rest[:end], '@'); at >= 0 {
		rest = rest[at+1:]
	}
	if ok {
		rest = scheme + "://" + rest
	}
	return "jwks " + truncate(rest, 200)
}

// maxLeeway bounds leeway: beyond an hour of clock skew, exp no longer
// means much.
const maxLeeway = time.Hour

// checkLeeway is the rule for leeway.
func checkLeeway(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("leeway: must not be negative")
	}
	if d > maxLeeway {
		return fmt.Errorf("leeway: must be at most %s (a longer leeway makes exp meaningless)", maxLeeway)
	}
	return nil
}

// checkMaxTokenSize is the rule for max_token_size; 0 is the default.
func checkMaxTokenSize(n int) error {
	if n < 0 || n > maxMaxTokenSize {
		return fmt.Errorf("max_token_size: must be between 1 byte and 1MiB")
	}
	return nil
}

// checkScope is the rule for a required scope: a word, since granted
// scopes are split on spaces.
func checkScope(s string) error {
	if s == "" || strings.ContainsAny(s, " \t") {
		return fmt.Errorf("scopes: invalid scope %q", s)
	}
	return nil
}

// checkReject is the rule for reject; "" is the default, close.
func checkReject(v string) error {
	if v != "" && v != "close" && v != "status" {
		return fmt.Errorf("reject: must be close or status, not %q", v)
	}
	return nil
}

const (
	// minRevalidate and maxRevalidate bound revalidate: more often than
	// every second costs a scan of every live connection for little, and
	// less often than daily is hardly a check.
	minRevalidate = time.Second
	maxRevalidate = 24 * time.Hour
)

// checkRevalidate is the rule for revalidate; 0 is the default, only when
// the blocklist changes.
func checkRevalidate(d time.Duration) error {
	if d != 0 && (d < minRevalidate || d > maxRevalidate) {
		return fmt.Errorf("revalidate: must be 0 (only when the blocklist changes) or between %s and %s", minRevalidate, maxRevalidate)
	}
	return nil
}

// maxMaxMessageSize bounds max_message_size.
const maxMaxMessageSize = 1 << 30

// checkMaxMessageSize is the rule for max_message_size; 0 is the default,
// no limit.
func checkMaxMessageSize(n int64) error {
	if n < 0 || n > maxMaxMessageSize {
		return fmt.Errorf("max_message_size: must be between 1 byte and 1GiB")
	}
	return nil
}

const (
	// defaultRefreshType is the type of a refresh message when the
	// Caddyfile's refresh_message names none.
	defaultRefreshType = "refresh_token"
	// maxRefreshTypeLen bounds the type of a refresh message.
	maxRefreshTypeLen = 64
)

// checkRefreshType is the rule for the type of a refresh message: 1 to 64
// printable ASCII characters, without `"` or `\`, so that the type reads
// the same in a JSON message as in the config and can be matched there as
// written.
func checkRefreshType(typ string) error {
	ok := typ != "" && len(typ) <= maxRefreshTypeLen
	for i := 0; ok && i < len(typ); i++ {
		c := typ[i]
		ok = c >= 0x20 && c <= 0x7e && c != '"' && c != '\\'
	}
	if !ok {
		return fmt.Errorf("refresh_message: type must be 1 to %d printable ASCII characters, without '\"' or '\\', not %q", maxRefreshTypeLen, typ)
	}
	return nil
}
