package wsauth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// ServeHTTP decides whether the request may go on. Every check returns a
// *refusal or nil; a refused request gets exactly one answer, from refuse,
// and an accepted one goes to next with its placeholders set and its token
// removed.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	upgrade := isUpgrade(r)
	if upgrade {
		// Before upgrades_only lets anything through: reverse_proxy would
		// tunnel an HTTP/1.0 "upgrade" too.
		if status := checkHandshake(r); status != 0 {
			return h.refuseHandshake(w, r, status)
		}
	} else if h.UpgradesOnly {
		return next.ServeHTTP(w, r)
	}
	p, err := h.decide(w, r, upgrade)
	switch {
	case p.firstMessage:
		// The other checks passed; the token comes from the stream.
		// serveFirstMessage recovers its own panics.
		return h.serveFirstMessage(w, r, next)
	case !p.accepted:
		return err
	}
	if p.lc != nil {
		defer p.lc.end()
	}
	err = next.ServeHTTP(p.w, r)
	if err != nil && p.logged {
		return h.answerError(p.w, r, err)
	}
	return err
}

// A pass is how an accepted request goes on from decide.
type pass struct {
	accepted     bool
	firstMessage bool // no token in the request: first_message reads one
	logged       bool // the request holds a token Caddy would log
	w            http.ResponseWriter
	lc           *liveConn // the watch of an accepted WebSocket
}

// decide runs the checks of ServeHTTP up to the next handler, and answers
// a refused request itself. The handshake being decided is on decide's
// frame rather than in a heap object per handshake, and the frame is gone
// before ServeHTTP calls the next handler, which runs on that stack for the
// connection's whole life (reverse_proxy's tunnel).
func (h *Handler) decide(w http.ResponseWriter, r *http.Request, upgrade bool) (p pass, err error) {
	hs := handshake{w: w, r: r}
	// A panic in the decision is a bug, but one that a client may trigger
	// at will: it must still get an answer, and the connection a close.
	// Panics of the handlers after ws_auth are theirs, and Caddy's.
	slot := false
	var iss, user string
	defer func() {
		if v := recover(); v != nil {
			if slot {
				h.slots.Give(iss, user)
			}
			p, err = pass{}, h.recovered(&hs, v)
		}
	}()

	if ref := h.checkClient(r); ref != nil {
		return p, h.refuse(&hs, ref)
	}
	token, src, err := extract(r, h.sources)
	hs.src = src
	if err != nil {
		return p, h.refuse(&hs, refuseRepeatedToken)
	}
	if src == nil {
		if h.firstMsg != nil && upgrade {
			return pass{firstMessage: true}, nil
		}
		return p, h.refuse(&hs, refuseMissing)
	}
	hs.token = token
	hs.id.from = src
	if ref := h.checkToken(token, &hs.id); ref != nil {
		return p, h.refuse(&hs, ref)
	}
	if !upgrade && h.joint != nil {
		if ref := h.joint.admitRate(&hs); ref != nil {
			return p, h.refuse(&hs, ref)
		}
	}
	if upgrade {
		var ref *refusal
		if slot, ref = h.takeSlot(&hs); ref != nil {
			return p, h.refuse(&hs, ref)
		}
		// Given back by the connection's end, or on a panic before it
		// gets one.
		iss, user = hs.id.claims.Issuer.s, hs.id.user
	}
	hs.id.source = src.kind

	// Caddy logs a request whose handler chain fails with the request as it
	// arrived, stripped or not, and only redacts the credential headers: a
	// token anywhere else would be in that log line, so ws_auth answers
	// such a failure itself.
	creds := logsCredentials(r)
	for i := range h.sources {
		// Every source that holds a value, not only the one that won: a
		// session cookie riding along with a query token is a token too.
		s := &h.sources[i]
		if _, n := s.read(r); n > 0 || s == src {
			p.logged = p.logged || creds || !s.redactedByCaddy()
			switch {
			case h.strip, s != src:
				// With strip_token off, the verified value goes on, and
				// no value of another source that nobody verified.
				s.strip(r)
			case s.kind == sourceCookie && n > 1:
				s.keepCookie(r, token) // the verified cookie, and no other of its name
			}
		}
	}
	if upgrade {
		if src.kind == sourceSubprotocol {
			w = &protocolWriter{
				ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
				marker:                src.name,
				switched:              switchedStatus(r),
			}
		}
		if h.refresh != "" {
			// Refresh messages must reach the module uncompressed.
			r.Header.Del("Sec-Websocket-Extensions")
		}
		p.lc, w = h.newLive(&hs, w, r)
	}
	h.accepted(&hs, p.lc)
	if slot {
		p.lc.slots, slot = h.slots, false
	}
	p.accepted, p.w = true, w
	return p, nil
}

