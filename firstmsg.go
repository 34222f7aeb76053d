package wsauth

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

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
	errNoUpstream     = errors.New("the upstream did not switch protocols")

	refuseTooManyPending = &refusal{reason: reasonRateLimited, detail: errTooManyPending, retry: time.Second}
)

// serveFirstMessage runs the first_message flow on a WebSocket that carried
// no token in the other sources, over any HTTP version. The origin has been
// checked, and the handshake counted by the rate limit per IP.
//
// The handshake is decided by the config that answered it, and only while
// that config is loaded: a reload closes a pending handshake with 1001, as
// reverse_proxy closes the connections of the old config, and the tunnel
// opens only if the config is still loaded when the upstream answers.
func (h *Handler) serveFirstMessage(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	hs := &handshake{w: w, r: r, src: &firstMessageSource}
	// Until reverse_proxy takes the stream, whatever happens, even a panic,
	// the client gets an answer: a Close frame once the module answered the
	// handshake (hs.stream), else a status.
	handedOn := false
	defer func() {
		if handedOn {
			return
		}
		if v := recover(); v != nil {
			_ = h.recovered(hs, v)
		}
	}()
	key := ipKey(clientIP(r))
	if !pendingFirstMessages.acquire(key) {
		return h.refuse(hs, refuseTooManyPending)
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
	cs, err := acceptStream(hs.w, r, proto, nil)
	if errors.Is(err, errNotWebSocket) {
		return h.refuse(hs, &refusal{reason: reasonMissing, detail: err})
	}
	if err != nil {
		return nil // the client is gone
	}
	hs.stream = cs

	// A reload ends the wait at once.
	unwatch := context.AfterFunc(h.ctx, cs.interrupt)
	defer unwatch()

	cs.setDeadline(time.Now().Add(h.firstMsg.timeout))
	token, err := h.readAuthMessage(cs.br)
	if h.ctx.Err() != nil {
		return h.refuse(hs, refuseGoingAway)
	}
	if err != nil {
		if errors.Is(err, errFirstMessage) {
			return h.refuse(hs, &refusal{reason: reasonInvalid, detail: err})
		}
		return h.refuse(hs, &refusal{reason: reasonMissing, detail: err})
	}
	cs.setDeadline(time.Time{})

	hs.token = token // kept by the live connection of an opaque one
	if ref := h.checkToken(token, &hs.id); ref != nil {
		return h.refuse(hs, ref)
	}
	hs.id.source = sourceFirstMessage
	h.accepted(hs, nil)
	release() // decided: the connection is no longer pending

	if proto == "" {
		r.Header.Del(headerProtocol)
	} else {
		r.Header[headerProtocol] = []string{proto}
	}
	r.Header.Del("Sec-Websocket-Extensions")

	// reverse_proxy takes the stream over as it takes any upgraded
	// connection: by hijacking it after the upstream's 101. Over HTTP/2 and
	// HTTP/3 the stream is handed to it as a connection too, with the
	// request put in the HTTP/1.1 form reverse_proxy upgrades, so that only
	// a real switch of protocols opens the tunnel (a plain 200 from the
	// upstream is no WebSocket).
	if cs.conn == nil {
		r = asUpgrade(r)
	}
	if h.ctx.Err() != nil {
		return h.refuse(hs, refuseGoingAway)
	}
	slot, ref := h.takeSlot(hs)
	if ref != nil {
		return h.refuse(hs, ref)
	}
	hand := &handOff{stream: cs, header: make(http.Header), unwatch: unwatch}
	lc, w := h.newLive(hs, hand, r)
	if slot {
		lc.slots = h.slots
	}
	defer lc.end()
	handedOn = true
	err = next.ServeHTTP(w, r)
	if !hand.taken {
		if h.ctx.Err() != nil {
			return h.refuse(hs, refuseGoingAway)
		}
		// The upstream did not switch protocols: the client cannot be
		// served, a server-side failure.
		if err == nil {
			err = errNoUpstream
		}
		return h.refuse(hs, &refusal{reason: reasonUnavailable, detail: err})
	}
	return nil
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
		typ, token, err := tokenMessage(payload, nil)
		if err != nil || string(typ) != h.firstMsg.typ || len(token) == 0 {
			return "", errFirstMessage
		}
		return string(token), nil
	}
}

