package wsauth

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/caddyserver/caddy/v2"
)

// Opaque credentials: tokens that only their authorization server can
// judge (introspect, RFC 7662) and an app's own sessions (session_check).
// The server's answer takes a JWT's place: its members are the claims,
// checked by the same code (checkClaims), and from there on an opaque
// credential is an identity like any other (blocklist, scopes, limits,
// placeholders, live rules). Answers are cached, bounded, under a keyed
// digest of the credential; concurrent checks of one credential share one
// call; with revalidate, live connections are checked again (recheck.go).

// Introspection asks an RFC 7662 token introspection endpoint about each
// token: `active: false` refuses it as invalid; an active token's members
// (sub, scope, exp, aud, iss, client_id, ...) are its claims, checked as a
// JWT's are (issuer, audience, scopes, user_claim; exp when the answer has
// one) and served as placeholders.
type Introspection struct {
	// The introspection endpoint: https, or http to this machine.
	URL string `json:"url"`

	// Client authentication by HTTP Basic (RFC 6749, section 2.3.1).
	// Placeholders such as {env.INTROSPECT_SECRET} are replaced at load.
	ClientID     string `json:"client_id,omitempty"`
	ClientSecret string `json:"client_secret,omitempty"`

	// A bearer token to authenticate with instead of client_id and
	// client_secret (placeholders work).
	BearerToken string `json:"bearer_token,omitempty"`

	CheckOptions
}

// SessionCheck asks an app's own endpoint about each credential, as
// forward_auth asks: a GET with the credential as the client sent it (the
// cookie of a cookie source, the header of a header source, else
// `Authorization: Bearer`). 2xx: valid, the user and the scopes taken from
// the response headers, or from the members of a JSON body (read as
// claims); 401 or 403: invalid; any other status, a timeout or a
// connection error: unavailable.
type SessionCheck struct {
	// The app's endpoint; http or https.
	URL string `json:"url"`

	// The response header naming the user. Default: X-User.
	UserHeader string `json:"user_header,omitempty"`

	// The response header with the granted scopes, space-separated.
	// Default: X-Scopes.
	ScopesHeader string `json:"scopes_header,omitempty"`

	CheckOptions
}

// CheckOptions are what introspect and session_check share: the cache of
// answers, the timeout and the trust of the endpoint.
type CheckOptions struct {
	// How long an active answer is reused, at most: a credential with an
	// exp is not reused past it. Default: 1m; 0 asks every time.
	Cache *caddy.Duration `json:"cache,omitempty"`

	// How long a refusal (inactive, 401, 403) is reused, so that a flood
	// of one bad credential makes one call per period. Default: 5s; 0
	// asks every time.
	NegativeCache *caddy.Duration `json:"negative_cache,omitempty"`

	// Time allowed for one call, waiting for a free connection included.
	// Default: 5s; at most 1m.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// The certificate authorities the endpoint's certificate must chain
	// to, as jwks's tls_trust_pool. Default: the system's trust store.
	CARaw json.RawMessage `json:"tls_trust_pool,omitempty" caddy:"namespace=tls.ca_pool.source inline_key=provider"`
}

const (
	defaultAnswerTTL    = time.Minute
	defaultNegativeTTL  = 5 * time.Second
	maxAnswerTTL        = 24 * time.Hour
	defaultCheckTimeout = 5 * time.Second
	maxCheckTimeout     = time.Minute
	// maxAnswerBody bounds an endpoint's answer; real ones are under a KiB.
	maxAnswerBody = 64 << 10
	// maxAnswerHeaders bounds an answer's headers (net/http's default is
	// 1 MiB).
	maxAnswerHeaders = 64 << 10
	// maxCallsInFlight bounds the calls one handler has open at once; a
	// handshake that finds them all busy waits, within the timeout.
	maxCallsInFlight = 128
	// Bounds of the cache of answers: entries, and bytes with the answers'
	// claims.
	maxAnswerEntries = 10000
	maxAnswerBytes   = 16 << 20
	answerOverhead   = 512
)