// recovered answers a request whose decision panicked, as internal_error:
// with a Close 1011 on a WebSocket in close mode, else a 500. The first
// panic is logged with its stack, later ones without, so that a client
// repeating the request cannot flood the log.
func (h *Handler) recovered(hs *handshake, v any) error {
	fields := []zap.Field{zap.String("panic", truncate(fmt.Sprint(v), 200)),
		zap.String("remote_ip", clientIP(hs.r)), zap.String("path", truncate(hs.r.URL.Path, 200))}
	if panics.Add(1) == 1 {
		fields = append(fields, zap.String("stack", string(debug.Stack())))
	}
	h.logger.Error("internal error deciding a request; please report it", fields...)
	hs.id = identity{} // what it holds may be half made
	return h.refuse(hs, &refusal{reason: reasonInternal, detail: errPanic})
}

var errPanic = errString("panic")

// panics counts the decisions that panicked, in the process.
var panics atomic.Int64

// checkClient runs the checks that need no token, cheapest first: the
// origin, the client IP on the blocklist, and the handshake rate per IP.
func (h *Handler) checkClient(r *http.Request) *refusal {
	if !h.origins.empty() {
		origin := r.Header["Origin"]
		if len(origin) == 0 {
			if !h.AllowMissingOrigin {
				return refuseNoOrigin
			}
		} else if !h.origins.allowed(origin[0]) {
			return refuseOriginNotAllow
		}
	}
	ip := clientIP(r)
	if h.blocklist.BlockedIP(ip, now()) {
		return refuseBlockedIP
	}
	if !h.needIP {
		return nil
	}
	if ok, wait := h.ipLimit.Allow(ipKey(ip), now()); !ok {
		return &refusal{reason: reasonRateLimited, detail: errRateIP, retry: wait}
	}
	return nil
}

// accepted logs the decision and makes the identity's placeholders
// available to the handlers that follow: lc's, for a WebSocket whose watch
// is made (nil for a plain request, and for first_message, whose watch
// comes later, after checks that may still refuse the connection).
// Acceptances are logged at DEBUG: at INFO the log write would be the
// largest cost of a handshake, and Caddy's access log already records
// accepted requests with their user_id.
func (h *Handler) accepted(hs *handshake, lc *liveConn) {
	wsMetrics.accepted.Inc()
	if c := h.logger.Check(zapcore.DebugLevel, "websocket authenticated"); c != nil {
		c.Write(h.logFields(hs)...)
	}
	repl := hs.r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if lc != nil {
		repl.Map(lc.placeholders(hs.id.lazy.payload, hs.id.granted.String()))
		return
	}
	repl.Map(hs.id.view().placeholder)
}

// A handshake is one request being decided: what the checks learn of it,
// and how it is answered.
type handshake struct {
	w      http.ResponseWriter
	r      *http.Request
	src    *tokenSource // the source that yielded the token
	token  string
	id     identity
	stream *clientStream // once the module answered the handshake itself
	// charged: the fleet's joint rate has been charged for it.
	charged bool
}

// A placeholderView is what the placeholders read of an accepted
// identity: a small copy, so that the replacer, which lives as long as the
// request (a WebSocket's whole life), keeps it and not the handshake. A
// WebSocket watched from its handshake on keeps none: its placeholders
// read its liveConn (liveConn.placeholders).
type placeholderView struct {
	user    string
	jti     string
	expires time.Time
	scopes  scopeList
	source  sourceKind
	claims  lazyClaims
}

func (id *identity) view() *placeholderView {
	return &placeholderView{user: id.user, jti: id.claims.ID.s, expires: id.expires(),
		scopes: id.granted, source: id.source, claims: id.lazy}
}

