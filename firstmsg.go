package wsauth

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"time"

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

// serveFirstMessage runs the first_message flow on an upgrade that carried
// no token in the other sources. The origin has been checked.
func (h *Handler) serveFirstMessage(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
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
	src := &tokenSource{kind: sourceFirstMessage}
	refuse := func(rsn reason, id *identity, detail error) error {
		h.logRejection(r, rsn, src, id, detail)
		_ = conn.SetDeadline(time.Now().Add(closeWait))
		var buf [128]byte
		_, err := conn.Write(appendCloseFrame(buf[:0], h.codes[rsn], rsn.String()))
		if err == nil && !errors.Is(detail, errClientClosed) {
			awaitClose(brw.Reader)
		}
		conn.Close()
		return nil
	}

	_ = conn.SetDeadline(time.Now().Add(h.firstMsg.timeout))
	token, err := h.readAuthMessage(brw.Reader)
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

	if proto == "" {
		r.Header.Del(headerProtocol)
	} else {
		r.Header[headerProtocol] = []string{proto}
	}
	r.Header.Del("Sec-Websocket-Extensions")

	tw := &tunnelWriter{conn: conn, brw: brw, header: make(http.Header)}
	err = next.ServeHTTP(tw, r)
	if !tw.hijacked {
		// The upstream did not switch protocols: tell the client it cannot
		// be served, as a server-side failure.
		if err != nil {
			h.logger.Error("upstream of an authenticated websocket failed", zap.Error(err))
		}
		var buf [64]byte
		_ = conn.SetDeadline(time.Now().Add(closeWait))
		if _, err := conn.Write(appendCloseFrame(buf[:0], 1011, "upstream unavailable")); err == nil {
			awaitClose(brw.Reader)
		}
		conn.Close()
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
		var msg struct {
			Type  string `json:"type"`
			Token string `json:"token"`
		}
		if err := json.Unmarshal(payload, &msg); err != nil || msg.Type != h.firstMsg.typ || msg.Token == "" {
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
	tw.hijacked = true
	return tw.conn, tw.brw, nil
}
