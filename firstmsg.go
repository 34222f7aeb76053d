package wsauth

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The first_message token source: for browsers that should keep tokens out
// of URLs. The module answers the handshake itself, reads the client's first
// message {"type":"auth","token":"<jwt>"}, and only for a valid token lets
// the next handler (reverse_proxy) dial the upstream, handing it the
// already-upgraded client connection. The upstream never sees the message.

const (
	defaultFirstMessageType    = "auth"
	defaultFirstMessageTimeout = 5 * time.Second
	maxFirstMessageTimeout     = time.Minute
	// firstMessageSlack is what an auth message may hold beyond the token.
	firstMessageSlack = 1 << 10
)

// firstMessage is the compiled first_message source.
type firstMessage struct {
	typ     string
	timeout time.Duration
}

var (
	errFirstMessage = errors.New("first message is not an auth message")
	errClientClosed = errors.New("client closed before authenticating")
)

// Pending first-message handshakes (answered, and waiting for the auth
// message) hold a goroutine and a connection each. They are bounded in the
// process, and per client IP (IPv6 by /64), so that silent clients cannot
// pile up until the timeout; beyond the bound a handshake is refused as
// rate_limited.
const (
	maxPendingPerIP = 32
	maxPendingTotal = 4096
)

var pendingFirstMessages = &pendingCounter{perIP: make(map[string]int)}

// pendingCounter counts pending handshakes. Its map holds only keys with
// a pending handshake, so at most maxPendingTotal of them.
type pendingCounter struct {
	mu    sync.Mutex
	total int
	perIP map[string]int
}

func (p *pendingCounter) acquire(key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.total >= maxPendingTotal || p.perIP[key] >= maxPendingPerIP {
		return false
	}
	p.total++
	p.perIP[key]++
	return true
}

func (p *pendingCounter) release(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total--
	if p.perIP[key]--; p.perIP[key] <= 0 {
		delete(p.perIP, key)
	}
}

var (
	errTooManyPending = errors.New("too many pending first-message handshakes")
	errGoingAway      = errors.New("config unloaded before the handshake was decided")
)

