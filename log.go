package wsauth

import (
	"errors"
	"net/http"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// logsCredentials reports whether Caddy's logs of r show the Authorization
// and Cookie headers (the server's log_credentials), which they otherwise
// show as REDACTED.
func logsCredentials(r *http.Request) bool {
	srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return ok && srv.Logs != nil && srv.Logs.ShouldLogCredentials
}

// redactedByCaddy reports whether Caddy's logs show s's values as REDACTED
// (unless they log credentials): cookies and the Authorization headers.
func (s *tokenSource) redactedByCaddy() bool {
	return s.kind == sourceCookie ||
		s.kind == sourceHeader && (s.name == "Authorization" || s.name == "Proxy-Authorization" || s.name == "Cookie")
}

// answerError answers a failure of the handlers after ws_auth itself, for
// requests whose token Caddy's error log would otherwise print. The error
// is logged without the request.
func (h *Handler) answerError(w http.ResponseWriter, r *http.Request, err error) error {
	status := http.StatusInternalServerError
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode >= 400 {
		status = he.StatusCode
	}
	lvl := zapcore.DebugLevel
	if status >= 500 {
		lvl = zapcore.ErrorLevel
	}
	if c := h.logger.Check(lvl, "handler after ws_auth failed"); c != nil {
		c.Write(zap.Int("status", status), zap.String("path", truncate(r.URL.Path, 200)),
			zap.String("remote_ip", clientIP(r)), zap.Error(err))
	}
	w.WriteHeader(status)
	return nil
}

// logRefusal logs a refusal with its reason and detail, and marks it in
// Caddy's access log.
func (h *Handler) logRefusal(hs *handshake, ref *refusal) {
	markRefused(hs.r, ref.reason, &hs.id)
	c := h.logger.Check(zapcore.InfoLevel, "websocket refused")
	if c == nil {
		return
	}
	fields := append(h.logFields(hs), zap.String("reason", ref.reason.String()))
	if ref.detail != nil {
		fields = append(fields, zap.String("detail", truncate(ref.detail.Error(), 200)))
	}
	c.Write(fields...)
}

// markRefused makes a refusal findable in Caddy's access log, where a
// WebSocket refused with a Close frame shows as status 0: the log entry
// gets the field ws_auth_refused with the reason, and user_id names the
// user when the signature checked out.
func markRefused(r *http.Request, rsn reason, id *identity) {
	if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Set(zap.String("ws_auth_refused", rsn.String()))
	}
	if id.verified && id.claims.Subject.ok {
		if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			repl.Set("http.auth.user.id", id.claims.Subject.s)
		}
	}
}

// logFields are the audit fields of a decision: never the token or a key.
func (h *Handler) logFields(hs *handshake) []zap.Field {
	r, src, id := hs.r, hs.src, &hs.id
	ip := clientIP(r)
	fields := make([]zap.Field, 0, 9)
	fields = append(fields,
		zap.String("remote_ip", ip),
		zap.String("origin", truncate(r.Header.Get("Origin"), 200)),
		zap.String("path", truncate(r.URL.Path, 200)),
	)
	if src != nil {
		fields = append(fields, zap.String("token_source", src.kind.String()))
	}
	if id.verified && id.claims.Subject.ok {
		fields = append(fields, zap.String("user", truncate(id.claims.Subject.s, 200)))
		if id.claims.ID.s != "" {
			fields = append(fields, zap.String("jti", truncate(id.claims.ID.s, 200)))
		}
	}
	return fields
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