// check applies the rules shared by introspect and session_check; name
// says which, for the errors.
func (o *CheckOptions) check(name string) error {
	for _, d := range []struct {
		what string
		v    *caddy.Duration
	}{{"cache", o.Cache}, {"negative cache", o.NegativeCache}} {
		if d.v != nil && (*d.v < 0 || time.Duration(*d.v) > maxAnswerTTL) {
			return fmt.Errorf("%s %s: must be between 0 (off) and %s", name, d.what, maxAnswerTTL)
		}
	}
	if t := time.Duration(o.Timeout); t < 0 || t > maxCheckTimeout {
		return fmt.Errorf("%s timeout: must be positive and at most %s", name, maxCheckTimeout)
	}
	return nil
}

// checkOpaque applies the rules of introspect and session_check, and that
// a handler judges one kind of credential: JWTs with keys, or opaque ones
// with one endpoint.
func (h *Handler) checkOpaque() error {
	if h.Introspect == nil && h.SessionCheck == nil {
		return nil
	}
	if h.Introspect != nil && h.SessionCheck != nil {
		return errors.New("introspect and session_check: choose one")
	}
	name := "introspect"
	if h.SessionCheck != nil {
		name = "session_check"
	}
	if len(h.Secrets)+len(h.PublicKeys)+len(h.JWKS)+len(h.OIDC)+len(h.JWKSFiles) > 0 {
		return fmt.Errorf("%s: takes the place of secret, public_key, jwks, oidc and jwks_file: use one or the other", name)
	}
	if len(h.Algorithms) > 0 {
		return fmt.Errorf("algorithms: apply to JWTs, not to %s", name)
	}
	if h.TokenCache != nil {
		return fmt.Errorf("token_cache: applies to JWTs; %s has its own cache", name)
	}
	if in := h.Introspect; in != nil {
		if err := checkCheckURL(name, in.URL, true); err != nil {
			return err
		}
		if in.BearerToken != "" && (in.ClientID != "" || in.ClientSecret != "") {
			return errors.New("introspect: bearer_token or client_id and client_secret, not both")
		}
		if (in.ClientID == "") != (in.ClientSecret == "") {
			return errors.New("introspect: client_id and client_secret go together")
		}
		return in.check(name)
	}
	sc := h.SessionCheck
	if err := checkCheckURL(name, sc.URL, false); err != nil {
		return err
	}
	for _, hdr := range []string{sc.UserHeader, sc.ScopesHeader} {
		if hdr != "" && !validHeaderName(hdr) {
			return fmt.Errorf("session_check: %q is not a header name", hdr)
		}
	}
	return sc.check(name)
}

// checkCheckURL is the rule of an endpoint's URL: absolute, without
// credentials or a fragment, and, for introspection (which carries tokens
// and the client's secret), https or http to this machine. An app's
// session endpoint may be plain http, as reverse_proxy and forward_auth
// reach apps. A URL with a placeholder is judged at load.
func checkCheckURL(name, raw string, httpsOnly bool) error {
	if raw == "" {
		return fmt.Errorf("%s: missing URL", name)
	}
	if strings.Contains(raw, "{") {
		return nil
	}
	_, err := parseCheckURL(name, raw, httpsOnly)
	return err
}

func parseCheckURL(name, raw string, httpsOnly bool) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("%s %s: not an http(s) URL", name, shownJWKS(raw))
	}
	if u.User != nil || u.Fragment != "" {
		return nil, fmt.Errorf("%s %s: a URL without credentials or fragment", name, redactURL(u))
	}
	if httpsOnly {
		if err := checkFetchURL(u); err != nil {
			return nil, fmt.Errorf("%s %s: %v", name, redactURL(u), err)
		}
	}
	return u, nil
}

func validHeaderName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '-' || c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return s != ""
}

// A credKey is a credential's name in the cache and among the calls in
// flight: an HMAC of it under a key of the checker's own, so that neither
// tells the credential.
type credKey [sha256.Size]byte

