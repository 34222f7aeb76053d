package wsauth

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler authenticates WebSocket handshakes with a JWT, or with an opaque
// credential that an introspection endpoint or the app's session endpoint
// judges, before they reach the next handler (usually reverse_proxy).
//
// A client that is refused gets, on a WebSocket (an HTTP/1.1 upgrade, or an
// extended CONNECT over HTTP/2 or HTTP/3) and with the default `reject close`,
// a completed handshake followed by one Close frame whose code a browser
// reads as CloseEvent.code: 1008 (missing, invalid, origin, blocked), 4001
// (expired), 4003 (forbidden: missing scope), 1013 (rate_limited), 1011
// (keys or, with first_message, the upstream unavailable; internal_error)
// or 1001 (going_away: a first-message handshake pending across a reload).
// With `reject status`, and for any request that is not a WebSocket, it
// gets the HTTP status instead (401 with an RFC 6750 WWW-Authenticate
// header, 403, 429 with Retry-After, 500 or 503).
//
// An accepted request carries these placeholders to the handlers after it:
//
// Placeholder | Description
// ------------|-------------
// `{http.auth.user.id}` | the user claim (user_claim, default sub)
// `{ws_auth.claims.*}` | any claim (of an opaque credential: a member of the endpoint's answer); nested objects by dots, arrays joined with commas
// `{ws_auth.scopes}` | granted scopes, space-separated
// `{ws_auth.jti}` | the token's ID
// `{ws_auth.expires}` | the token's expiry, RFC 3339; empty for an opaque credential whose answer had none
// `{ws_auth.token_source}` | query, header, cookie, subprotocol or first_message
type Handler struct {
	// Where the token is read, tried in order; the first source that yields
	// a token wins. Default: query parameter `token`, then the
	// `Authorization` header with the `Bearer` scheme.
	TokenSources []TokenSource `json:"token_sources,omitempty"`

	// HMAC secrets (HS256, HS384, HS512). Placeholders such as
	// `{env.WS_SECRET}` are replaced at provision; a value starting with
	// `base64:` is decoded to raw bytes (standard or URL alphabet).
	Secrets []string `json:"secrets,omitempty"`

	// PEM files holding an RSA, ECDSA or Ed25519 public key, as SPKI
	// ("PUBLIC KEY"), PKCS#1 ("RSA PUBLIC KEY") or an X.509 certificate.
	PublicKeys []string `json:"public_keys,omitempty"`

	// Remote JWK Sets, fetched at provision and refreshed in the background.
	JWKS []*JWKSSource `json:"jwks,omitempty"`

	// OpenID Connect issuers, found by discovery: each URL is an issuer,
	// whose <url>/.well-known/openid-configuration must name it as its
	// issuer; its jwks_uri is then a remote key set, fetched and
	// refreshed like one of JWKS (with the same refresh, timeout and
	// tls_trust_pool), and tokens of that issuer pass the issuer check.
	OIDC []*JWKSSource `json:"oidc,omitempty"`

	// Local JWK Set files.
	JWKSFiles []string `json:"jwks_files,omitempty"`

	// Opaque tokens, judged by their authorization server's RFC 7662
	// introspection endpoint instead of keys. Not with the key sources
	// above, nor with session_check.
	Introspect *Introspection `json:"introspect,omitempty"`

	// An app's own sessions (a session cookie, or a token only the app
	// knows), judged by an endpoint of the app instead of keys. Not with
	// the key sources above, nor with introspect.
	SessionCheck *SessionCheck `json:"session_check,omitempty"`

	// The verified-token cache: a token verified once is accepted again
	// without another signature check until the earliest of its exp, the
	// cache's max_age, and a change of the key that verified it; the
	// blocklist, origin, scopes and limits are still checked every time.
	// Default: on, 10000 entries (and at most 16 MiB), max_age 5m.
	TokenCache *TokenCache `json:"token_cache,omitempty"`

	// The signing algorithms accepted. Default: every algorithm that the
	// configured keys can verify. An algorithm that no configured key can
	// verify is a configuration error; "none" is never accepted. Ed25519
	// (RFC 9864) and EdDSA name one algorithm, EdDSA with an Ed25519 key:
	// either allows tokens whose header names the one or the other.
	Algorithms []string `json:"algorithms,omitempty"`

	// If set, the token's `iss` must be one of these.
	Issuers []string `json:"issuers,omitempty"`

	// If set, the token's `aud` must contain one of these.
	Audiences []string `json:"audiences,omitempty"`

	// Clock skew allowed when checking exp, nbf and iat. Default: 0; at
	// most 1h.
	Leeway caddy.Duration `json:"leeway,omitempty"`

	// The claim that names the user; it must be a non-empty string.
	// Default: sub.
	UserClaim string `json:"user_claim,omitempty"`

	// Tokens longer than this many bytes are rejected as invalid.
	// Default: 16 KiB; at most 1 MiB. The default holds the largest tokens
	// identity providers issue: Entra ID lists up to 200 groups in a token
	// (beyond, it sends an overage claim instead), about 13 KB with app
	// roles, while 150 groups already exceed 8 KiB; Keycloak's tokens grow
	// with each realm and client role.
	MaxTokenSize int `json:"max_token_size,omitempty"`

	// Scopes the token must grant, all of them. A granted scope ending in
	// ":*" covers every scope with that prefix ("chat:*" covers
	// "chat:write").
	Scopes []string `json:"scopes,omitempty"`

	// The claim holding the granted scopes, a space-separated string or an
	// array of strings. Default: "scope", then "scp".
	ScopeClaim string `json:"scope_claim,omitempty"`

	// Origins allowed to connect: exact ("https://app.example.com") or with
	// one leading wildcard label ("https://*.example.com"). When empty, the
	// Origin header is not checked.
	AllowedOrigins []string `json:"allowed_origins,omitempty"`

	// Accept requests with no Origin header (non-browser clients) even
	// though AllowedOrigins is set. Default: false.
	AllowMissingOrigin bool `json:"allow_missing_origin,omitempty"`

	// Only authenticate WebSocket upgrades and pass every other request
	// through untouched. Default: false (other requests are authenticated
	// too and refused with an HTTP status).
	UpgradesOnly bool `json:"upgrades_only,omitempty"`

	// How a WebSocket upgrade is refused: "close" completes the handshake
	// and sends a Close frame with the reason's code; "status" answers with
	// an HTTP status. Requests that are not upgrades always get a status.
	// Default: close.
	Reject string `json:"reject,omitempty"`

	// Overrides of the default close code of a reason (missing, invalid,
	// expired, forbidden, origin, blocked, rate_limited, unavailable).
	CloseCodes map[string]int `json:"close_codes,omitempty"`

	// Whether to remove the token from the request before it goes on, so
	// the upstream never sees it. Default: true.
	StripToken *bool `json:"strip_token,omitempty"`

	// Limits how often clients may act: handshakes, per client IP or per
	// user. Default: no limits.
	RateLimits *RateLimits `json:"rate_limits,omitempty"`

	// A file listing blocked token IDs (jti), users (sub) and client IPs
	// or CIDRs, one per line, each with an optional RFC 3339 expiry. It is
	// read again when it changes; a version that fails to parse keeps the
	// previous list in force. A match is refused as blocked.
	BlocklistFile string `json:"blocklist_file,omitempty"`

	// How many live connections a user may hold at once, in the process
	// (the same name at two issuers is two users). A handshake over the cap
	// is refused as rate_limited (close 1013, or 429 with Retry-After).
	// Default: no cap.
	MaxConnectionsPerUser int `json:"max_connections_per_user,omitempty"`

	// Bans a client IP that keeps failing authentication (invalid,
	// expired, forbidden, origin), and a user who keeps breaking the
	// message rate, for a while: the ban is a blocklist entry with an
	// expiry and a reason, shown by the admin API, that also closes the
	// live connections it matches. Default: no bans.
	BlockAfter *BlockAfter `json:"block_after,omitempty"`

	// Shares state with the other Caddy instances that use the same store:
	// the blocklist entries added at run time (admin API, block_after's
	// bans), which then close matching live connections on every
	// instance; the handshake rate limits; block_after's failure counts;
	// and max_connections_per_user. A module of the ws_auth.stores
	// namespace; the Caddyfile's `redis` writes ws_auth.stores.redis.
	// Default: none, the state is the process's own.
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=ws_auth.stores inline_key=module"`

	// Whether a live connection is closed when its token expires, at exp
	// plus leeway: the client gets a Close frame 4001 "expired", the
	// upstream a Close 1001, each at a frame boundary. Default: true.
	ExpireConnections *bool `json:"expire_connections,omitempty"`

	// How often live connections are checked against the blocklist, on
	// top of the check made at each change of it (a blocklist file that
	// changes, an entry added at run time). Default: 0, only on change.
	Revalidate caddy.Duration `json:"revalidate,omitempty"`

	// A client message larger than this many bytes (the frames of a
	// fragmented message counted together) closes the connection with 1009
	// "too_big". Default: no limit.
	MaxMessageSize int64 `json:"max_message_size,omitempty"`

	// In-band token refresh: a client text message of this type,
	// {"type":"<type>","token":"<jwt>"}, is taken by the module and not
	// forwarded; a valid token for the same user moves the connection's
	// expiry and is answered {"type":"<type>_ok","exp":<unix>}, an invalid
	// one closes the connection. A refresh counts as a message for
	// rate_limit messages, and a connection refreshes at most once a
	// second: one sooner closes it with 1008 "rate_limited". While it is
	// set, permessage-deflate is not negotiated with the upstream.
	// Default: off (the Caddyfile's `refresh_message` alone means
	// refresh_token).
	RefreshMessage string `json:"refresh_message,omitempty"`

	keys       *keyring
	methods    map[string]jwt.SigningMethod // the allowed algorithms
	sources    []tokenSource
	firstMsg   *firstMessage
	ipLimit    Limiter   // handshakes per client IP
	userLimit  Limiter   // handshakes per user
	blocklist  Blocklist // the file's entries and those added at run time
	needIP     bool      // the client IP is looked up: a list or a limit per IP
	limiterKey string
	// The rules on live connections.
	expire        bool
	msgRate       *messageRate // nil: no message limit
	msgUserLimit  Limiter      // messages per user
	msgLimiterKey string
	refresh       string          // the refresh message's type; "": off
	refreshQuoted []byte          // the type as a JSON string
	refreshLimit  int64           // the largest refresh message
	unsubscribe   func()          // from the blocklist file's changes
	store         Store           // nil: none
	tokens        *tokenCache     // nil: off
	opaque        *checker        // introspect or session_check; nil: JWTs
	joint         *jointAdmission // a shared rate and a cap in one round trip; nil: none
	slots         ConnectionSlots // max_connections_per_user's counts
	ipFailures    FailureCounter  // block_after's counts; nil: no bans
	failuresKey   string
	blocklistKey  string
	origins       originMatcher
	codes         [numReasons]uint16
	issuers       []string
	audiences     []string
	userClaim     string
	scopeClaim    string
	needMap       bool // user or scope claim is not in tokenClaims
	maxToken      int
	strip         bool
	closeMode     bool
	// insufficientScope is the WWW-Authenticate value of a 403 for scopes.
	insufficientScope string
	logger            *zap.Logger
	// ctx is done once the config is unloaded.
	ctx context.Context
}

