package wsauth

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/http/httpguts"
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

// closeWait bounds how long a refused client has to answer our Close frame
// before the TCP connection is closed.
const closeWait = time.Second

// maxDrain bounds what is read from a refused client while waiting for its
// Close frame.
const maxDrain = 64 << 10

// websocketGUID is from RFC 6455, section 1.3.
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// reject refuses the request for reason r: on a WebSocket upgrade in close
// mode by a Close frame, otherwise by an HTTP status. token, when not
// empty, is never selected as a subprotocol.
func (h *Handler) reject(w http.ResponseWriter, req *http.Request, r reason, token string) error {
	if h.closeMode && isUpgrade(req) {
		err := h.closeHandshake(w, req, h.codes[r], r.String(), token)
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

var errNotWebSocket = errors.New("not a valid websocket handshake")

// checkHandshake returns the status that refuses a WebSocket handshake no
// server may accept (RFC 6455, section 4.2.1), or 0: 400 for an upgrade
// over HTTP/1.0, 426 for a version other than 13 (RFC 8441 carries the
// version over HTTP/2 too).
func checkHandshake(req *http.Request) int {
	version := req.Header["Sec-Websocket-Version"]
	if isExtendedConnect(req) {
		if len(version) > 0 && (len(version) > 1 || version[0] != "13") {
			return http.StatusUpgradeRequired
		}
		return 0
	}
	if !req.ProtoAtLeast(1, 1) {
		return http.StatusBadRequest
	}
	if len(version) != 1 || version[0] != "13" {
		return http.StatusUpgradeRequired
	}
	return 0
}

// refuseHandshake answers a handshake that checkHandshake refused; a 426
// names the version this server speaks (RFC 6455, section 4.4).
func (h *Handler) refuseHandshake(w http.ResponseWriter, r *http.Request, status int) error {
	if c := h.logger.Check(zapcore.DebugLevel, "not a websocket handshake"); c != nil {
		c.Write(zap.Int("status", status), zap.String("remote_ip", clientIP(r)),
			zap.String("proto", r.Proto), zap.String("path", truncate(r.URL.Path, 200)))
	}
	if status == http.StatusUpgradeRequired {
		w.Header().Set("Sec-WebSocket-Version", "13")
	}
	w.WriteHeader(status)
	return nil
}

// isUpgrade reports whether req asks for a WebSocket: an HTTP/1.1 upgrade,
// or an extended CONNECT over HTTP/2 or HTTP/3 (RFC 8441, RFC 9220), which
// reverse_proxy turns into an upgrade to the upstream.
func isUpgrade(req *http.Request) bool {
	return headerHasToken(req.Header["Upgrade"], "websocket") && headerHasToken(req.Header["Connection"], "upgrade") ||
		isExtendedConnect(req)
}

// isExtendedConnect reports whether req is a WebSocket over HTTP/2 or
// HTTP/3, as reverse_proxy recognises it.
func isExtendedConnect(req *http.Request) bool {
	return req.Method == http.MethodConnect &&
		(req.ProtoMajor == 2 && req.Header.Get(":protocol") == "websocket" ||
			req.ProtoMajor == 3 && req.Proto == "websocket")
}

func headerHasToken(lines []string, token string) bool {
	for _, line := range lines {
		for line != "" {
			var t string
			t, line, _ = strings.Cut(line, ",")
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// closeHandshake completes the WebSocket handshake itself and sends one
// Close frame, so that a browser reports code in CloseEvent.code; then it
// waits briefly for the client's Close and closes the connection. The
// upstream is never involved.
func (h *Handler) closeHandshake(w http.ResponseWriter, req *http.Request, code uint16, why, token string) error {
	if isExtendedConnect(req) {
		return closeStream(w, req, code, why, token)
	}
	conn, brw, err := acceptHandshake(w, req, token, func(b []byte) []byte {
		return appendCloseFrame(b, code, why)
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	awaitClose(brw.Reader)
	return nil
}

// closeStream is closeHandshake for a WebSocket over HTTP/2 or HTTP/3: the
// handshake is a 200 on the request's stream, which then carries the frames.
func closeStream(w http.ResponseWriter, req *http.Request, code uint16, why, token string) error {
	if proto := selectProtocol(req, token); proto != "" {
		w.Header()["Sec-WebSocket-Protocol"] = []string{proto}
	}
	w.WriteHeader(http.StatusOK)
	var buf [128]byte
	if _, err := w.Write(appendCloseFrame(buf[:0], code, why)); err != nil {
		return err
	}
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		return err
	}
	_ = rc.SetReadDeadline(time.Now().Add(closeWait))
	awaitClose(req.Body)
	return nil
}

// acceptHandshake checks that req is a WebSocket handshake the module can
// answer, hijacks the connection and writes the 101 response, followed by
// what then appends (a Close frame, say) in the same write. The deadline
// for the connection is closeWait from now; the caller owns the connection.
func acceptHandshake(w http.ResponseWriter, req *http.Request, token string, then func([]byte) []byte) (net.Conn, *bufio.ReadWriter, error) {
	if req.Method != http.MethodGet || req.ProtoMajor != 1 || req.Header.Get("Sec-Websocket-Version") != "13" {
		return nil, nil, errNotWebSocket
	}
	key := req.Header.Get("Sec-Websocket-Key")
	if raw, err := base64.StdEncoding.DecodeString(key); err != nil || len(raw) != 16 {
		return nil, nil, errNotWebSocket
	}
	proto := selectProtocol(req, token)

	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, nil, errNotWebSocket
	}

	var buf [512]byte
	b := append(buf[:0], "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	b = appendAccept(b, key)
	if proto != "" {
		b = append(b, "\r\nSec-WebSocket-Protocol: "...)
		b = append(b, proto...)
	}
	b = append(b, "\r\n\r\n"...)
	if then != nil {
		b = then(b)
	}
	_ = conn.SetDeadline(time.Now().Add(closeWait))
	if _, err := conn.Write(b); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, brw, nil
}

// selectProtocol picks the subprotocol the module's own 101 selects:
// browsers fail a connection whose 101 selects none although they offered
// some, before reading any frame. It is the first offered that is not the
// token, does not look like a JWT (a token for a source not configured),
// and is a protocol name: short, and an RFC 7230 token (RFC 6455, section
// 4.1), so that nothing else is echoed in a response header.
func selectProtocol(req *http.Request, token string) string {
	var proto string
	eachProtocol(req.Header[headerProtocol], func(p string) bool {
		if p != token && len(p) < 128 && httpguts.ValidHeaderFieldName(p) &&
			!(strings.HasPrefix(p, "eyJ") && strings.Count(p, ".") == 2) {
			proto = p
			return false
		}
		return true
	})
	return proto
}

func appendAccept(dst []byte, key string) []byte {
	s := sha1.New()
	s.Write([]byte(key))
	s.Write([]byte(websocketGUID))
	var sum [sha1.Size]byte
	return base64.StdEncoding.AppendEncode(dst, s.Sum(sum[:0]))
}

// awaitClose reads frames from a refused client until its Close frame, the
// deadline, or maxDrain bytes, whichever comes first.
func awaitClose(br io.Reader) {
	r := io.LimitReader(br, maxDrain)
	var hb [maxFrameHeader]byte
	for {
		fh, err := readFrameHeader(r, &hb)
		if err != nil || fh.opcode == opClose {
			return // closed, timed out, malformed or done: the end either way
		}
		if _, err := io.CopyN(io.Discard, r, fh.length); err != nil {
			return
		}
	}
}