// A checker asks one endpoint about credentials, for one handler.
type checker struct {
	name    string // introspect or session_check
	shown   string // the URL as logs show it
	url     string
	client  *http.Client
	timeout time.Duration
	ttl     time.Duration
	negTTL  time.Duration

	// introspect: the Authorization header of each call; session_check:
	// the headers the answer comes in.
	auth         string
	session      bool
	userHeader   string
	scopesHeader string

	macKey   []byte
	macs     sync.Pool // of HMAC-SHA256 under macKey
	calls    singleflight.Group
	inflight chan struct{}
	cache    answerCache
}

// An answer is an endpoint's judgement of a credential, as a handshake
// uses it: the identity it makes (claims checked), or the refusal.
type answer struct {
	id    identity
	ref   *refusal // nil: active
	until int64    // unix ns: reused until then
	size  int
}

// newChecker loads the handler's introspect or session_check.
func newChecker(ctx caddy.Context, h *Handler) (*checker, error) {
	repl := caddy.NewReplacer()
	var opts *CheckOptions
	var raw string
	c := &checker{macKey: make([]byte, 32), inflight: make(chan struct{}, maxCallsInFlight)}
	if _, err := rand.Read(c.macKey); err != nil {
		return nil, err
	}
	c.macs.New = func() any { return hmac.New(sha256.New, c.macKey) }
	if in := h.Introspect; in != nil {
		c.name, opts, raw = "introspect", &in.CheckOptions, in.URL
		switch {
		case in.BearerToken != "":
			tok, err := replaceCredential(repl, "introspect bearer_token", in.BearerToken)
			if err != nil {
				return nil, err
			}
			c.auth = "Bearer " + tok
		case in.ClientID != "":
			id, err := replaceCredential(repl, "introspect client_id", in.ClientID)
			if err != nil {
				return nil, err
			}
			secret, err := replaceCredential(repl, "introspect client_secret", in.ClientSecret)
			if err != nil {
				return nil, err
			}
			// RFC 6749, section 2.3.1: both form-encoded, then Basic.
			c.auth = "Basic " + base64.StdEncoding.EncodeToString(
				[]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
		}
	} else {
		sc := h.SessionCheck
		c.name, opts, raw, c.session = "session_check", &sc.CheckOptions, sc.URL, true
		c.userHeader = http.CanonicalHeaderKey(cmpOr(sc.UserHeader, "X-User"))
		c.scopesHeader = http.CanonicalHeaderKey(cmpOr(sc.ScopesHeader, "X-Scopes"))
	}
	resolved := repl.ReplaceKnown(raw, "")
	u, err := parseCheckURL(c.name, resolved, !c.session)
	if err != nil {
		return nil, err
	}
	c.url, c.shown = u.String(), redactURL(u)
	c.ttl, c.negTTL, c.timeout = defaultAnswerTTL, defaultNegativeTTL, defaultCheckTimeout
	if opts.Cache != nil {
		c.ttl = time.Duration(*opts.Cache)
	}
	if opts.NegativeCache != nil {
		c.negTTL = time.Duration(*opts.NegativeCache)
	}
	if opts.Timeout != 0 {
		c.timeout = time.Duration(opts.Timeout)
	}
	var trust *trustPool
	if opts.CARaw != nil {
		trust, err = loadTrustPool(ctx, opts, opts.CARaw, c.name+" "+c.shown)
		if err != nil {
			return nil, err
		}
	}
	c.client = checkClient(trust)
	c.cache.entries = make(map[credKey]*answer)
	return c, nil
}

// replaceCredential resolves the placeholders of a configured credential;
// one left unknown (an unset environment variable) is an error that names
// the option, not the value.
func replaceCredential(repl *caddy.Replacer, opt, v string) (string, error) {
	out := repl.ReplaceKnown(v, "")
	if out == "" || unknownPlaceholder.MatchString(out) {
		return "", fmt.Errorf("%s: empty once its placeholders are replaced (is the environment variable set?)", opt)
	}
	return out, nil
}

// checkClient is the HTTP client of an endpoint: connections kept for the
// calls in flight, redirects not followed (an answer is the endpoint's
// own), and with trust only those CAs.
func checkClient(trust *trustPool) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = maxCallsInFlight
	t.MaxResponseHeaderBytes = maxAnswerHeaders
	if trust != nil {
		t.TLSClientConfig = &tls.Config{RootCAs: trust.pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{
		Transport:     t,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// close lets the idle connections go.
func (c *checker) close() { c.client.CloseIdleConnections() }

// key names a credential as read from a source (nil: a refresh message's
// token, sent as a bearer token).
func (c *checker) key(cred string, from *tokenSource) credKey {
	m := c.macs.Get().(hash.Hash)
	defer c.macs.Put(m)
	m.Reset()
	if from != nil && c.session {
		// A session endpoint sees where the credential came from.
		m.Write([]byte{byte(from.kind)})
		m.Write([]byte(from.name))
		m.Write([]byte{0})
	}
	m.Write([]byte(cred))
	var k credKey
	m.Sum(k[:0])
	return k
}

// verifyOpaque judges an opaque credential: from the cache when its answer
// is there and fresh, else by the endpoint (one call for every concurrent
// handshake with the credential).
func (h *Handler) verifyOpaque(cred string, id *identity) *refusal {
	c := h.opaque
	k := c.key(cred, id.from)
	a := c.cache.get(k, now().UnixNano())
	if a != nil {
		wsMetrics.credentialCheck(c.name, "cached")
	} else {
		a = h.ask(cred, id.from, k, false)
	}
	return a.apply(id, time.Duration(h.Leeway))
}

// ask calls the endpoint, or waits for the call already asking about k,
// and caches what it answers. A fresh ask (revalidate's) takes no answer
// from the cache, and shares a call only with other fresh asks.
func (h *Handler) ask(cred string, from *tokenSource, k credKey, fresh bool) *answer {
	c := h.opaque
	name := string(k[:])
	if fresh {
		name = "fresh:" + name
	}
	v, _, _ := c.calls.Do(name, func() (any, error) {
		// A call that ended between this handshake's cache lookup and
		// here has left its answer.
		if !fresh {
			if a := c.cache.get(k, now().UnixNano()); a != nil {
				return a, nil
			}
		}
		a := h.call(cred, from)
		c.cache.put(k, a, c.ttl, c.negTTL)
		return a, nil
	})
	return v.(*answer)
}

// apply fills id from an active answer and checks its times, or returns
// the refusal the answer is.
func (a *answer) apply(id *identity, leeway time.Duration) *refusal {
	if a.ref != nil {
		return a.ref
	}
	from := id.from
	*id = a.id
	id.from = from
	if rsn, err := id.claims.checkValidity(now(), leeway); err != nil {
		return &refusal{reason: rsn, detail: err}
	}
	return nil
}

// call asks the endpoint about cred, within the timeout, and makes an
// answer of what it says.
func (h *Handler) call(cred string, from *tokenSource) *answer {
	c := h.opaque
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	select {
	case c.inflight <- struct{}{}:
		defer func() { <-c.inflight }()
	case <-ctx.Done():
		return c.unavailable(errBusy)
	}
	req, err := c.request(ctx, cred, from)
	if err != nil {
		// The credential cannot be sent (a byte no header may hold):
		// it is no credential the endpoint issued.
		wsMetrics.credentialCheck(c.name, "invalid")
		return &answer{ref: &refusal{reason: reasonInvalid, detail: errUnsendable}}
	}
	resp, err := c.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which the message names as shown
		}
		return c.unavailable(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBody+1))
	if err != nil {
		return c.unavailable(err)
	}
	if len(body) > maxAnswerBody {
		return c.unavailable(errAnswerTooLarge)
	}
	var a *answer
	if c.session {
		a = h.sessionAnswer(resp, body)
	} else {
		a = h.introspectionAnswer(resp, body)
	}
	if a.ref != nil && a.ref.reason == reasonUnavailable {
		return a
	}
	result := "active"
	if a.ref != nil {
		result = "refused"
	}
	wsMetrics.credentialCheck(c.name, result)
	// The body, its base64 copy for the claims' placeholders, and what
	// the claims hold once decoded; a session's headers are bounded by
	// the transport (maxAnswerHeaders).
	a.size = answerOverhead + 3*len(body)
	if c.session {
		a.size += len(a.id.user) + len(a.id.granted.str)
	}
	return a
}

// request is the call that asks about cred.
func (c *checker) request(ctx context.Context, cred string, from *tokenSource) (*http.Request, error) {
	if !c.session {
		form := "token=" + url.QueryEscape(cred) + "&token_type_hint=access_token"
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, strings.NewReader(form))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Accept", "application/json")
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		return req, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return nil, err
	}
	switch {
	case from != nil && from.kind == sourceCookie:
		req.Header.Set("Cookie", from.name+"="+cred)
	case from != nil && from.kind == sourceHeader:
		v := cred
		if from.scheme != "" {
			v = from.scheme + " " + cred
		}
		req.Header.Set(from.name, v)
	default:
		req.Header.Set("Authorization", "Bearer "+cred)
	}
	for _, vs := range req.Header {
		for _, v := range vs {
			if !validHeaderValue(v) {
				return nil, errUnsendable
			}
		}
	}
	return req, nil
}

// validHeaderValue reports whether v may be sent as a header value: no
// control bytes but tab (RFC 9110, section 5.5).
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// introspectionAnswer reads an RFC 7662 response: 200 with a JSON object
// whose "active" is true or false.
func (h *Handler) introspectionAnswer(resp *http.Response, body []byte) *answer {
	c := h.opaque
	if resp.StatusCode != http.StatusOK {
		// Most often our own client authentication refused (401).
		return c.unavailable(fmt.Errorf("status %d", resp.StatusCode))
	}
	active, seen := false, false
	err := strictObject(body, func(name, v []byte) error {
		if string(name) == "active" {
			seen = true
			active = string(v) == "true"
		}
		return nil
	})
	if err != nil || !seen {
		return c.unavailable(errNotIntrospection)
	}
	if !active {
		return &answer{ref: &refusal{reason: reasonInvalid, detail: errInactive}}
	}
	return h.activeAnswer(body, "", "", false)
}

// sessionAnswer reads an app's answer: the status judges, the headers
// (or a JSON body) say who it is.
func (h *Handler) sessionAnswer(resp *http.Response, body []byte) *answer {
	c := h.opaque
	switch s := resp.StatusCode; {
	case s == http.StatusUnauthorized || s == http.StatusForbidden:
		return &answer{ref: &refusal{reason: reasonInvalid, detail: errNoSession}}
	case s < 200 || s > 299:
		return c.unavailable(fmt.Errorf("status %d", s))
	}
	claims := []byte("{}")
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt == "application/json" || strings.HasSuffix(mt, "+json") {
		if t := bytes.TrimSpace(body); len(t) > 0 && t[0] == '{' {
			claims = t
		}
	}
	user, scopes := resp.Header.Values(c.userHeader), resp.Header.Values(c.scopesHeader)
	var u, s string
	if len(user) > 0 {
		u = user[0]
	}
	if len(scopes) > 0 {
		s = strings.Join(scopes, " ")
	}
	return h.activeAnswer(claims, u, s, len(scopes) > 0)
}

// activeAnswer makes the identity of an active credential from its claims
// (raw, a JSON object), with user and scopes, when set, in place of the
// configured claims'.
func (h *Handler) activeAnswer(raw []byte, user, scopes string, haveScopes bool) *answer {
	a := &answer{}
	id := &a.id
	id.verified = true // the endpoint vouches for it, as a signature does
	id.lazy.payload = base64.RawURLEncoding.EncodeToString(raw)
	ref := h.checkClaims(raw, id, &answerHeaders{user: user, scopes: scopes, haveScopes: haveScopes})
	if ref != nil {
		a.ref = ref // an expired one too: cached as a refusal, for negTTL
		return a
	}
	id.lazy.all, id.lazy.err = nil, nil // decoded by each handshake's copy
	return a
}

// answerHeaders is what a session endpoint says outside its claims: the
// user and scopes of its response headers, which take the place of the
// claims'.
type answerHeaders struct {
	user       string // "": none
	scopes     string
	haveScopes bool
}

// apply sets c's user and scopes to what the headers say.
func (ah *answerHeaders) apply(c *tokenClaims) {
	if ah.user != "" {
		c.Subject = optString{s: ah.user, ok: true}
	}
	if ah.haveScopes {
		// Whichever claim scope_claim names reads the header's.
		c.Scope, c.Scp = scopeList{str: ah.scopes}, scopeList{str: ah.scopes}
	}
}

// unavailable is the answer when the endpoint cannot judge: never cached.
func (c *checker) unavailable(err error) *answer {
	wsMetrics.credentialCheck(c.name, "unavailable")
	return &answer{ref: &refusal{reason: reasonUnavailable, detail: &checkError{name: c.name, url: c.shown, err: err}}}
}

// A checkError is why an endpoint could not judge a credential; it names
// the endpoint as logs may show it (never a credential: calls carry it in
// their body or headers).
type checkError struct {
	name, url string
	err       error
}

func (e *checkError) Error() string { return e.name + " " + e.url + ": " + e.err.Error() }
func (e *checkError) Unwrap() error { return e.err }

var (
	errInactive         = errors.New("token not active")
	errNoSession        = errors.New("no session")
	errUnsendable       = errors.New("credential holds bytes no request may carry")
	errBusy             = errors.New("too many calls in flight")
	errAnswerTooLarge   = errors.New("answer larger than 64 KiB")
	errNotIntrospection = errors.New("answer is no introspection response (a JSON object with active)")
)

// answerCache holds a handler's answers, bounded in entries and bytes.
type answerCache struct {
	mu      sync.Mutex
	entries map[credKey]*answer
	bytes   int
}

// get returns k's answer, if it is fresh at t.
func (ac *answerCache) get(k credKey, t int64) *answer {
	ac.mu.Lock()
	defer ac.mu.Unlock()
	a := ac.entries[k]
	if a == nil {
		return nil
	}
	if t >= a.until {
		ac.deleteLocked(k, a)
		return nil
	}
	return a
}

// put keeps a (unless it is unavailable, or its TTL is 0): an active
// answer for ttl but not past its exp, a refusal for negTTL.
func (ac *answerCache) put(k credKey, a *answer, ttl, negTTL time.Duration) {
	t := now()
	switch {
	case a.ref == nil:
		until := t.Add(ttl)
		if exp := a.id.claims; exp.ExpiresAt.set && exp.ExpiresAt.time().Before(until) {
			until = exp.ExpiresAt.time()
		}
		a.until = until.UnixNano()
	case a.ref.reason == reasonUnavailable:
		// Not cached, and what the endpoint said before stands: an
		// answer cached before an outage serves through it.
		return
	default:
		ttl = negTTL
		a.until = t.Add(ttl).UnixNano()
	}
	if ttl <= 0 {
		ac.remove(k)
		return
	}
	if a.size == 0 {
		a.size = answerOverhead
	}
	ac.mu.Lock()
	defer ac.mu.Unlock()
	if old := ac.entries[k]; old != nil {
		ac.deleteLocked(k, old)
	}
	for len(ac.entries) >= maxAnswerEntries || ac.bytes+a.size > maxAnswerBytes {
		if !ac.evictLocked(t.UnixNano()) {
			return
		}
	}
	ac.entries[k] = a
	ac.bytes += a.size
}

func (ac *answerCache) remove(k credKey) {
	ac.mu.Lock()
	if a := ac.entries[k]; a != nil {
		ac.deleteLocked(k, a)
	}
	ac.mu.Unlock()
}

func (ac *answerCache) deleteLocked(k credKey, a *answer) {
	delete(ac.entries, k)
	ac.bytes -= a.size
}

// evictLocked makes room: stale answers first, then an arbitrary tenth.
func (ac *answerCache) evictLocked(t int64) bool {
	n := len(ac.entries)
	for k, a := range ac.entries {
		if t >= a.until {
			ac.deleteLocked(k, a)
		}
	}
	for k, a := range ac.entries {
		if len(ac.entries) <= n*9/10 {
			break
		}
		ac.deleteLocked(k, a)
	}
	return len(ac.entries) < n
}