// serveFirstMessage runs the first_message flow on an upgrade that carried
// no token in the other sources. The origin has been checked, and the
// handshake counted by the rate limit per IP.
//
// The handshake is decided by the config that answered it, and only while
// that config is loaded: a reload closes a pending handshake with 1001, as
// reverse_proxy closes the connections of the old config, and the upstream
// is dialed only if the config is still loaded when the upstream answers.
func (h *Handler) serveFirstMessage(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	src := &tokenSource{kind: sourceFirstMessage}
	key := ipKey(clientIP(r))
	if !pendingFirstMessages.acquire(key) {
		h.logRejection(r, reasonRateLimited, src, &identity{}, errTooManyPending)
		w.Header().Set("Retry-After", "1")
		return h.reject(w, r, reasonRateLimited, "")
	}
	pending := true
	release := func() {
		if pending {
			pending = false
			pendingFirstMessages.release(key)
		}
	}
	defer release()

	// Only the subprotocol selected here can be used end to end: the client
	// has it before the upstream is dialed. Extensions are not negotiated.
	proto := selectProtocol(r, "")
	conn, brw, err := acceptHandshake(w, r, "", nil)
	if errors.Is(err, errNotWebSocket) {
		h.logRejection(r, reasonMissing, nil, &identity{}, err)
		return h.rejectStatus(w, reasonMissing)
	}
	if err != nil {
		return nil // the client is gone
	}

	// The connection is the module's until reverse_proxy takes it: whatever
	// happens, even a panic, the client gets a Close frame.
	handedOn := false
	defer func() {
		if handedOn {
			return
		}
		if v := recover(); v != nil {
			h.logger.Error("internal error deciding a first-message handshake; please report it",
				zap.String("panic", truncate(fmt.Sprint(v), 200)), zap.String("remote_ip", clientIP(r)))
			markRefused(r, reasonInternal, &identity{})
			closeClient(conn, brw.Reader, h.codes[reasonInternal], reasonInternal.String(), true)
		}
	}()
	refuse := func(rsn reason, id *identity, detail error) error {
		h.logRejection(r, rsn, src, id, detail)
		closeClient(conn, brw.Reader, h.codes[rsn], rsn.String(), !errors.Is(detail, errClientClosed))
		return nil
	}
	goingAway := func() error {
		h.logRejection(r, reasonUnavailable, src, &identity{}, errGoingAway)
		closeClient(conn, brw.Reader, closeGoingAway, "going away", true)
		return nil
	}

	// A reload ends the wait at once.
	unwatch := context.AfterFunc(h.ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	defer unwatch()

	_ = conn.SetDeadline(time.Now().Add(h.firstMsg.timeout))
	token, err := h.readAuthMessage(brw.Reader)
	if h.ctx.Err() != nil {
		return goingAway()
	}
	if err != nil {
		if errors.Is(err, errFirstMessage) {
			return refuse(reasonInvalid, &identity{}, err)
		}
		return refuse(reasonMissing, &identity{}, err)
	}
	_ = conn.SetDeadline(time.Time{})

	id := new(identity)
	if rsn, ok, detail := h.verify(token, id); !ok {
		return refuse(rsn, id, detail)
	}
	id.source = sourceFirstMessage
	h.accepted(r, src, id)
	release() // decided: the connection is no longer pending

	if proto == "" {
		r.Header.Del(headerProtocol)
	} else {
		r.Header[headerProtocol] = []string{proto}
	}
	r.Header.Del("Sec-Websocket-Extensions")

	tw := &tunnelWriter{conn: conn, brw: brw, header: make(http.Header), unwatch: unwatch}
	handedOn = true
	err = next.ServeHTTP(tw, r)
	if !tw.hijacked {
		if h.ctx.Err() != nil {
			return goingAway()
		}
		// The upstream did not switch protocols: tell the client it cannot
		// be served, as a server-side failure.
		if err != nil {
			h.logger.Error("upstream of an authenticated websocket failed", zap.Error(err))
		}
		closeClient(conn, brw.Reader, 1011, "upstream unavailable", true)
	}
	return nil
}

// closeGoingAway is the close code of an endpoint that goes away (RFC 6455,
// section 7.4.1), as reverse_proxy sends it on a reload.
const closeGoingAway = 1001

// closeClient sends one Close frame with code and text on a connection
// whose handshake the module answered, waits up to closeWait for the
// client's Close unless it sent it already, and closes the connection.
func closeClient(conn net.Conn, br *bufio.Reader, code uint16, text string, await bool) {
	_ = conn.SetDeadline(time.Now().Add(closeWait))
	var buf [128]byte
	if _, err := conn.Write(appendCloseFrame(buf[:0], code, text)); err == nil && await {
		awaitClose(br)
	}
	conn.Close()
}

// readAuthMessage reads the first data message and returns its token.
// Pings and pongs before it are skipped; anything else ends the wait.
func (h *Handler) readAuthMessage(br *bufio.Reader) (string, error) {
	limit := int64(h.maxToken + firstMessageSlack)
	var hb [maxFrameHeader]byte
	for {
		fh, err := readFrameHeader(br, &hb)
		if err != nil {
			return "", err
		}
		if !fh.masked {
			return "", errFirstMessage
		}
		switch fh.opcode {
		case opPing, opPong:
			if _, err := io.CopyN(io.Discard, br, fh.length); err != nil {
				return "", err
			}
			continue
		case opClose:
			return "", errClientClosed
		case opText:
		default:
			return "", errFirstMessage
		}
		if !fh.fin || fh.rsv != 0 || fh.length > limit {
			return "", errFirstMessage
		}
		payload := make([]byte, fh.length)
		if _, err := io.ReadFull(br, payload); err != nil {
			return "", err
		}
		for i := range payload {
			payload[i] ^= fh.mask[i&3]
		}
		// As strictly as token claims: exact member names, no duplicates.
		var msg struct {
			Type  string `json:"type"`
			Token string `json:"token"`
		}
		if err := jsonv2.Unmarshal(payload, &msg); err != nil || msg.Type != h.firstMsg.typ || msg.Token == "" {
			return "", errFirstMessage
		}
		return msg.Token, nil
	}
}

// tunnelWriter is the ResponseWriter reverse_proxy gets in the
// first_message flow: the client already has its 101, so the upstream's
// response head is dropped, and Hijack hands over the client connection.
type tunnelWriter struct {
	conn     net.Conn
	brw      *bufio.ReadWriter
	header   http.Header
	status   int
	hijacked bool
	unwatch  func() bool // stops the config watch; false once the config is unloaded
}

func (tw *tunnelWriter) Header() http.Header { return tw.header }

func (tw *tunnelWriter) WriteHeader(status int) {
	if tw.status == 0 {
		tw.status = status
	}
}

func (tw *tunnelWriter) Write(b []byte) (int, error) {
	if tw.status == 0 {
		tw.status = http.StatusOK
	}
	return len(b), nil // an error page from the upstream: not for a WebSocket client
}

func (tw *tunnelWriter) Flush() {}

func (tw *tunnelWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if tw.status != http.StatusSwitchingProtocols || tw.hijacked {
		return nil, nil, http.ErrNotSupported
	}
	// The upstream answered; the config must still be loaded for the
	// tunnel to open, or reverse_proxy's cleanup may have run already
	// and would never close it.
	if !tw.unwatch() {
		return nil, nil, errGoingAway
	}
	tw.hijacked = true
	return tw.conn, tw.brw, nil
}
