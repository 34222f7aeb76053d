package wsauth

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/http/httpguts"
)

// A clientStream is a WebSocket whose handshake the module answered itself:
// a hijacked HTTP/1.1 connection after a 101, or the request stream of an
// extended CONNECT over HTTP/2 or HTTP/3 after a 200. Refusals in close
// mode and first_message read and write frames through it, the same way
// over every HTTP version.
type clientStream struct {
	br *bufio.Reader // frames from the client

	// HTTP/1.1
	conn net.Conn
	brw  *bufio.ReadWriter

	// HTTP/2 and HTTP/3
	w    http.ResponseWriter
	rc   *http.ResponseController
	body io.ReadCloser

	mu    sync.Mutex // guards ended and the deadlines
	ended bool       // hung up: the stream may be gone with its handler

	// The read deadline of an HTTP/2 or HTTP/3 stream: when it passes, the
	// body is closed, which ends a pending read. (The server's own read
	// deadline would reset the stream, and the Close frame could not go.)
	readMu    sync.Mutex
	readTimer *time.Timer
}

const (
	// closeWait bounds how long a refused client has to answer our Close
	// frame before the connection is closed.
	closeWait = time.Second
	// maxDrain bounds what is read from a refused client while waiting for
	// its Close frame.
	maxDrain = 64 << 10
	// websocketGUID is from RFC 6455, section 1.3.
	websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
	// closeGoingAway is the close code of an endpoint that goes away (RFC
	// 6455, section 7.4.1), as reverse_proxy sends it on a reload.
	closeGoingAway = 1001
)

var errNotWebSocket = errors.New("not a valid websocket handshake")

// acceptStream answers req's WebSocket handshake itself, selecting proto
// (if not empty), and sends first (a frame, or nothing) with the response
// head. The stream's deadline is closeWait from now; the caller owns the
// stream and must end it with close or hangUp. errNotWebSocket means
// nothing was sent.
func acceptStream(w http.ResponseWriter, req *http.Request, proto string, first []byte) (*clientStream, error) {
	if isExtendedConnect(req) {
		if proto != "" {
			w.Header()["Sec-WebSocket-Protocol"] = []string{proto}
		}
		w.WriteHeader(http.StatusOK)
		cs := &clientStream{w: w, rc: http.NewResponseController(w), body: req.Body}
		cs.br = bufio.NewReaderSize(req.Body, 512)
		cs.setDeadline(time.Now().Add(closeWait))
		if err := cs.write(first); err != nil {
			return nil, err
		}
		return cs, nil
	}
	if req.Method != http.MethodGet || req.ProtoMajor != 1 || req.Header.Get("Sec-Websocket-Version") != "13" {
		return nil, errNotWebSocket
	}
	key := req.Header.Get("Sec-Websocket-Key")
	if raw, err := base64.StdEncoding.DecodeString(key); err != nil || len(raw) != 16 {
		return nil, errNotWebSocket
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, errNotWebSocket
	}
	var buf [512]byte
	b := append(buf[:0], "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	b = appendAccept(b, key)
	if proto != "" {
		b = append(b, "\r\nSec-WebSocket-Protocol: "...)
		b = append(b, proto...)
	}
	b = append(b, "\r\n\r\n"...)
	b = append(b, first...)
	_ = conn.SetDeadline(time.Now().Add(closeWait))
	if _, err := conn.Write(b); err != nil {
		conn.Close()
		return nil, err
	}
	return &clientStream{br: brw.Reader, conn: conn, brw: brw}, nil
}

// setDeadline sets the read and write deadline of the stream; the zero
// time clears them. It may be called from any goroutine: an HTTP/2
// writer's deadlines are not safe for concurrent use.
func (cs *clientStream) setDeadline(t time.Time) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.setDeadlineLocked(t)
}

// setDeadlineLocked is setDeadline with cs.mu held.
func (cs *clientStream) setDeadlineLocked(t time.Time) {
	if cs.conn != nil {
		_ = cs.conn.SetDeadline(t)
		return
	}
	// Writes get closeWait more, so that the Close frame still goes when
	// a read timed out: the server resets a stream whose write deadline
	// passes.
	wt := t
	if !t.IsZero() {
		wt = t.Add(closeWait)
	}
	_ = cs.rc.SetWriteDeadline(wt)
	cs.readMu.Lock()
	defer cs.readMu.Unlock()
	if cs.readTimer != nil {
		cs.readTimer.Stop()
		cs.readTimer = nil
	}
	if !t.IsZero() {
		cs.readTimer = time.AfterFunc(time.Until(t), func() { _ = cs.body.Close() })
	}
}

// write sends b to the client at once.
func (cs *clientStream) write(b []byte) error {
	if len(b) == 0 {
		if cs.conn == nil {
			return cs.rc.Flush()
		}
		return nil
	}
	if cs.conn != nil {
		_, err := cs.conn.Write(b)
		return err
	}
	if _, err := cs.w.Write(b); err != nil {
		return err
	}
	return cs.rc.Flush()
}

// close sends one Close frame with code and text, waits up to closeWait
// for the client's Close unless await is false (the client sent its own
// already), and hangs up.
func (cs *clientStream) close(code uint16, text string, await bool) {
	cs.setDeadline(time.Now().Add(closeWait))
	var buf [128]byte
	if cs.write(appendCloseFrame(buf[:0], code, text)) != nil {
		await = false
	}
	cs.hangUp(await)
}

// hangUp waits up to closeWait for the client's Close frame, if await,
// and ends the stream.
func (cs *clientStream) hangUp(await bool) {
	if await {
		cs.setDeadline(time.Now().Add(closeWait))
		awaitClose(cs.br)
	}
	cs.mu.Lock()
	cs.ended = true
	cs.mu.Unlock()
	if cs.conn != nil {
		cs.conn.Close()
		return
	}
	// The stream ends when the handler returns; the body is the client's
	// half of it.
	cs.setDeadline(time.Time{}) // no timer left behind
	cs.body.Close()
}

// interrupt ends a wait on the stream now, from another goroutine: the
// pending read or write returns a timeout. A stream that was hung up is
// left alone (over HTTP/2 its writer is gone with the handler).
func (cs *clientStream) interrupt() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if !cs.ended {
		cs.setDeadlineLocked(time.Now())
	}
}

// closeHandshake completes the WebSocket handshake itself and sends one
// Close frame, so that a browser reports code in CloseEvent.code; then it
// waits briefly for the client's Close and closes the connection. The
// upstream is never involved.
func closeHandshake(w http.ResponseWriter, req *http.Request, code uint16, why, token string) error {
	var buf [128]byte
	cs, err := acceptStream(w, req, selectProtocol(req, token), appendCloseFrame(buf[:0], code, why))
	if err != nil {
		return err
	}
	cs.hangUp(true)
	return nil
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
