package wsauth

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"time"
)

// The frame watcher: after the upstream switched protocols, reverse_proxy
// copies bytes between the client and the upstream in two loops of its
// own. The watcher sits inside them, in the client's connection (HTTP/1.1)
// or in the request body and the response writer (HTTP/2 and HTTP/3): it
// reads frame headers in both directions as the bytes pass, filters client
// messages in place in reverse_proxy's buffer (nothing is copied but what
// a dropped frame leaves behind), and injects frames at frame boundaries.
// It starts no goroutine.

var (
	// errLiveClosed ends reverse_proxy's copy from the client once the
	// module closed the connection: an error, not EOF, so that the tunnel
	// ends rather than half-closes.
	errLiveClosed = errors.New("websocket closed by ws_auth")
	// errShortBuffer is reverse_proxy's stream_buffer_size too small to
	// hold a frame header.
	errShortBuffer = errors.New("ws_auth: stream buffer smaller than a frame header")
)

// parseFrameHeader parses the frame header at the start of b. It returns
// the header's length, or 0 when b does not hold the whole header yet.
func parseFrameHeader(b []byte) (fh frameHeader, n int, err error) {
	if len(b) < 2 {
		return fh, 0, nil
	}
	n = 2
	switch b[1] & 0x7F {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b[1]&0x80 != 0 {
		n += 4
	}
	if len(b) < n {
		return fh, 0, nil
	}
	fh.fin = b[0]&0x80 != 0
	fh.rsv = b[0] & 0x70
	fh.opcode = b[0] & 0x0F
	fh.masked = b[1]&0x80 != 0
	rest := b[2:n]
	switch length := b[1] & 0x7F; length {
	case 126:
		fh.length = int64(binary.BigEndian.Uint16(rest))
		rest = rest[2:]
	case 127:
		u := binary.BigEndian.Uint64(rest)
		if u>>63 != 0 {
			return fh, n, errBadFrame
		}
		fh.length = int64(u)
		rest = rest[8:]
	default:
		fh.length = int64(length)
	}
	if fh.masked {
		copy(fh.mask[:], rest)
	}
	if fh.opcode >= opClose && (!fh.fin || fh.length > 125) {
		return fh, n, errControlFrame
	}
	return fh, n, nil
}

// unmask XORs b with the mask, the frame's payload starting at offset off,
// eight bytes at a time. It is its own inverse.
func unmask(b []byte, mask [4]byte, off int64) {
	var m [8]byte
	for i := range m {
		m[i] = mask[(off+int64(i))&3]
	}
	m64 := binary.LittleEndian.Uint64(m[:])
	i := 0
	for ; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], binary.LittleEndian.Uint64(b[i:])^m64)
	}
	for ; i < len(b); i++ {
		b[i] ^= m[i&7]
	}
}

