package wsauth

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// reason is why a request is refused; each has a close code (overridable
// with close_code) and an HTTP status.
type reason uint8

const (
	reasonMissing reason = iota
	reasonInvalid
	reasonExpired
	reasonForbidden
	reasonOrigin
	reasonBlocked
	reasonRateLimited
	reasonUnavailable
	reasonInternal
	reasonGoingAway
	numReasons
)

var reasons = [numReasons]struct {
	name   string
	code   uint16
	status int
}{
	reasonMissing:     {"missing", 1008, http.StatusUnauthorized},
	reasonInvalid:     {"invalid", 1008, http.StatusUnauthorized},
	reasonExpired:     {"expired", 4001, http.StatusUnauthorized},
	reasonForbidden:   {"forbidden", 4003, http.StatusForbidden},
	reasonOrigin:      {"origin", 1008, http.StatusForbidden},
	reasonBlocked:     {"blocked", 1008, http.StatusForbidden},
	reasonRateLimited: {"rate_limited", 1013, http.StatusTooManyRequests},
	reasonUnavailable: {"unavailable", 1011, http.StatusServiceUnavailable},
	reasonInternal:    {"internal_error", 1011, http.StatusInternalServerError},
	reasonGoingAway:   {"going_away", closeGoingAway, http.StatusServiceUnavailable},
}

func (r reason) String() string { return reasons[r].name }

func reasonByName(name string) (reason, bool) {
	for i := range reasons {
		if reasons[i].name == name {
			return reason(i), true
		}
	}
	return 0, false
}

// validCloseCode reports whether code may be sent in a Close frame: the
// codes RFC 6455 defines for endpoints to send, and the 3000-4999 range.
func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014, code >= 3000 && code <= 4999:
		return true
	}
	return false
}

func (h *Handler) compileCloseCodes() error {
	for i := range reasons {
		h.codes[i] = reasons[i].code
	}
	for name, code := range h.CloseCodes {
		r, ok := reasonByName(name)
		if !ok {
			return fmt.Errorf("close_code: unknown reason %q", name)
		}
		if !validCloseCode(code) {
			return fmt.Errorf("close_code %s: %d is not a close code an endpoint may send (1000-1003, 1007-1014, 3000-4999)", name, code)
		}
		h.codes[r] = uint16(code)
	}
	return nil
}

// A refusal is the one value every check returns when a request may not go
// on: the reason (its close code and status), the detail behind it for the
// log (never the token), and with rate_limited how long until a retry may
// pass. A nil *refusal means the check passed.
type refusal struct {
	reason reason
	detail error
	retry  time.Duration
}

// Refusals whose detail never changes, shared rather than allocated.
var (
	refuseMissing        = &refusal{reason: reasonMissing}
	refuseNoOrigin       = &refusal{reason: reasonOrigin, detail: errNoOrigin}
	refuseOriginNotAllow = &refusal{reason: reasonOrigin, detail: errOriginNotAllowed}
	refuseBlockedIP      = &refusal{reason: reasonBlocked, detail: errBlockedIP}
	refuseBlockedToken   = &refusal{reason: reasonBlocked, detail: errBlockedToken}
	refuseRepeatedToken  = &refusal{reason: reasonInvalid, detail: errRepeatedToken}
	refuseGoingAway      = &refusal{reason: reasonGoingAway, detail: errGoingAway}
)

// refuse is the one way a request is refused, whatever refused it: the
// decision is logged (logRefusal) and marked in Caddy's access log, and the
// client is answered: on the stream the module already answered the
// handshake of (first_message), else by reject. Metrics and auto-bans hook
// in here, once.
func (h *Handler) refuse(hs *handshake, ref *refusal) error {
	wsMetrics.refused[ref.reason].Inc()
	h.logRefusal(hs, ref)
	h.countFailure(hs, ref)
	if h.joint != nil {
		h.joint.chargeRefused(hs)
	}
	if hs.stream != nil {
		hs.stream.close(h.codes[ref.reason], ref.reason.String(), !errors.Is(ref.detail, errClientClosed))
		return nil
	}
	if ref.reason == reasonRateLimited {
		hs.w.Header().Set("Retry-After", retryAfter(ref.retry))
	}
	return h.reject(hs.w, hs.r, ref.reason, hs.token)
}

// reject refuses the request for reason r: on a WebSocket upgrade in close
// mode by a Close frame, otherwise by an HTTP status. token, when not
// empty, is never selected as a subprotocol.
func (h *Handler) reject(w http.ResponseWriter, req *http.Request, r reason, token string) error {
	if h.closeMode && isUpgrade(req) {
		err := closeHandshake(w, req, h.codes[r], r.String(), token)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errNotWebSocket) {
			// The connection may be gone; nothing more can be sent.
			h.logger.Debug("closing refused websocket", zap.Error(err))
			return nil
		}
	}
	return h.rejectStatus(w, r)
}

// rejectStatus answers with the reason's HTTP status. It writes the status
// itself rather than returning a caddyhttp.Error: Caddy logs the request
// of a handler error, query string and Sec-WebSocket-Protocol included, to
// its error log, which the access log's filters do not cover, and that
// request holds the token.
func (h *Handler) rejectStatus(w http.ResponseWriter, r reason) error {
	switch r {
	case reasonMissing:
		w.Header().Set("WWW-Authenticate", "Bearer")
	case reasonInvalid:
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	case reasonExpired:
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="token expired"`)
	case reasonForbidden:
		w.Header().Set("WWW-Authenticate", h.insufficientScope)
	}
	w.WriteHeader(reasons[r].status)
	return nil
}
