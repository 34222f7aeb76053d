package wsauth

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
)

// The copy loops of a watched HTTP/1.1 connection. reverse_proxy relays an
// upgraded connection with io.CopyBuffer in each direction, and io.CopyBuffer
// hands the loop to the connection when it is an io.WriterTo (the client's
// bytes) or an io.ReaderFrom (the upstream's). The watched connection is both,
// so that an idle WebSocket holds no relay buffer: reverse_proxy's own loops
// would keep a 32 KiB buffer per direction for as long as the connection
// lives, most of what an idle connection costs Caddy. Here a direction takes
// a 32 KiB buffer from a pool while bytes flow and gives it back when they
// stop: the client's direction waits for the client's next bytes without a
// buffer (where the connection can tell, see newReadWaiter) or, over TLS,
// with 16 KiB of its own; the upstream's reads into 4 KiB of its own until
// a read fills them.

const (
	// relayBufferSize is the buffer of a direction while bytes flow, the
	// size reverse_proxy's loops use.
	relayBufferSize = 32 << 10
	// idleReadSize is the buffer the upstream's direction waits with: a
	// message up to it goes in one read and one write, as before.
	idleReadSize = 4 << 10
	// maxTLSPlaintext is the most a TLS record carries (RFC 8446, 5.1).
	maxTLSPlaintext = 16 << 10
)

var relayBuffers = sync.Pool{
	New: func() any {
		b := make([]byte, relayBufferSize)
		return &b
	},
}

// WriteTo relays the client's bytes to the upstream, through the watch: it is
// reverse_proxy's copy toward the upstream.
func (wc *watchedConn) WriteTo(w io.Writer) (int64, error) {
	c := (*liveConn)(wc)
	wait := newReadWaiter(c.conn) // nil: a read waits with a buffer
	var own []byte
	if _, ok := c.conn.(*tls.Conn); ok {
		// A read of a TLS connection returns one record at most, 16 KiB
		// of plaintext: a buffer of that size reads as much a call as the
		// pool's, and waits holding half of it.
		own = make([]byte, maxTLSPlaintext)
	}
	var buf *[]byte // from the pool
	defer func() {
		if buf != nil {
			relayBuffers.Put(buf)
		}
	}()
	var written int64
	for {
		p := own
		if buf != nil {
			p = *buf
		} else if own == nil || len(c.in.hold) > 0 { // a held refresh candidate may need more room
			if wait != nil && c.src == c.conn && c.readsClient() {
				// Its error, if any, is the read's too, which reports it.
				_ = wait.wait()
			}
			buf = relayBuffers.Get().(*[]byte)
			p = *buf
		}
		n, err := c.readSome(p, true)
		if done, err := relayed(&written, w, p[:n], err); done {
			return written, err
		}
		switch {
		case buf == nil && n == len(p):
			// Its own buffer filled: the pool's for the next read.
			buf = relayBuffers.Get().(*[]byte)
		case buf != nil && n < len(p) && c.readsClient() && (own != nil || wait != nil && c.src == c.conn):
			// The pool's buffer goes back until the client sends again,
			// unless the read filled it: a client streaming bytes keeps
			// it without a check per read (each would cost a system
			// call), and one whose bytes filled it exactly, then stopped,
			// holds it until its next bytes, as reverse_proxy's own loop
			// holds its buffer.
			relayBuffers.Put(buf)
			buf = nil
		}
	}
}

// relayed is a step of a copy loop after its read, as io.Copy takes it:
// what was read goes to w first, then the read's error ends the copy, the
// end of the stream with a nil error. It reports whether the copy is over,
// and with what.
func relayed(written *int64, w io.Writer, p []byte, rerr error) (bool, error) {
	if len(p) > 0 {
		m, err := w.Write(p)
		*written += int64(m)
		if err == nil && m != len(p) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return true, err
		}
	}
	if rerr != nil {
		if errors.Is(rerr, io.EOF) {
			return true, nil
		}
		return true, rerr
	}
	return false, nil
}

// readsClient reports whether the next read starts by reading the client,
// rather than with what the watch has for the upstream already (the
// module's Close, a large frame read whole, an error) or with the end of
// a close: only then may it
// wait for the client first. (A frame header or a refresh candidate the
// last read held back is incomplete: the client's bytes come next.)
func (c *liveConn) readsClient() bool {
	in := &c.in
	return !c.closing() && in.outOff == in.outEnd && in.err == nil && !in.finished && !in.passing
}

// ReadFrom relays the upstream's bytes to the client, through the watch: it
// is reverse_proxy's copy toward the client. It reads into a small buffer of
// its own while the upstream sends little, and into a pooled one from a read
// that fills the small one until a read that does not fill that.
func (wc *watchedConn) ReadFrom(r io.Reader) (int64, error) {
	small := make([]byte, idleReadSize)
	buf := small
	var big *[]byte
	defer func() {
		if big != nil {
			relayBuffers.Put(big)
		}
	}()
	var written int64
	for {
		n, err := r.Read(buf)
		if done, err := relayed(&written, wc, buf[:n], err); done {
			return written, err
		}
		switch {
		case big == nil && n == len(buf):
			big = relayBuffers.Get().(*[]byte)
			buf = *big
		case big != nil && n < len(buf):
			relayBuffers.Put(big)
			big, buf = nil, small
		}
	}
}

// readWaiter waits until a connection has bytes to read, or an error or
// deadline to report, without a buffer and without reading: see
// readable_*.go.
type readWaiter interface {
	wait() error
}

var _ interface {
	io.WriterTo
	io.ReaderFrom
	net.Conn
} = (*watchedConn)(nil)