// appendMaskedCloseFrame appends a Close frame with code and reason as a
// client sends it (masked), for the upstream.
func appendMaskedCloseFrame(dst []byte, code uint16, reason string) []byte {
	if len(reason) > maxCloseReason {
		reason = reason[:maxCloseReason]
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	dst = append(dst, 0x80|opClose, 0x80|byte(2+len(reason)))
	dst = append(dst, mask[:]...)
	start := len(dst)
	dst = binary.BigEndian.AppendUint16(dst, code)
	dst = append(dst, reason...)
	unmask(dst[start:], mask, 0)
	return dst
}

// appendTextFrame appends an unmasked text frame (server to client).
func appendTextFrame(dst, payload []byte) []byte {
	switch n := len(payload); {
	case n < 126:
		dst = append(dst, 0x80|opText, byte(n))
	case n <= 0xFFFF:
		dst = append(dst, 0x80|opText, 126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0x80|opText, 127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	return append(dst, payload...)
}

// inbound is the state of the client-to-upstream direction, touched only
// by the goroutine of reverse_proxy that reads from the client.
type inbound struct {
	left    int64  // payload bytes of the current frame still to come
	msgSize int64  // bytes of the current data message so far
	hold    []byte // a refresh candidate cut by the end of the buffer; or, passing, a frame to forward
	err     error  // a read error held back while bytes went out

	hdr [maxFrameHeader]byte // a frame header split across reads
	hn  uint8

	// The upstream's Close 1001 (masked, without a reason), which the
	// next reads return first: outBuf[outOff:outEnd].
	outBuf         [2 + 4 + 2]byte
	outOff, outEnd uint8

	keep       bool // the current frame is forwarded
	fragmented bool // a data message continues in the next frame
	dropMsg    bool // the current data message is not forwarded
	broken     bool // the client's framing broke: nothing more is forwarded

	passing        bool // hold is a whole frame larger than the buffer, going out
	upstreamClosed bool // the upstream got the module's Close
	clientClosed   bool // the client answered the module's Close
	stopped        bool // the client's time to answer is over
	finished       bool // reading is over
}

// atBoundary reports whether the upstream has had whole frames only.
func (in *inbound) atBoundary() bool { return in.hn == 0 && in.left == 0 && len(in.hold) == 0 }

// knownOpcode reports whether op is one that RFC 6455 defines.
func knownOpcode(op byte) bool {
	switch op {
	case opContinuation, opText, opBinary, opClose, opPing, opPong:
		return true
	}
	return false
}

// read is the client connection's Read as reverse_proxy's copy to the
// upstream calls it: client bytes, filtered in place in p, and what the
// module injects for the upstream.
func (c *liveConn) read(p []byte) (int, error) { return c.readSome(p, false) }

// readSome is read; with once, it returns after one read from the client
// even if nothing of it is forwarded (a dropped message, a refresh taken),
// so that the relay's loop can put its buffer back while the client is
// quiet rather than wait in the next read with it.
func (c *liveConn) readSome(p []byte, once bool) (int, error) {
	in := &c.in
	for {
		if in.outOff < in.outEnd {
			n := copy(p, in.outBuf[in.outOff:in.outEnd])
			in.outOff += uint8(n)
			return n, nil
		}
		if in.passing {
			// A text frame larger than the buffer that was read whole to
			// see whether it is a refresh message, and is not.
			n := copy(p, in.hold)
			if in.hold = in.hold[n:]; len(in.hold) == 0 {
				in.hold, in.passing = nil, false
			}
			return n, nil
		}
		if in.finished {
			return 0, errLiveClosed
		}
		if c.closing() {
			if !in.upstreamClosed && (in.atBoundary() || in.broken) {
				// At a frame boundary of a connection the module closes:
				// the upstream gets its Close.
				in.outOff, in.outEnd = 0, uint8(len(appendMaskedCloseFrame(in.outBuf[:0], closeGoingAway, "")))
				in.upstreamClosed = true
				continue
			}
			// The copy ends once the client answered the module's Close,
			// its time to answer is over, or its stream ended: not before,
			// so that the module's Close reaches it first.
			if in.upstreamClosed && (in.clientClosed || in.stopped || in.err != nil) {
				in.finished = true
				continue
			}
			if in.stopped {
				return 0, errLiveClosed // out of time in the middle of a frame
			}
		}
		if in.err != nil {
			return 0, in.err
		}
		// What the last read held back (a header cut by the end of the
		// buffer, or a refresh candidate) starts this one.
		carry := in.hdr[:in.hn]
		if len(in.hold) > 0 {
			carry = in.hold
		}
		hn := len(carry) // at most a refresh message
		if len(p) <= hn {
			return 0, errShortBuffer
		}
		copy(p, carry)
		in.hn, in.hold = 0, nil
		n, err := c.src.Read(p[hn:])
		if err != nil && c.interrupted.Load() {
			// The module's own interruption of a client that did not
			// answer its Close (a deadline, or the stream's body closed).
			err, in.stopped = nil, true
		}
		w := 0
		if hn+n > 0 {
			var ferr error
			if w, ferr = c.filter(p, hn+n); ferr != nil {
				err = ferr
			}
		}
		// An error goes out after the bytes before it, and after the
		// upstream's Close if the module is closing.
		in.err = err
		if w > 0 || once {
			return w, nil
		}
	}
}

// filter walks the frames in p[:n], starting at a frame boundary or inside
// the current frame's payload, and moves the bytes to forward to the front
// of p, returning how many there are. A header cut by the end of p is kept
// for the next read; a refresh message is completed from the client first.
func (c *liveConn) filter(p []byte, n int) (int, error) {
	in := &c.in
	if in.broken {
		return 0, nil // nothing of a broken client goes on
	}
	r, w := 0, 0
	for r < n {
		if in.left > 0 {
			k := int(min(in.left, int64(n-r)))
			if in.keep {
				if w != r {
					copy(p[w:], p[r:r+k])
				}
				w += k
			}
			r += k
			in.left -= int64(k)
			continue
		}
		fh, hl, err := parseFrameHeader(p[r:n])
		if err == nil && hl > 0 && (!fh.masked || !knownOpcode(fh.opcode)) {
			err = errBadFrame // RFC 6455, section 5.1 and 5.2
		}
		if err != nil {
			// The client's framing is broken: nothing more is forwarded,
			// and the connection is failed (RFC 6455, section 7.1.7). The
			// upstream has had whole frames only, so its Close can follow.
			in.broken = true
			c.shut(closeProtocolError, "protocol_error")
			return w, nil
		}
		if hl == 0 {
			in.hn = uint8(copy(in.hdr[:], p[r:n]))
			break
		}
		if c.isRefreshCandidate(&fh) && hl+int(fh.length) > len(p) {
			// Larger than the buffer the copy reads with (a max_token_size
			// above it, or a small stream_buffer_size over HTTP/2): it is
			// read whole into one of its own, at most a token and its
			// envelope, and decided whole, as a refresh message or as a
			// frame that goes on after the bytes before it.
			frame := make([]byte, hl+int(fh.length))
			k := copy(frame, p[r:n])
			if _, err := io.ReadFull(c.src, frame[k:]); err != nil {
				return w, err
			}
			r = n
			if !c.takeRefresh(&fh, frame[hl:]) && c.onFrame(&fh) {
				in.hold, in.passing = frame, true
			}
			break
		}
		if c.isRefreshCandidate(&fh) {
			end := r + hl + int(fh.length)
			if end > len(p) {
				// No room for it after the frames before it: the next
				// read starts with it.
				in.hold = append([]byte(nil), p[r:n]...)
				break
			}
			if end > n {
				// The rest of the frame is on its way: a refresh
				// message is decided whole.
				if _, err := io.ReadFull(c.src, p[n:end]); err != nil {
					return w, err
				}
				n = end
			}
			if c.takeRefresh(&fh, p[r+hl:end]) {
				r = end
				continue
			}
		}
		keep := c.onFrame(&fh)
		if keep {
			if w != r {
				copy(p[w:], p[r:r+hl])
			}
			w += hl
		}
		r += hl
		in.left, in.keep = fh.length, keep
	}
	return w, nil
}

// onFrame applies the message rules to a client frame and reports whether
// it is forwarded. Control frames always are, unless the module is closing
// the connection; data frames count as messages (the first frame of each)
// and toward the message size.
func (c *liveConn) onFrame(fh *frameHeader) bool {
	in := &c.in
	if c.closing() {
		if fh.opcode == opClose {
			in.clientClosed = true // the client answered the module's Close
		}
		return false // the upstream gets the module's Close instead
	}
	switch fh.opcode {
	case opText, opBinary:
		in.msgSize, in.dropMsg = 0, false
		in.fragmented = !fh.fin
		if !c.allowMessage() {
			in.dropMsg = true
		}
	case opContinuation:
		in.fragmented = !fh.fin
	default:
		return true
	}
	in.msgSize += fh.length
	if c.h.MaxMessageSize > 0 && in.msgSize > c.h.MaxMessageSize {
		c.h.violation(c, "too_big")
		c.shut(closeTooBig, "too_big")
		return false
	}
	return !in.dropMsg
}

// isRefreshCandidate reports whether a client frame may be a refresh
// message: with refresh_message on, an unfragmented, uncompressed text
// frame no larger than a token with its envelope.
func (c *liveConn) isRefreshCandidate(fh *frameHeader) bool {
	return c.h.refresh != "" && fh.opcode == opText && fh.fin && fh.rsv == 0 && fh.masked &&
		!c.in.fragmented && fh.length <= c.h.refreshLimit && !c.closing()
}

// outbound is the state of the upstream-to-client direction, guarded by
// liveConn.wmu.
type outbound struct {
	left int64
	hdr  [maxFrameHeader]byte
	hn   uint8
}

// atBoundary reports whether the next byte to the client starts a frame.
func (o *outbound) atBoundary() bool { return o.hn == 0 && o.left == 0 }

// scan advances over p, which goes to the client, and returns how many of
// its bytes reach the first frame boundary (len(p) if none is reached).
// With all true it goes on to the end of p.
func (o *outbound) scan(p []byte, all bool) int {
	i := 0
	for i < len(p) {
		if o.left > 0 {
			k := int(min(o.left, int64(len(p)-i)))
			o.left -= int64(k)
			i += k
			if o.left == 0 && !all {
				return i
			}
			continue
		}
		// A header, maybe begun in an earlier write.
		k := copy(o.hdr[o.hn:], p[i:])
		fh, hl, err := parseFrameHeader(o.hdr[:int(o.hn)+k])
		if err != nil {
			o.left, o.hn = 1<<62, 0 // not WebSocket framing: no boundary ahead
			return len(p)
		}
		if hl == 0 {
			o.hn += uint8(k)
			return len(p)
		}
		i += hl - int(o.hn)
		o.hn = 0
		o.left = fh.length
		if o.left == 0 && !all {
			return i
		}
	}
	return i
}

// write is the client connection's Write as reverse_proxy's copy from the
// upstream calls it: the bytes go to the client as they are, with the
// frames the module injects at frame boundaries. After the module's Close
// frame nothing more goes to the client.
func (c *liveConn) write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.done {
		return 0, net.ErrClosed
	}
	total := len(p)
	for len(p) > 0 {
		if c.sentClose {
			return total, nil
		}
		if len(c.pending) > 0 && c.out.atBoundary() {
			if err := c.flushPending(); err != nil {
				return total - len(p), err
			}
			continue
		}
		k := c.out.scan(p, len(c.pending) == 0)
		if _, err := c.dst.Write(p[:k]); err != nil {
			return total - len(p), err
		}
		p = p[k:]
	}
	if len(c.pending) > 0 && c.out.atBoundary() && !c.sentClose {
		if err := c.flushPending(); err != nil {
			return total, err
		}
	}
	return total, nil
}

// maxPending bounds the frames waiting for the upstream's next frame
// boundary, but for the module's Close.
const maxPending = 4 << 10

// inject sends frame to the client at the next frame boundary: at once if
// the upstream's stream is at one, else from write when it reaches one.
// close marks frame as the module's Close, after which nothing follows.
func (c *liveConn) inject(frame []byte, close bool) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.done || c.sentClose || c.closeQueued {
		return
	}
	if !close && len(c.pending)+len(frame) > maxPending {
		// The upstream is in the middle of a long frame, and the client
		// keeps asking for answers (refreshes, notices): the pending
		// answers stay bounded; the Close always has room.
		return
	}
	c.pending = append(c.pending, frame...)
	c.closeQueued = close
	if close {
		// The reading side sees the connection closing once its Close is
		// queued, and before it is written: so the client's answer to it
		// is never forwarded, and nothing the upstream answers to its own
		// Close goes to the client before it.
		c.state.CompareAndSwap(stateOpen, stateClosing)
	}
	if c.out.atBoundary() && c.dst != nil {
		_ = c.flushPending()
	}
}

// flushPending writes the injected frames; wmu must be held.
func (c *liveConn) flushPending() error {
	b := c.pending
	c.pending = c.pending[:0]
	if c.closeQueued {
		c.sentClose = true
	}
	if _, err := c.dst.Write(b); err != nil {
		return err
	}
	if c.stream {
		return http.NewResponseController(c.writer.ResponseWriter).Flush()
	}
	return nil
}

// liveWriter is the ResponseWriter the handlers after ws_auth get for an
// accepted WebSocket: once the upstream switched protocols it starts the
// connection's watch, and hands reverse_proxy a watched connection
// (HTTP/1.1 Hijack) or watches its writes (HTTP/2 and HTTP/3).
type liveWriter struct {
	http.ResponseWriter
	lc       *liveConn
	switched int16 // the status of a switch: 101, or 200 for extended CONNECT
	upgraded bool
}

func (lw *liveWriter) Unwrap() http.ResponseWriter { return lw.ResponseWriter }

func (lw *liveWriter) WriteHeader(status int) {
	if status == int(lw.switched) && !lw.upgraded {
		lw.upgraded = true
		if lw.lc.stream {
			lw.lc.dst = lw.ResponseWriter
			lw.lc.start()
		}
	}
	lw.ResponseWriter.WriteHeader(status)
}

func (lw *liveWriter) Write(p []byte) (int, error) {
	if lw.upgraded && lw.lc.stream && lw.lc.started {
		return lw.lc.write(p)
	}
	return lw.ResponseWriter.Write(p)
}

// FlushError flushes the stream; while the watch runs, not at the same
// time as an injected frame is written.
func (lw *liveWriter) FlushError() error {
	if lw.upgraded && lw.lc.stream && lw.lc.started {
		lw.lc.wmu.Lock()
		defer lw.lc.wmu.Unlock()
		if lw.lc.done {
			return net.ErrClosed
		}
	}
	return http.NewResponseController(lw.ResponseWriter).Flush()
}

// Hijack hands reverse_proxy the client's connection with the watch in
// it. Bytes the server had read ahead are read through the watch too: the
// returned reader holds none, and the connection reads them first.
//
// The returned bufio pair is the server's own, pointed at the watch, as
// Caddy's access-log recorder points it at its byte counter: its writer
// writes through the watch, and its reader, emptied, reads nothing. A pair
// of our own would be 208 bytes of garbage per connection; the server's
// is garbage anyway once reverse_proxy has flushed it.
func (lw *liveWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(lw.ResponseWriter).Hijack()
	if err != nil || !lw.upgraded || lw.lc.stream {
		return conn, brw, err
	}
	// What the writer holds (net/http's holds nothing) was written before
	// the watch: it goes as it would have.
	if err := brw.Writer.Flush(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	lc := lw.lc
	lc.conn, lc.dst = conn, conn
	if sc, ok := conn.(*streamConn); ok {
		lc.body = sc.stream.body // first_message over HTTP/2 or HTTP/3
	}
	lc.src = conn
	if brw.Reader.Buffered() > 0 {
		lc.src = &drainReader{br: brw.Reader, conn: conn, lc: lc}
		brw = bufio.NewReadWriter(bufio.NewReaderSize(eofReader{}, 16), brw.Writer)
	} else {
		brw.Reader.Reset(eofReader{})
	}
	lc.start()
	wc := (*watchedConn)(lc)
	brw.Writer.Reset(wc)
	return wc, brw, nil
}

// watchedConn is the client connection reverse_proxy copies to and from:
// the liveConn itself, seen as a net.Conn over its conn, rather than a
// wrapper of its own that the connection would keep for its whole life.
type watchedConn liveConn

func (wc *watchedConn) Read(p []byte) (int, error)  { return (*liveConn)(wc).read(p) }
func (wc *watchedConn) Write(p []byte) (int, error) { return (*liveConn)(wc).write(p) }

func (wc *watchedConn) Close() error                       { return wc.conn.Close() }
func (wc *watchedConn) LocalAddr() net.Addr                { return wc.conn.LocalAddr() }
func (wc *watchedConn) RemoteAddr() net.Addr               { return wc.conn.RemoteAddr() }
func (wc *watchedConn) SetDeadline(t time.Time) error      { return wc.conn.SetDeadline(t) }
func (wc *watchedConn) SetReadDeadline(t time.Time) error  { return wc.conn.SetReadDeadline(t) }
func (wc *watchedConn) SetWriteDeadline(t time.Time) error { return wc.conn.SetWriteDeadline(t) }

// CloseWrite half-closes the client connection, as reverse_proxy does when
// the upstream's side ends, where the connection can (TCP).
func (wc *watchedConn) CloseWrite() error {
	if cw, ok := wc.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// watchedBody is the request body of an HTTP/2 or HTTP/3 WebSocket, which
// reverse_proxy reads the client's frames from: the liveConn itself, seen
// as the body, as watchedConn is.
type watchedBody liveConn

func (wb *watchedBody) Read(p []byte) (int, error) { return (*liveConn)(wb).read(p) }
func (wb *watchedBody) Close() error               { return wb.body.Close() }

// drainReader reads what the server had buffered, then the connection
// itself, dropping the buffer once it is empty: an idle connection keeps
// no read buffer.
type drainReader struct {
	br   *bufio.Reader
	conn net.Conn
	lc   *liveConn
}

func (d *drainReader) Read(p []byte) (int, error) {
	n, err := d.br.Read(p)
	if d.br.Buffered() == 0 {
		d.lc.src = d.conn
	}
	return n, err
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// interruptRead ends a pending read from the client now: a deadline on a
// connection, or closing an HTTP/2 or HTTP/3 body, whose stream a deadline
// would reset.
func (c *liveConn) interruptRead() {
	c.interrupted.Store(true)
	if c.body != nil {
		_ = c.body.Close()
		return
	}
	if c.conn != nil {
		_ = c.conn.SetReadDeadline(time.Now())
	}
}

// hardClose ends the connection without waiting any more.
func (c *liveConn) hardClose() {
	if c.body != nil {
		_ = c.body.Close()
	}
	if c.conn != nil {
		_ = c.conn.Close()
	}
}