// placeholder resolves the {ws_auth.*} placeholders and {http.auth.user.id},
// decoding claims only when one is asked for.
func (pv *placeholderView) placeholder(key string) (any, bool) {
	return pv.resolve(key, pv.claims.get)
}

// resolve is placeholder with the claims from claims, which decodes them
// on its first call.
func (pv *placeholderView) resolve(key string, claims func() map[string]any) (any, bool) {
	if key == "http.auth.user.id" {
		return pv.user, true
	}
	name, ok := strings.CutPrefix(key, "ws_auth.")
	if !ok {
		return nil, false
	}
	switch name {
	case "scopes":
		return pv.scopes.String(), true
	case "jti":
		return pv.jti, true
	case "expires":
		return rfc3339(pv.expires), true
	case "token_source":
		return pv.source.String(), true
	}
	if claim, ok := strings.CutPrefix(name, "claims."); ok {
		v, ok := lookupPath(claims(), claim)
		if !ok {
			return "", true
		}
		return formatClaim(v), true
	}
	return nil, false
}

// placeholders returns the placeholder function of an accepted WebSocket.
// It reads the identity from the connection's watch, which holds the user,
// jti, expiry and token source anyway, rather than from a placeholderView
// of its own: the function, which the replacer keeps for the connection's
// whole life, holds only the connection, the token's payload segment (a
// part of the request's token, for the claims) and the granted scopes.
func (c *liveConn) placeholders(payload, scopes string) caddy.ReplacerFunc {
	return func(key string) (any, bool) { return c.placeholder(key, payload, scopes) }
}

// placeholder resolves a WebSocket's placeholders as its handshake
// accepted it. After a refresh message the connection runs under the new
// token's jti and expiry, but the placeholders still show the handshake
// token's, as its claims and scopes do: those two are read from its
// payload then. The claims are decoded once, when a placeholder first needs
// them. c.mu is held throughout: a refresh may come at any time.
func (c *liveConn) placeholder(key, payload, scopes string) (any, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	claims := func() map[string]any {
		if c.claims == nil {
			c.claims = &lazyClaims{payload: payload}
		}
		return c.claims.get()
	}
	pv := placeholderView{user: c.user, jti: c.jti, expires: c.expires,
		scopes: scopeList{str: scopes}, source: c.source}
	if c.refreshed && (key == "ws_auth.jti" || key == "ws_auth.expires") {
		pv.jti, pv.expires = "", time.Time{} // unless the handshake's claims have them
		if m := claims(); m != nil {
			// As verify reads them: a jti that is no string is none, and
			// exp is a number (a valid token has one).
			pv.jti, _ = m["jti"].(string)
			var exp numericDate
			if n, ok := m["exp"].(json.Number); ok && exp.UnmarshalJSON([]byte(n)) == nil {
				pv.expires = exp.time()
			}
		}
	}
	return pv.resolve(key, claims)
}

var (
	errNoOrigin         = errString("no Origin header")
	errOriginNotAllowed = errString("origin not allowed")
	errBlockedIP        = errString("client IP blocked")
	errBlockedToken     = errString("token or user blocked")
	errRateIP           = errString("handshake rate of the client IP exceeded")
	errRateUser         = errString("handshake rate of the user exceeded")
)

type errString string

func (e errString) Error() string { return string(e) }

// protocolWriter makes the 101 that reverse_proxy relays select the
// subprotocol marker when the upstream selected none: the client offered
// the marker, and a browser fails a connection whose 101 selects no
// protocol although it offered some.
type protocolWriter struct {
	*caddyhttp.ResponseWriterWrapper
	marker   string
	switched int // the status of an accepted WebSocket handshake
}

// switchedStatus is the status with which reverse_proxy accepts r's
// WebSocket: 101, or 200 for an extended CONNECT.
func switchedStatus(r *http.Request) int {
	if isExtendedConnect(r) {
		return http.StatusOK
	}
	return http.StatusSwitchingProtocols
}

func (pw *protocolWriter) WriteHeader(status int) {
	if status == pw.switched {
		hdr := pw.Header()
		if len(hdr["Sec-WebSocket-Protocol"]) == 0 && len(hdr["Sec-Websocket-Protocol"]) == 0 {
			hdr["Sec-WebSocket-Protocol"] = []string{pw.marker}
		}
	}
	pw.ResponseWriterWrapper.WriteHeader(status)
}