// firstMessageSource is what the logs name as the source of a first-message
// token.
var firstMessageSource = tokenSource{kind: sourceFirstMessage}

// handOff is the ResponseWriter reverse_proxy gets in the first_message
// flow over HTTP/1.1: the client already has its 101, so the upstream's
// response head is dropped, and Hijack hands over the client connection,
// if the config is still loaded.
type handOff struct {
	stream  *clientStream
	header  http.Header
	status  int
	taken   bool
	unwatch func() bool // stops the config watch; false once the config is unloaded
}

func (ho *handOff) Header() http.Header { return ho.header }

func (ho *handOff) WriteHeader(status int) {
	if ho.status == 0 {
		ho.status = status
	}
}

func (ho *handOff) Write(b []byte) (int, error) {
	if ho.status == 0 {
		ho.status = http.StatusOK
	}
	return len(b), nil // an error page from the upstream: not for a WebSocket client
}

func (ho *handOff) Flush() {}

// take reports whether the stream may go to reverse_proxy now that the
// upstream switched protocols: only while the config is loaded, or
// reverse_proxy's cleanup may have run already and would never close it.
func (ho *handOff) take() bool {
	if !ho.taken && ho.unwatch() {
		ho.taken = true
	}
	return ho.taken
}

func (ho *handOff) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if ho.status != http.StatusSwitchingProtocols || ho.taken {
		return nil, nil, http.ErrNotSupported
	}
	if !ho.take() {
		return nil, nil, errGoingAway
	}
	if ho.stream.conn != nil {
		return ho.stream.conn, ho.stream.brw, nil
	}
	// As net/http hands out a hijacked connection: what the reader holds
	// already is in the bufio.Reader, the rest is read from the conn.
	sc := &streamConn{stream: ho.stream}
	return sc, bufio.NewReadWriter(ho.stream.br, bufio.NewWriterSize(sc, 64)), nil
}

// asUpgrade returns r, an extended CONNECT (HTTP/2 or HTTP/3), in the form
// of the HTTP/1.1 upgrade that reverse_proxy sends upstream anyway.
func asUpgrade(r *http.Request) *http.Request {
	u := r.WithContext(r.Context())
	u.Method = http.MethodGet
	u.Proto, u.ProtoMajor, u.ProtoMinor = "HTTP/1.1", 1, 1
	u.Body = http.NoBody
	u.Header.Del(":protocol")
	u.Header.Set("Upgrade", "websocket")
	u.Header.Set("Connection", "Upgrade")
	u.Header.Set("Sec-Websocket-Version", "13")
	if u.Header.Get("Sec-Websocket-Key") == "" {
		var key [16]byte
		_, _ = rand.Read(key[:])
		u.Header.Set("Sec-Websocket-Key", base64.StdEncoding.EncodeToString(key[:]))
	}
	return u
}

// streamConn is an HTTP/2 or HTTP/3 WebSocket stream as the net.Conn that
// reverse_proxy hijacks: reads come from the request body, writes go to
// the response and are flushed at once, and closing it ends the client's
// half of the stream.
type streamConn struct {
	stream *clientStream
}

func (sc *streamConn) Read(p []byte) (int, error) { return sc.stream.body.Read(p) }

func (sc *streamConn) Write(p []byte) (int, error) {
	if err := sc.stream.write(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (sc *streamConn) Close() error                       { return sc.stream.body.Close() }
func (sc *streamConn) LocalAddr() net.Addr                { return streamAddr{} }
func (sc *streamConn) RemoteAddr() net.Addr               { return streamAddr{} }
func (sc *streamConn) SetDeadline(t time.Time) error      { sc.stream.setDeadline(t); return nil }
func (sc *streamConn) SetReadDeadline(t time.Time) error  { return sc.stream.rc.SetReadDeadline(t) }
func (sc *streamConn) SetWriteDeadline(t time.Time) error { return sc.stream.rc.SetWriteDeadline(t) }

// streamAddr stands for the address of a stream, which has none of its own.
type streamAddr struct{}

func (streamAddr) Network() string { return "stream" }
func (streamAddr) String() string  { return "stream" }
