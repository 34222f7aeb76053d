package demo

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Login{})
}

// Limits of a login request.
const (
	maxLoginBody = 4 << 10 // bytes of JSON
	maxScopeLen  = 1024    // bytes of the scope string
	maxTTL       = time.Hour
	defaultTTL   = time.Minute

	// expiredAge is how long before its expiry an already-expired token
	// (negative ttl) was issued, so that it looks like a token that was once
	// valid rather than one that expired before it was issued.
	expiredAge = 5 * time.Minute
)

// validUser is what a user name may be: the sub claim, and what ws_auth
// passes upstream in {http.auth.user.id}.
var validUser = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,64}$`)

// now is the clock, to be substituted by tests.
var now = time.Now

// Login is a DEMO-ONLY token endpoint (module http.handlers.ws_demo_login):
// it signs a token for anyone who asks, for any user and any scope. Never
// expose it in production; real tokens come from an identity provider.
//
// It accepts only POST with a JSON body (at most 4 KiB):
//
//	{"user": "alice", "scope": "chat:read chat:write", "ttl": "60s"}
//
// user is 1 to 64 characters of A-Z a-z 0-9 . _ @ -; scope is optional,
// space-separated; ttl is a duration between -1h and 1h, default 60s, and a
// negative ttl gives a token that has already expired. The answer is
//
//	{"token": "<jwt>", "expires": <unix seconds>}
//
// where the token is an HS256 JWT with the claims sub and name (the user),
// scope (if any), iat, nbf, exp, a random jti, and iss and aud if configured.
// A rejected request gets a 4xx status and {"error": "<why>"}.
//
// The token and the secret are never logged.
type Login struct {
	// The HMAC key that signs the tokens (HS256); it must be the secret of
	// the ws_auth handler that verifies them. Placeholders known at
	// provision time, such as {env.WS_SECRET}, are replaced, and a value of
	// the form "base64:<...>" is decoded to raw bytes. Required.
	Secret string `json:"secret,omitempty"`

	// The iss claim of the tokens. Default: no iss claim.
	Issuer string `json:"issuer,omitempty"`

	// The aud claim of the tokens. Default: no aud claim.
	Audience string `json:"audience,omitempty"`

	key    []byte
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Login) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.ws_demo_login",
		New: func() caddy.Module { return new(Login) },
	}
}

// Provision resolves the secret and warns that the module is for demos only.
func (l *Login) Provision(ctx caddy.Context) error {
	l.logger = ctx.Logger()
	key, err := decodeSecret(caddy.NewReplacer().ReplaceKnown(l.Secret, ""))
	if err != nil {
		return err
	}
	l.key = key
	l.logger.Warn("ws_demo_login is for demos only: it signs a token for anyone who asks; never use it in production",
		zap.String("issuer", l.Issuer),
		zap.String("audience", l.Audience))
	if len(key) < 32 {
		l.logger.Warn("secret is shorter than 32 bytes; HS256 wants at least 32", zap.Int("bytes", len(key)))
	}
	return nil
}

// decodeSecret turns a configured secret, placeholders already replaced,
// into key bytes: "base64:<...>" (standard or URL alphabet, padded or not)
// gives the decoded bytes, anything else its UTF-8 bytes.
func decodeSecret(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("secret is required (and must not be empty once placeholders are replaced)")
	}
	b64, ok := strings.CutPrefix(s, "base64:")
	if !ok {
		return []byte(s), nil
	}
	b64 = strings.TrimRight(b64, "=")
	for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
		if key, err := enc.DecodeString(b64); err == nil {
			if len(key) == 0 {
				return nil, errors.New("secret: base64 value is empty")
			}
			return key, nil
		}
	}
	return nil, errors.New("secret: invalid base64 after 'base64:'")
}

// loginRequest is the body of a login request.
type loginRequest struct {
	User  string `json:"user"`
	Scope string `json:"scope"`
	TTL   string `json:"ttl"`
}

// loginResponse is the answer to a valid login request.
type loginResponse struct {
	Token   string `json:"token"`
	Expires int64  `json:"expires"`
}

// demoClaims are the claims of a demo token.
type demoClaims struct {
	Name  string `json:"name"`
	Scope string `json:"scope,omitempty"`
	jwt.RegisteredClaims
}

// ServeHTTP answers a login request. It never calls the next handler.
func (l *Login) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return writeJSONError(w, http.StatusMethodNotAllowed, "method not allowed: use POST")
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return writeJSONError(w, http.StatusUnsupportedMediaType, "content type must be application/json")
	}

	req, status, msg := readLoginRequest(w, r)
	if status != 0 {
		return writeJSONError(w, status, msg)
	}
	user, scope, ttl, msg := checkLoginRequest(req)
	if msg != "" {
		return writeJSONError(w, http.StatusBadRequest, msg)
	}

	jti, err := randomID()
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, fmt.Errorf("generating jti: %v", err))
	}
	issued := now()
	exp := issued.Add(ttl)
	if ttl < 0 {
		issued = exp.Add(-expiredAge)
	}
	claims := demoClaims{
		Name:  user,
		Scope: scope,
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    l.Issuer,
			Subject:   user,
			ExpiresAt: jwt.NewNumericDate(exp),
			NotBefore: jwt.NewNumericDate(issued),
			IssuedAt:  jwt.NewNumericDate(issued),
			ID:        jti,
		},
	}
	if l.Audience != "" {
		claims.Audience = jwt.ClaimStrings{l.Audience}
	}
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(l.key)
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, fmt.Errorf("signing demo token: %v", err))
	}

	if c := l.logger.Check(zapcore.InfoLevel, "issued demo token"); c != nil {
		c.Write(zap.String("user", user),
			zap.String("jti", jti),
			zap.String("scope", scope),
			zap.Duration("ttl", ttl))
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, loginResponse{Token: token, Expires: claims.ExpiresAt.Unix()})
}

// readLoginRequest decodes the body of r. On failure it returns a non-zero
// status and a message for the client.
func readLoginRequest(w http.ResponseWriter, r *http.Request) (loginRequest, int, string) {
	var req loginRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxLoginBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(&req)
	if err == nil {
		// exactly one JSON value: anything after it is an error
		if _, err = dec.Token(); err == io.EOF {
			return req, 0, ""
		} else if err == nil {
			err = errors.New("unexpected data after the JSON object")
		}
	}
	if mbe := new(http.MaxBytesError); errors.As(err, &mbe) {
		return req, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", maxLoginBody)
	}
	return req, http.StatusBadRequest, "invalid JSON body: " + err.Error()
}

// checkLoginRequest validates req. It returns the user, the normalised scope
// and the ttl, or a message for the client.
func checkLoginRequest(req loginRequest) (user, scope string, ttl time.Duration, msg string) {
	if !validUser.MatchString(req.User) {
		return "", "", 0, "user must be 1 to 64 characters of A-Z a-z 0-9 . _ @ -"
	}
	if len(req.Scope) > maxScopeLen {
		return "", "", 0, fmt.Sprintf("scope longer than %d bytes", maxScopeLen)
	}
	for _, c := range req.Scope {
		// RFC 6749 scope-token characters, and spaces between them
		if c < ' ' || c > '~' || c == '"' || c == '\\' {
			return "", "", 0, `scope may only hold printable ASCII other than " and \, separated by spaces`
		}
	}
	scope = strings.Join(strings.Fields(req.Scope), " ")

	ttl = defaultTTL
	if req.TTL != "" {
		var err error
		ttl, err = caddy.ParseDuration(req.TTL)
		if err != nil {
			return "", "", 0, "ttl must be a duration such as 60s, 10m or -1m"
		}
	}
	if ttl == 0 || ttl < -maxTTL || ttl > maxTTL {
		return "", "", 0, "ttl must be non-zero and between -1h and 1h"
	}
	return req.User, scope, ttl, ""
}

// randomID returns 128 random bits, hex-encoded, for the jti claim.
func randomID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// writeJSON writes v as a JSON response with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, err = w.Write(append(body, '\n'))
	return err
}

// writeJSONError writes {"error": msg} with the given status.
func writeJSONError(w http.ResponseWriter, status int, msg string) error {
	return writeJSON(w, status, map[string]string{"error": msg})
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Login)(nil)
	_ caddyhttp.MiddlewareHandler = (*Login)(nil)
	_ caddyfile.Unmarshaler       = (*Login)(nil)
)