// JWKSSource is a remote JWK Set.
type JWKSSource struct {
	// The URL of the JWK Set.
	URL string `json:"url"`

	// How often the set is fetched again. Default: 15m; at least 10s
	// (a token naming a kid the set lacks makes it be fetched at once,
	// at most every 30s, whatever the refresh).
	Refresh caddy.Duration `json:"refresh,omitempty"`

	// Time allowed for one fetch. Default: 10s; at most 1m.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// The certificate authorities the key server's certificate must chain
	// to, for this URL only, as reverse_proxy's transport takes them: a
	// module of the tls.ca_pool.source namespace (for instance
	// {"provider": "file", "pem_files": ["/etc/caddy/idp-ca.pem"]}).
	// Default: the system's trust store.
	CARaw json.RawMessage `json:"tls_trust_pool,omitempty" caddy:"namespace=tls.ca_pool.source inline_key=provider"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.ws_auth",
		New: func() caddy.Module { return new(Handler) },
	}
}

const (
	defaultMaxTokenSize = 16 << 10
	maxMaxTokenSize     = 1 << 20
	defaultJWKSRefresh  = 15 * time.Minute
	defaultJWKSTimeout  = 10 * time.Second
)

// Provision sets up the handler: it checks the configuration
// (checkConfig) before anything else, then compiles the token sources,
// origin patterns and close codes, shares the rate limiter and the
// blocklist, loads the keys, and resolves the allowed algorithms once.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.ctx = ctx
	wsMetrics.register(ctx.GetMetricsRegistry(), h.logger)

	if err := h.checkConfig(); err != nil {
		return err
	}

	h.maxToken = h.MaxTokenSize
	if h.maxToken == 0 {
		h.maxToken = defaultMaxTokenSize
	}
	h.userClaim = h.UserClaim
	if h.userClaim == "" {
		h.userClaim = "sub"
	}
	h.scopeClaim = h.ScopeClaim
	h.needMap = h.userClaim != "sub" || (h.scopeClaim != "" && h.scopeClaim != "scope" && h.scopeClaim != "scp")
	h.strip = h.StripToken == nil || *h.StripToken
	h.closeMode = h.Reject == "" || h.Reject == "close"
	h.insufficientScope = `Bearer error="insufficient_scope", scope="` + strings.Join(h.Scopes, " ") + `"`
	// An oidc issuer is accepted as the issuer of its keys' tokens.
	h.issuers = slices.Clip(h.Issuers)
	for _, src := range h.OIDC {
		h.issuers = append(h.issuers, caddy.NewReplacer().ReplaceKnown(src.URL, ""))
	}
	h.audiences = h.Audiences

	var err error
	h.sources, h.firstMsg, err = compileSources(h.TokenSources)
	if err != nil {
		return err
	}
	h.origins, err = compileOrigins(h.AllowedOrigins)
	if err != nil {
		return err
	}
	if err := h.compileCloseCodes(); err != nil {
		return err
	}

	if h.AllowMissingOrigin && h.origins.empty() {
		h.logger.Warn("allow_missing_origin has no effect without allowed_origins")
	}

	if h.StoreRaw != nil {
		mod, err := ctx.LoadModule(h, "StoreRaw")
		if err != nil {
			return fmt.Errorf("loading store: %v", err)
		}
		h.store = mod.(Store)
	}

	h.ipLimit, h.userLimit = noLimit{}, noLimit{}
	if h.RateLimits != nil && h.RateLimits.Handshakes != nil {
		hr := h.RateLimits.Handshakes
		l, key := acquireRateLimiter("handshakes", hr.Events, time.Duration(hr.Window), hr.Per == "user")
		h.limiterKey = key
		var lim Limiter = l
		if h.store != nil {
			lim = h.store.Limiter(key, hr.Events, time.Duration(hr.Window), l)
		}
		if l.perUser {
			h.userLimit = lim
		} else {
			h.ipLimit, h.needIP = lim, true
		}
	}
	if mr := h.RateLimits.messages(); mr != nil {
		window := time.Duration(mr.Window)
		h.msgRate = &messageRate{
			interval: int64(window) / int64(mr.Events),
			window:   int64(window),
			perUser:  mr.Per == "" || mr.Per == "user",
			action:   mr.Action,
		}
		if h.msgRate.action == "" {
			h.msgRate.action = "drop"
		}
		if h.msgRate.perUser {
			var l *rateLimiter
			l, h.msgLimiterKey = acquireRateLimiter("messages", mr.Events, window, true)
			h.msgUserLimit = l
		}
	}
	if ba := h.BlockAfter; ba != nil {
		h.failuresKey = fmt.Sprintf("%d/%d", ba.Failures, ba.Within)
		fc, _ := failureCounters.LoadOrStore(h.failuresKey, newFailureCounter(ba.Failures, time.Duration(ba.Within)))
		h.ipFailures = fc.(*failureCounter)
		if h.store != nil {
			h.ipFailures = h.store.FailureCounter(h.failuresKey, ba.Failures, time.Duration(ba.Within), h.ipFailures)
		}
	}
	h.slots = userSlots
	if h.store != nil {
		h.slots = h.store.Slots()
		h.provisionJoint()
	}
	h.expire = h.ExpireConnections == nil || *h.ExpireConnections
	if h.RefreshMessage != "" {
		h.refresh = h.RefreshMessage
		h.refreshQuoted = []byte(`"` + h.refresh + `"`)
		h.refreshLimit = int64(h.maxToken + firstMessageSlack)
	}

	// The entries added at run time (the admin API's) apply to every
	// handler, next to the handler's own file.
	h.blocklist = runtimeBlocklist
	var file Blocklist
	if h.BlocklistFile != "" {
		bf, key, err := acquireBlocklist(h.BlocklistFile)
		if err != nil {
			return err
		}
		h.blocklistKey = key
		h.blocklist = unionBlocklist{bf, runtimeBlocklist}
		file = bf
	}
	h.watchBlocklist(ctx, file)

	if h.Introspect != nil || h.SessionCheck != nil {
		if h.opaque, err = newChecker(ctx, h); err != nil {
			return err
		}
		return nil
	}
	h.tokens = newTokenCache(h.TokenCache)
	h.keys, err = loadKeys(ctx, h, h.logger)
	if err != nil {
		return err
	}
	algs, err := h.keys.allowedAlgorithms(h.Algorithms)
	if err != nil {
		return err
	}

	// checkAlgorithm has refused unknown names and "none" in the
	// configured list; the default list holds what keys verify.
	h.methods = make(map[string]jwt.SigningMethod, len(algs))
	for _, alg := range algs {
		m := signingMethod(alg)
		if m == nil {
			return fmt.Errorf("algorithms: no implementation of %q", alg)
		}
		h.methods[alg] = m
	}
	return nil
}

// Validate applies checkConfig again. Provision has already run it, first
// and before anything is fetched, opened or started (Caddy calls Validate
// after Provision), so under Caddy this finds nothing new; it answers
// those who validate a handler without provisioning it.
func (h *Handler) Validate() error {
	return h.checkConfig()
}

// Cleanup releases what Provision took.
func (h *Handler) Cleanup() error {
	if h.keys != nil {
		h.keys.close()
	}
	if h.opaque != nil {
		h.opaque.close()
	}
	if h.limiterKey != "" {
		_, _ = rateLimiters.Delete(h.limiterKey)
		h.limiterKey = ""
	}
	if h.msgLimiterKey != "" {
		_, _ = rateLimiters.Delete(h.msgLimiterKey)
		h.msgLimiterKey = ""
	}
	if h.failuresKey != "" {
		_, _ = failureCounters.Delete(h.failuresKey)
		h.failuresKey = ""
	}
	if h.unsubscribe != nil {
		h.unsubscribe()
		h.unsubscribe = nil
	}
	if h.blocklistKey != "" {
		releaseBlocklist(h.blocklistKey)
		h.blocklistKey = ""
	}
	return nil
}

// now is the clock, to be substituted by tests.
var now = time.Now

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
