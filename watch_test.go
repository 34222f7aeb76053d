package wsauth

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// The frame watcher (watch.go) on its own: a liveConn built without Caddy,
// its read driven the way reverse_proxy's io.CopyBuffer drives it, its
// write fed a server's frames in pieces. Run the fuzzer with:
//
//	go test -run '^$' -fuzz FuzzWatcherRelay -fuzztime 20s .

// testMask is the mask of the client frames the tests build.
var testMask = []byte{0x3a, 0xc5, 0x7e, 0x91}

// clientFrame builds a frame: masked with mask (a client's) or unmasked (nil,
// a server's). ext forces the 16-bit (2) or 64-bit (8) length form, which
// a short payload would not need.
func clientFrame(fin bool, op byte, payload, mask []byte, ext int) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0, 0}
	switch n := len(payload); {
	case ext == 8 || n > 0xFFFF:
		b[1] = 127
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	case ext == 2 || n >= 126:
		b[1] = 126
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b[1] = byte(n)
	}
	if mask == nil {
		return append(b, payload...)
	}
	b[1] |= 0x80
	b = append(b, mask...)
	start := len(b)
	b = append(b, payload...)
	for i := range payload {
		b[start+i] ^= mask[i&3]
	}
	return b
}

// cf is a client frame, masked, its length in the shortest form.
func cf(fin bool, op byte, payload string) []byte {
	return clientFrame(fin, op, []byte(payload), testMask, 0)
}

func cat(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

// chunkReader returns b in chunks: sizes[i]+1 bytes at the i-th read
// (cycling through sizes), or as much as the caller's buffer takes when
// sizes is empty. With eofWithData the last chunk comes with io.EOF.
type chunkReader struct {
	b           []byte
	sizes       []byte
	i           int
	eofWithData bool
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := len(r.b)
	if len(r.sizes) > 0 {
		n = min(n, int(r.sizes[r.i%len(r.sizes)])+1)
		r.i++
	}
	n = copy(p, r.b[:n])
	r.b = r.b[n:]
	if len(r.b) == 0 && r.eofWithData {
		return n, io.EOF
	}
	return n, nil
}

// splitReader returns b cut at the given offsets, one piece a read (or
// less, if the caller's buffer is smaller).
type splitReader struct {
	b    []byte
	off  int
	cuts []int
}

func (r *splitReader) Read(p []byte) (int, error) {
	if r.off == len(r.b) {
		return 0, io.EOF
	}
	end := len(r.b)
	for _, c := range r.cuts {
		if c > r.off {
			end = min(end, c)
		}
	}
	n := copy(p, r.b[r.off:end])
	r.off += n
	return n, nil
}

// watcherHandler is a Handler with the fields Provision sets for the rules
// on live connections: none unless opts sets some.
func watcherHandler(t testing.TB, opts ...func(h *Handler)) *Handler {
	t.Helper()
	h := &Handler{logger: zap.NewNop(), blocklist: noBlocklist{}}
	if err := h.compileCloseCodes(); err != nil {
		t.Fatal(err)
	}
	for _, o := range opts {
		o(h)
	}
	return h
}

// firstMessageOnly is a message rate per connection that lets the first
// message through and drops every later one (for a thousand hours).
func firstMessageOnly(h *Handler) {
	window := int64(1000 * time.Hour)
	h.msgRate = &messageRate{interval: window, window: window, action: "drop"}
}

// relay drives c.read as io.CopyBuffer would, with a buffer of bufSize,
// until an error, and returns what the upstream got and the error.
func relay(t testing.TB, c *liveConn, bufSize, limit int) ([]byte, error) {
	t.Helper()
	buf := make([]byte, bufSize)
	var out []byte
	for range limit {
		n, err := c.read(buf)
		if n < 0 || n > len(buf) {
			t.Fatalf("read returned %d with a buffer of %d", n, len(buf))
		}
		out = append(out, buf[:n]...)
		if err != nil {
			return out, err
		}
	}
	t.Fatalf("read did not end after %d calls", limit)
	return nil, nil
}

// runRead relays stream from a new connection of h, read in chunks of
// sizes through a buffer of bufSize; shut is whether a rule closed the
// connection.
func runRead(t testing.TB, h *Handler, stream, sizes []byte, eofWithData bool, bufSize int) (out []byte, err error, c *liveConn, shut bool) {
	t.Helper()
	c = &liveConn{h: h, src: &chunkReader{b: stream, sizes: sizes, eofWithData: eofWithData}, dst: io.Discard}
	defer c.end() // stops the close sequence's timer, if a rule armed it
	out, err = relay(t, c, bufSize, 2*len(stream)+16)
	return out, err, c, c.closing()
}

// refFrame is a frame of a whole stream as the reference parser sees it.
type refFrame struct {
	start, end int
	hl         int
	fin        bool
	op         byte
	length     int
}

// refParse parses a whole stream at once, independently of the watcher:
// its complete frames, up to the first header that is not one (bad) or the
// first incomplete frame; tail is where it stopped.
func refParse(b []byte, client bool) (frames []refFrame, tail int, bad bool) {
	i := 0
	for len(b)-i >= 2 {
		b0, b1 := b[i], b[i+1]
		hl := 2
		n := uint64(b1 & 0x7F)
		switch n {
		case 126:
			hl += 2
		case 127:
			hl += 8
		}
		if b1&0x80 != 0 {
			hl += 4
		}
		if len(b)-i < hl {
			break
		}
		switch n {
		case 126:
			n = uint64(b[i+2])<<8 | uint64(b[i+3])
		case 127:
			n = binary.BigEndian.Uint64(b[i+2:])
		}
		fin, op := b0&0x80 != 0, b0&0x0F
		if n >= 1<<63 || (op >= 8 && (!fin || n > 125)) || client && (b1&0x80 == 0 || !knownOpcode(op)) {
			return frames, i, true
		}
		if uint64(len(b)-i-hl) < n {
			break
		}
		frames = append(frames, refFrame{start: i, end: i + hl + int(n), hl: hl, fin: fin, op: op, length: int(n)})
		i += hl + int(n)
	}
	return frames, i, false
}

// refWellFormed reports whether a client stream is whole and well framed:
// every frame complete, known opcodes only, continuations only inside a
// fragmented message and no new message inside one.
func refWellFormed(b []byte) ([]refFrame, bool) {
	frames, tail, bad := refParse(b, true)
	if bad || tail != len(b) {
		return nil, false
	}
	fragmented := false
	for _, f := range frames {
		switch f.op {
		case opText, opBinary:
			if fragmented {
				return nil, false
			}
			fragmented = !f.fin
		case opContinuation:
			if !fragmented {
				return nil, false
			}
			fragmented = !f.fin
		case opClose, opPing, opPong:
		default:
			return nil, false
		}
	}
	return frames, true
}

// refFirstMessage is what the upstream gets of a well-formed stream when
// only the first message may pass: every control frame, and the frames of
// the first data message.
func refFirstMessage(b []byte, frames []refFrame) []byte {
	var out []byte
	msg := -1
	for _, f := range frames {
		switch f.op {
		case opText, opBinary:
			msg++
			if msg != 0 {
				continue
			}
		case opContinuation:
			if msg != 0 {
				continue
			}
		}
		out = append(out, b[f.start:f.end]...)
	}
	return out
}

// refMaxSize is what the upstream gets of a well-formed stream under
// max_message_size (before the module's Close): the frames before the one
// that makes a message too big, and whether there is one.
func refMaxSize(b []byte, frames []refFrame, limit int) ([]byte, bool) {
	var out []byte
	size := 0
	for _, f := range frames {
		switch f.op {
		case opText, opBinary:
			size = f.length
		case opContinuation:
			size += f.length
		}
		if f.op < opClose && size > limit {
			return out, true
		}
		out = append(out, b[f.start:f.end]...)
	}
	return out, false
}

// namesRefresh reports whether a complete text frame of stream names the
// refresh type once unmasked.
func namesRefresh(stream []byte) bool {
	frames, _, _ := refParse(stream, true)
	for _, f := range frames {
		if f.op != opText {
			continue
		}
		payload := bytes.Clone(stream[f.start+f.hl : f.end])
		if stream[f.start+1]&0x80 != 0 {
			mask := stream[f.start+f.hl-4 : f.start+f.hl]
			for i := range payload {
				payload[i] ^= mask[i&3]
			}
		}
		if bytes.Contains(payload, []byte(`"refresh_token"`)) {
			return true
		}
	}
	return false
}

// refHeldHeader is how many bytes at the end of a stream are an
// incomplete frame header, which the watcher holds back for the next read
// (and so never forwards when the client stops there).
func refHeldHeader(b []byte, tail int, bad bool) int {
	if bad || tail == len(b) {
		return 0
	}
	rest := b[tail:]
	if len(rest) < 2 {
		return len(rest)
	}
	hl := 2
	switch rest[1] & 0x7F {
	case 126:
		hl += 2
	case 127:
		hl += 8
	}
	if rest[1]&0x80 != 0 {
		hl += 4
	}
	if len(rest) < hl {
		return len(rest)
	}
	return 0
}

// stripClose checks and removes the module's Close to the upstream at the
// end of out, which it sends when it closed the connection (in.finished).
func stripClose(t *testing.T, c *liveConn, out []byte, err error) []byte {
	t.Helper()
	if !c.in.finished {
		return out
	}
	if !errors.Is(err, errLiveClosed) {
		t.Fatalf("the upstream got the module's Close, then %v, not errLiveClosed", err)
	}
	if len(out) < 8 {
		t.Fatalf("the upstream got % x, too short for the module's Close", out)
	}
	cl := out[len(out)-8:]
	if cl[0] != 0x80|opClose || cl[1] != 0x82 {
		t.Fatalf("the module's Close to the upstream: % x", cl)
	}
	if code := binary.BigEndian.Uint16([]byte{cl[6] ^ cl[2], cl[7] ^ cl[3]}); code != closeGoingAway {
		t.Fatalf("the module's Close to the upstream has code %d, not %d", code, closeGoingAway)
	}
	return out[:len(out)-8]
}

// runWrite writes stream to a new connection's client in chunks of sizes,
// injecting frame before the first chunk that starts at or after at (or
// after the last, if none does; at < 0: never). It returns what the
// client got, where the injection happened and the connection.
func runWrite(t testing.TB, stream, sizes []byte, frame []byte, at int) ([]byte, int, *liveConn) {
	t.Helper()
	var dst bytes.Buffer
	c := &liveConn{h: watcherHandler(t), dst: &dst}
	point := -1
	off, i := 0, 0
	for off < len(stream) {
		if at >= 0 && point < 0 && off >= at {
			point = off
			c.inject(frame, false)
		}
		n := len(stream) - off
		if len(sizes) > 0 {
			n = min(n, int(sizes[i%len(sizes)])+1)
			i++
		}
		k, err := c.write(stream[off : off+n])
		if err != nil || k != n {
			t.Fatalf("write of %d bytes: %d, %v", n, k, err)
		}
		off += n
	}
	if at >= 0 && point < 0 {
		point = len(stream)
		c.inject(frame, false)
	}
	return dst.Bytes(), point, c
}

// refInjected is the stream with frame inserted at its first frame
// boundary at or after point, and whether there is one: a boundary is the
// start of the stream or the end of a complete frame, and there is none
// past a header that is not one.
func refInjected(stream, frame []byte, point int) ([]byte, bool) {
	frames, _, _ := refParse(stream, false)
	at := -1
	if point == 0 {
		at = 0
	}
	for _, f := range frames {
		if at < 0 && f.end >= point {
			at = f.end
		}
	}
	if at < 0 {
		return stream, false
	}
	return cat(stream[:at], frame, stream[at:]), true
}

func FuzzWatcherRelay(f *testing.F) {
	seeds := [][]byte{
		// Text and binary, 7-, 16- and 64-bit lengths.
		cat(cf(true, opText, "hello"), cf(true, opBinary, "\x00\x01\x02")),
		cat(cf(true, opText, strings.Repeat("a", 300)), cf(true, opText, "b")),
		cat(clientFrame(true, opBinary, []byte("64-bit form"), testMask, 8), cf(true, opText, "x")),
		cat(clientFrame(true, opText, []byte("16"), testMask, 2), clientFrame(true, opText, nil, testMask, 8)),
		// (A true 64-bit length, 64 KiB and more, is left to the unit
		// tests: seeds that large slow the fuzzer down.)
		cat(cf(true, opText, "first"), clientFrame(true, opBinary, bytes.Repeat([]byte{7}, 1000), testMask, 8), cf(true, opPing, "p")),
		// Fragmented messages with control frames in between.
		cat(cf(false, opText, "frag1"), cf(true, opPing, "ping"), cf(false, opContinuation, "frag2"),
			cf(true, opPong, ""), cf(true, opContinuation, "frag3"), cf(true, opText, "next"),
			cf(false, opBinary, "b1"), cf(true, opContinuation, "b2")),
		cat(cf(true, opText, "one"), cf(false, opText, strings.Repeat("x", 200)), cf(true, opPing, ""),
			cf(true, opContinuation, strings.Repeat("y", 130)), cf(true, opText, "three")),
		// Zero-length frames.
		cat(cf(true, opText, ""), cf(true, opBinary, ""), cf(false, opText, ""), cf(true, opContinuation, ""), cf(true, opPing, "")),
		// A close frame, and frames after it.
		cat(cf(true, opText, "bye"), cf(true, opClose, "\x03\xe8done"), cf(true, opText, "late")),
		// Unmasked frames (a client must not, but the filter passes them).
		cat(clientFrame(true, opText, []byte("plain"), nil, 0), clientFrame(true, opText, []byte("plain2"), nil, 2)),
		// A truncated header, a truncated payload.
		cat(cf(true, opText, "ok"), []byte{0x81, 0xFE, 0x01}),
		cat(cf(true, opText, "ok"), cf(true, opBinary, "truncated")[:8]),
		{0x81},
		// Garbage: a length with the top bit, an oversized and a
		// fragmented control frame, reserved opcodes, a stray continuation.
		cat(cf(true, opText, "a"), []byte{0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, cf(true, opText, "after")),
		cat(cf(true, opText, "a"), clientFrame(true, opPing, make([]byte, 126), testMask, 0), cf(true, opText, "b")),
		cat(cf(true, opText, "a"), cf(false, opPing, "p"), cf(true, opText, "b")),
		cat(cf(true, opText, "a"), cf(true, 0x3, "reserved"), cf(true, 0xB, "r"), cf(true, opText, "b")),
		cat(cf(true, opContinuation, "stray"), cf(true, opText, "a"), cf(true, opContinuation, "stray")),
		// JSON text frames, a refresh message (its token invalid), a
		// text frame cut short (a refresh candidate the read completes).
		cat(cf(true, opText, `{"type":"chat"}`), cf(true, opText, `{"type":"refresh_token","token":"x"}`), cf(true, opText, "after")),
		cat(cf(true, opText, "a"), cf(true, opText, `{"type":"chat","text":"cut short"}`)[:12]),
		[]byte("GET / HTTP/1.1\r\nHost: example\r\n\r\n"),
		nil,
	}
	for i, s := range seeds {
		f.Add(s, []byte{byte(i), 0, 5, 13, 1}, uint16(i*97), uint16(i*31), uint16(i*11), byte(i))
		f.Add(s, []byte(nil), uint16(65535), uint16(0), uint16(3), byte(0))
	}
	refresh, _ := newHandler(f, &Handler{Secrets: []string{testSecret}, RefreshMessage: "refresh_token"})
	refresh.logger = zap.NewNop()
	f.Fuzz(func(t *testing.T, stream, sizes []byte, buf, inject, maxSize uint16, flags byte) {
		bufSize := maxFrameHeader + int(buf)%1024
		eofWithData := flags&1 != 0
		frames, wellFormed := refWellFormed(stream)
		_, tail, bad := refParse(stream, true)
		held := refHeldHeader(stream, tail, bad)
		whole := len(stream) + maxFrameHeader

		// No rules: the upstream gets the client's bytes as they are,
		// but for an incomplete header at the end, held for a next read
		// that never comes.
		// A frame that breaks the framing (a bad header, no mask, an
		// unknown opcode) fails the connection: the upstream gets the
		// whole frames before it, then the module's Close.
		open := watcherHandler(t)
		out, err, oc, _ := runRead(t, open, stream, sizes, eofWithData, bufSize)
		out = stripClose(t, oc, out, err)
		want := stream[:len(stream)-held]
		if bad {
			want = stream[:tail]
			if !oc.in.finished {
				t.Fatalf("no rules, a bad frame at %d: relay ended with %v and no Close", tail, err)
			}
		} else if err != io.EOF {
			t.Fatalf("no rules: relay ended with %v, not EOF", err)
		}
		if !bytes.Equal(out, want) {
			t.Fatalf("no rules: the upstream got\n% x\nnot\n% x", out, want)
		}

		// Only the first message passes: the reference's frames, the
		// same for any chunking.
		drop := watcherHandler(t, firstMessageOnly)
		out, err, dc, _ := runRead(t, drop, stream, sizes, eofWithData, bufSize)
		out = stripClose(t, dc, out, err)
		if err != io.EOF && !bad {
			t.Fatalf("first message only: relay ended with %v, not EOF", err)
		}
		whole1, werr1, wc1, _ := runRead(t, drop, stream, nil, false, whole)
		whole1 = stripClose(t, wc1, whole1, werr1)
		if !bytes.Equal(out, whole1) {
			t.Fatalf("first message only: chunked, the upstream got\n% x\nread whole\n% x", out, whole1)
		}
		if wellFormed {
			if want := refFirstMessage(stream, frames); !bytes.Equal(out, want) {
				t.Fatalf("first message only: the upstream got\n% x\nnot\n% x", out, want)
			}
		}

		// max_message_size: the frames before the one too big, then the
		// module's Close (unless the client's EOF came first).
		limit := int(maxSize) % 512
		tooBig := watcherHandler(t, func(h *Handler) { h.MaxMessageSize = int64(limit) + 1 })
		out, err, c, shut := runRead(t, tooBig, stream, sizes, eofWithData, bufSize)
		out = stripClose(t, c, out, err)
		if !c.in.finished && err != io.EOF {
			t.Fatalf("max_message_size: relay ended with %v, not EOF", err)
		}
		wout, werr, wc, _ := runRead(t, tooBig, stream, nil, false, whole)
		if wout = stripClose(t, wc, wout, werr); !bytes.Equal(out, wout) {
			t.Fatalf("max_message_size: chunked, the upstream got\n% x\nread whole\n% x", out, wout)
		}
		if wellFormed {
			want, closed := refMaxSize(stream, frames, limit+1)
			if !bytes.Equal(out, want) {
				t.Fatalf("max_message_size %d: the upstream got\n% x\nnot\n% x", limit+1, out, want)
			}
			if closed != shut || (closed && !eofWithData && !c.in.finished) {
				t.Fatalf("max_message_size %d: too big %v, closed %v, Close sent %v", limit+1, closed, shut, c.in.finished)
			}
		}

		// refresh_message on, and no text frame that names the refresh
		// type: the upstream gets the client's bytes as they are, but for
		// an incomplete frame at the end, held back to be decided whole.
		out, err, _, shut = runRead(t, refresh, stream, sizes, eofWithData, bufSize)
		if !namesRefresh(stream) && !bad {
			if err != io.EOF && err != io.ErrUnexpectedEOF {
				t.Fatalf("refresh_message: relay ended with %v, not EOF", err)
			}
			if shut || len(out) < tail || !bytes.Equal(out, stream[:len(out)]) {
				t.Fatalf("refresh_message: closed %v, the upstream got\n% x\nnot\n% x", shut, out, stream)
			}
		}

		// The server's frames reach the client as they are, with an
		// injected frame at the first frame boundary from where it was
		// injected.
		frame := appendTextFrame(nil, []byte(`{"type":"injected"}`))
		got, _, wc := runWrite(t, stream, sizes, frame, -1)
		if !bytes.Equal(got, stream) || len(wc.pending) != 0 {
			t.Fatalf("write: the client got\n% x\nnot\n% x", got, stream)
		}
		got, point, wc := runWrite(t, stream, sizes, frame, int(inject)%(len(stream)+1))
		want, ok := refInjected(stream, frame, point)
		if !bytes.Equal(got, want) {
			t.Fatalf("write with a frame injected at %d: the client got\n% x\nnot\n% x", point, got, want)
		}
		if pending := len(wc.pending) != 0; pending == ok {
			t.Fatalf("write with a frame injected at %d: pending %v, boundary %v", point, pending, ok)
		}
	})
}

// TestWatcherSplitHeader: a frame header cut by the end of a read, at
// every byte, or by the end of the buffer: the next read completes it, and
// the frame is forwarded or dropped whole.
func TestWatcherSplitHeader(t *testing.T) {
	payload := []byte("second message")
	headers := []struct {
		name string
		mask []byte
		ext  int
	}{
		{"6-byte", testMask, 0},
		{"8-byte", testMask, 2},
		{"14-byte", testMask, 8},
	}
	first := cf(true, opText, "first")
	ping := cf(true, opPing, "ping")
	for _, hd := range headers {
		second := clientFrame(true, opBinary, payload, hd.mask, hd.ext)
		hl := len(second) - len(payload)
		stream := cat(first, second, ping)
		for _, drop := range []bool{false, true} {
			h := watcherHandler(t)
			want := stream
			if drop {
				h = watcherHandler(t, firstMessageOnly)
				want = cat(first, ping)
			}
			for cut := 1; cut < hl; cut++ {
				// The reader returns the header in two pieces.
				c := &liveConn{h: h, src: &splitReader{b: stream, cuts: []int{len(first) + cut}}}
				out, err := relay(t, c, 4096, 100)
				if err != io.EOF || !bytes.Equal(out, want) {
					t.Errorf("%s header, drop %v, cut after %d bytes by the reader: %v\n% x\nnot\n% x", hd.name, drop, cut, err, out, want)
				}
				// The buffer ends inside the header.
				if bufSize := len(first) + cut; bufSize >= maxFrameHeader {
					c = &liveConn{h: h, src: &splitReader{b: stream}}
					out, err = relay(t, c, bufSize, 100)
					if err != io.EOF || !bytes.Equal(out, want) {
						t.Errorf("%s header, drop %v, cut after %d bytes by a buffer of %d: %v\n% x\nnot\n% x", hd.name, drop, cut, bufSize, err, out, want)
					}
				}
				// Byte by byte, then the rest.
				c = &liveConn{h: h, src: &chunkReader{b: stream, sizes: []byte{0}}}
				out, err = relay(t, c, maxFrameHeader, 1000)
				if err != io.EOF || !bytes.Equal(out, want) {
					t.Errorf("%s header, drop %v, byte by byte: %v\n% x\nnot\n% x", hd.name, drop, err, out, want)
				}
			}
		}
	}
}

// TestWatcherDroppedFragmentsStraddleReads: a dropped message whose
// fragments, control frames in between, straddle reads and buffers: none of
// its bytes reach the upstream, every control frame does.
func TestWatcherDroppedFragmentsStraddleReads(t *testing.T) {
	first := cf(true, opText, "the one message that passes")
	ping := cf(true, opPing, "ping")
	pong := cf(true, opPong, "")
	closeFrame := cf(true, opClose, "\x03\xe8")
	dropped := cat(
		clientFrame(false, opText, bytes.Repeat([]byte("A"), 300), testMask, 0),
		ping,
		clientFrame(false, opContinuation, bytes.Repeat([]byte("B"), 70000), testMask, 0),
		pong,
		clientFrame(false, opContinuation, nil, testMask, 0),
		clientFrame(true, opContinuation, bytes.Repeat([]byte("C"), 10), testMask, 8),
	)
	stream := cat(first, dropped, cf(true, opBinary, "dropped too"), ping, closeFrame)
	want := cat(first, ping, pong, ping, closeFrame)
	h := watcherHandler(t, firstMessageOnly)
	for _, sizes := range [][]byte{nil, {6}, {0}, {99, 254, 13}, {255, 1, 2, 3, 200}} {
		for _, bufSize := range []int{14, 15, 100, 512, 4096, 32 << 10, 128 << 10} {
			c := &liveConn{h: h, src: &chunkReader{b: stream, sizes: sizes}}
			out, err := relay(t, c, bufSize, 2*len(stream))
			if err != io.EOF || !bytes.Equal(out, want) {
				t.Errorf("chunks %v, buffer %d: %v: the upstream got %d bytes\n% x\nnot\n% x", sizes, bufSize, err, len(out), head(out), want)
			}
		}
	}
}

func head(b []byte) []byte { return b[:min(len(b), 200)] }

// refreshConn is a live connection of alice on a handler with
// refresh_message on, whose client gets what dst holds.
func refreshConn(t *testing.T, src io.Reader, dst *bytes.Buffer) *liveConn {
	t.Helper()
	h, _ := newHandler(t, &Handler{Secrets: []string{testSecret}, RefreshMessage: "refresh_token"})
	h.logger = zap.NewNop()
	c := &liveConn{h: h, user: "alice", src: src, dst: dst}
	c.expires = time.Now().Add(time.Minute)
	t.Cleanup(c.end)
	return c
}

// checkRefreshed checks that c took a refresh to exp and answered it.
func checkRefreshed(t *testing.T, c *liveConn, client *bytes.Buffer, exp int64) {
	t.Helper()
	if c.closing() {
		t.Fatal("the connection is closing")
	}
	if got := c.expires.Unix(); got != exp {
		t.Errorf("the connection expires at %d, not at the new token's %d", got, exp)
	}
	want := appendTextFrame(nil, fmt.Appendf(nil, `{"type":"refresh_token_ok","exp":%d}`, exp))
	if !bytes.Equal(client.Bytes(), want) {
		t.Errorf("the client got % x, not % x", client.Bytes(), want)
	}
}

// TestWatcherRefreshCompletedByRead: a refresh message whose payload (or
// part of its header) comes in a later read than its first bytes: the read
// completes it, the module takes it, and the frames after it flow.
func TestWatcherRefreshCompletedByRead(t *testing.T) {
	exp := time.Now().Add(3 * time.Hour).Unix()
	tok := hs256(t, claims("alice", func(c jwt.MapClaims) { c["exp"] = exp }))
	refresh := cf(true, opText, `{"type":"refresh_token","token":"`+tok+`"}`)
	before := cf(true, opText, "before")
	after := cat(cf(true, opText, "after"), cf(true, opPing, ""), cf(true, opBinary, "more"))
	stream := cat(before, refresh, after)
	at := len(before)
	for _, tc := range []struct {
		name string
		cuts []int
		buf  int
	}{
		{"payload in the next read", []int{at + 6 + 5, at + len(refresh)}, 4096},
		{"payload in the next read with the frames after", []int{at + 6 + 5}, 4096},
		{"header alone in a read", []int{at + 6}, 4096},
		{"header split", []int{at + 3}, 4096},
		{"payload in pieces", []int{at + 6 + 5, at + 6 + 50, at + 6 + 51, at + 6 + 100}, 4096},
		{"refresh first in a read", []int{at, at + 6 + 10}, 4096},
		{"the buffer holds exactly the refresh", []int{at, at + 10}, len(refresh)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var client bytes.Buffer
			c := refreshConn(t, &splitReader{b: stream, cuts: tc.cuts}, &client)
			out, err := relay(t, c, tc.buf, 100)
			if want := cat(before, after); err != io.EOF || !bytes.Equal(out, want) {
				t.Fatalf("%v: the upstream got\n%q\nnot\n%q", err, out, want)
			}
			checkRefreshed(t, c, &client, exp)
		})
	}
	t.Run("byte by byte", func(t *testing.T) {
		var client bytes.Buffer
		c := refreshConn(t, &chunkReader{b: stream, sizes: []byte{0}}, &client)
		out, err := relay(t, c, 4096, 2*len(stream))
		if want := cat(before, after); err != io.EOF || !bytes.Equal(out, want) {
			t.Fatalf("%v: the upstream got\n%q\nnot\n%q", err, out, want)
		}
		checkRefreshed(t, c, &client, exp)
	})
}

// TestWatcherRefreshNearBufferEnd: a refresh message that starts near the
// end of reverse_proxy's buffer, after other frames of the same read, is
// a refresh message all the same: it must not reach the upstream.
func TestWatcherRefreshNearBufferEnd(t *testing.T) {
	exp := time.Now().Add(3 * time.Hour).Unix()
	tok := hs256(t, claims("alice", func(c jwt.MapClaims) { c["exp"] = exp }))
	refresh := cf(true, opText, `{"type":"refresh_token","token":"`+tok+`"}`)
	filler := clientFrame(true, opBinary, make([]byte, 4000), testMask, 0)
	after := cf(true, opText, "after")
	stream := cat(filler, refresh, after)
	var client bytes.Buffer
	c := refreshConn(t, &chunkReader{b: stream}, &client)
	out, err := relay(t, c, 4096, 100) // the refresh starts at 4008 and ends past 4096
	if want := cat(filler, after); err != io.EOF || !bytes.Equal(out, want) {
		t.Errorf("%v: the upstream got %d bytes (refresh token forwarded: %v), not %d", err, len(out), bytes.Contains(out, refresh), len(want))
	}
	checkRefreshed(t, c, &client, exp)
}

// clockedReader returns one frame a read, and sets the test clock to the
// frame's time as it does: a client whose frames come at those times.
type clockedReader struct {
	frames [][]byte
	at     []time.Time
	clock  *time.Time
}

func (r *clockedReader) Read(p []byte) (int, error) {
	if len(r.frames) == 0 {
		return 0, io.EOF
	}
	*r.clock = r.at[0]
	n := copy(p, r.frames[0])
	if r.frames[0] = r.frames[0][n:]; len(r.frames[0]) == 0 {
		r.frames, r.at = r.frames[1:], r.at[1:]
	}
	return n, nil
}

// TestWatcherRefreshRates: a refresh message comes at most once a second
// (minRefreshInterval), one sooner closes with 1008 rate_limited
// unchecked; and it counts as a message for rate_limit messages, whose
// drop leaves it unchecked and unanswered. On the test clock, so the
// boundary is exact.
func TestWatcherRefreshRates(t *testing.T) {
	var clock time.Time
	waitRechecksIdle(t) // their goroutine reads the clock
	t.Cleanup(func() { now = time.Now })
	// Swapping the package's clock is safe: no test runs in parallel, and
	// no Caddy runs in this test.
	now = func() time.Time { return clock }
	t0 := time.Now()
	exp1, exp2 := t0.Add(2*time.Hour).Unix(), t0.Add(3*time.Hour).Unix()
	refresh := func(exp int64) []byte {
		tok := hs256(t, claims("alice", func(c jwt.MapClaims) { c["exp"] = exp }))
		return cf(true, opText, `{"type":"refresh_token","token":"`+tok+`"}`)
	}
	ok := func(exp int64) []byte {
		return appendTextFrame(nil, fmt.Appendf(nil, `{"type":"refresh_token_ok","exp":%d}`, exp))
	}
	after := cf(true, opText, "after")
	for _, tc := range []struct {
		name     string
		gap      time.Duration
		rate     bool // rate_limit messages lets one message through
		upstream []byte
		client   []byte
		exp      int64
	}{
		{"a second apart", time.Second, false, after, cat(ok(exp1), ok(exp2)), exp2},
		{"sooner", time.Second - time.Nanosecond, false, nil, cat(ok(exp1), appendCloseFrame(nil, closeRateLimited, "rate_limited")), exp1},
		{"over the message rate", time.Second, true, after[:0], ok(exp1), exp1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var client bytes.Buffer
			src := &clockedReader{
				frames: [][]byte{refresh(exp1), refresh(exp2), bytes.Clone(after)},
				at:     []time.Time{t0, t0.Add(tc.gap), t0.Add(tc.gap)},
				clock:  &clock,
			}
			c := refreshConn(t, src, &client)
			if tc.rate {
				firstMessageOnly(c.h)
			}
			out, err := relay(t, c, 4096, 100)
			out = stripClose(t, c, out, err)
			if want := tc.upstream; !bytes.Equal(out, want) {
				t.Errorf("%v: the upstream got %q, not %q", err, out, want)
			}
			if !bytes.Equal(client.Bytes(), tc.client) {
				t.Errorf("the client got %q, not %q", client.Bytes(), tc.client)
			}
			if got := c.expires.Unix(); got != tc.exp {
				t.Errorf("the connection expires at %d, not %d", got, tc.exp)
			}
		})
	}
}

// TestWatcherNotRefreshForwarded: text frames that look like JSON, or like
// a refresh message, but are not one reach the upstream unchanged, mask
// and all, and the connection stays open.
func TestWatcherNotRefreshForwarded(t *testing.T) {
	tok := hs256(t, claims("alice"))
	msgs := []string{
		`{"type":"chat","text":"hello"}`,
		`{"type":"chat","token":"` + tok + `"}`,
		`{"type":"chat","topic":"refresh_token"}`,
		`{"kind":"refresh_token","token":"` + tok + `"}`,
		`{"type":"refresh_token_x","token":"` + tok + `"}`,
		`{"type":"refresh_token","type":"chat","token":"` + tok + `"}`,
		`{"type":"refresh_token","token":"` + tok + `"`,
		`[{"type":"refresh_token","token":"` + tok + `"}]`,
		`"refresh_token"`,
		"{\"type\":\"refresh_token\",\"token\":\"\xff\"}",
		`{"type":"refresh_token","token":"` + tok + `"} trailing`,
		``,
	}
	for _, m := range msgs {
		frames := [][]byte{
			cf(true, opText, m),
			clientFrame(true, opText, []byte(m), []byte{0xff, 0x00, 0x80, 0x7f}, 2),
		}
		for _, frame := range frames {
			stream := cat(frame, cf(true, opText, "next"))
			orig := bytes.Clone(stream)
			var client bytes.Buffer
			c := refreshConn(t, &chunkReader{b: stream}, &client)
			out, err := relay(t, c, 4096, 100)
			if err != io.EOF || !bytes.Equal(out, orig) {
				t.Errorf("%q: %v: the upstream got\n% x\nnot\n% x", m, err, out, orig)
			}
			if c.closing() || client.Len() != 0 {
				t.Errorf("%q: closing %v, the client got %q", m, c.closing(), client.Bytes())
			}
		}
	}
	// Not candidates at all: fragmented, compressed (RSV1), or larger than
	// a refresh message may be. (An unmasked frame fails the connection:
	// TestWatcherProtocolError.)
	refresh := `{"type":"refresh_token","token":"` + tok + `"}`
	compressed := cf(true, opText, refresh)
	compressed[0] |= 0x40
	for name, frame := range map[string][]byte{
		"fragmented": cat(cf(false, opText, refresh), cf(true, opContinuation, "")),
		"compressed": compressed,
		"too large":  cf(true, opText, `{"type":"refresh_token","token":"`+tok+`","pad":"`+strings.Repeat("x", defaultMaxTokenSize+firstMessageSlack)+`"}`),
	} {
		stream := cat(frame, cf(true, opText, "next"))
		orig := bytes.Clone(stream)
		var client bytes.Buffer
		c := refreshConn(t, &chunkReader{b: stream}, &client)
		out, err := relay(t, c, 32<<10, 100)
		if err != io.EOF || !bytes.Equal(out, orig) {
			t.Errorf("%s: %v: the upstream got %d bytes, not the %d sent", name, err, len(out), len(orig))
		}
		if c.closing() || client.Len() != 0 {
			t.Errorf("%s: closing %v, the client got %q", name, c.closing(), client.Bytes())
		}
	}
}

// allRules is a handler with every rule on live connections on: a message
// rate per connection too high to be reached, max_message_size 1MiB and
// refresh_message, as Provision sets them.
func allRules(t testing.TB) *Handler {
	h, _ := newHandler(t, &Handler{
		Secrets: []string{testSecret},
		RateLimits: &RateLimits{Messages: &MessageRate{
			Events: 1_000_000_000_000, Window: caddy.Duration(366 * 24 * time.Hour), Per: "connection",
		}},
		MaxMessageSize: 1 << 20,
		RefreshMessage: "refresh_token",
	})
	h.logger = zap.NewNop()
	return h
}

// frameSource returns one frame again and again, at most len(p) bytes a
// read and never past the frame's end: a client that sends a message at
// a time.
type frameSource struct {
	frame []byte
	off   int
}

func (s *frameSource) Read(p []byte) (int, error) {
	n := copy(p, s.frame[s.off:])
	s.off += n
	if s.off == len(s.frame) {
		s.off = 0
	}
	return n, nil
}

// watcherFrames are the client messages of the benchmarks: 128 bytes of
// text (one that names the refresh type, so that it is parsed), and 64 KiB
// of binary.
func watcherFrames() []struct {
	name    string
	payload []byte
	op      byte
} {
	chat := `{"type":"chat","room":"general","text":"`
	chat += strings.Repeat("x", 128-len(chat)-2) + `"}`
	named := `{"type":"chat","about":"refresh_token","text":"`
	named += strings.Repeat("y", 128-len(named)-2) + `"}`
	bin := make([]byte, 64<<10)
	for i := range bin {
		bin[i] = byte(i)
	}
	return []struct {
		name    string
		payload []byte
		op      byte
	}{
		{"text128", []byte(chat), opText},
		{"text128-parsed", []byte(named), opText},
		{"binary64KiB", bin, opBinary},
	}
}

// readOne relays one frame of src through c with buf.
func readOne(tb testing.TB, c *liveConn, src *frameSource, buf []byte) int {
	total := 0
	for {
		n, err := c.read(buf)
		if err != nil {
			tb.Fatal(err)
		}
		total += n
		if src.off == 0 && c.in.left == 0 && c.in.hn == 0 {
			return total
		}
	}
}

func BenchmarkWatcherRead(b *testing.B) {
	rules := allRules(b)
	frames := watcherFrames()
	// The first frame again with no rule on: what inspecting it costs.
	frames = append(frames, frames[0])
	frames[len(frames)-1].name += "-norules"
	for _, fr := range frames {
		h := rules
		if strings.HasSuffix(fr.name, "-norules") {
			h = watcherHandler(b)
		}
		b.Run(fr.name, func(b *testing.B) {
			frame := clientFrame(true, fr.op, fr.payload, testMask, 0)
			src := &frameSource{frame: frame}
			c := &liveConn{h: h, src: src, dst: io.Discard}
			buf := make([]byte, 32<<10) // reverse_proxy's default
			if n := readOne(b, c, src, buf); n != len(frame) {
				b.Fatalf("relayed %d bytes of a %d-byte frame", n, len(frame))
			}
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			for b.Loop() {
				readOne(b, c, src, buf)
			}
			if c.closing() {
				b.Fatal("the connection was closed")
			}
		})
	}
}

func BenchmarkWatcherWrite(b *testing.B) {
	for _, fr := range watcherFrames() {
		if fr.name == "text128-parsed" {
			continue // server frames are not parsed: the same as text128
		}
		frame := clientFrame(true, fr.op, fr.payload, nil, 0)
		b.Run(fr.name, func(b *testing.B) {
			c := &liveConn{h: allRules(b), dst: io.Discard}
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.write(frame); err != nil {
					b.Fatal(err)
				}
			}
		})
		// A frame injected in the middle of each: it waits for the
		// boundary (as a refresh answer or a notify would).
		b.Run(fr.name+"-inject", func(b *testing.B) {
			c := &liveConn{h: allRules(b), dst: io.Discard}
			inj := appendTextFrame(nil, []byte(`{"type":"refresh_token_ok","exp":1700000000}`))
			b.SetBytes(int64(len(frame) + len(inj)))
			b.ReportAllocs()
			half := len(frame) / 2
			for b.Loop() {
				writeInjected(b, c, frame, half, inj)
			}
		})
	}
}

func writeInjected(tb testing.TB, c *liveConn, frame []byte, half int, inj []byte) {
	if _, err := c.write(frame[:half]); err != nil {
		tb.Fatal(err)
	}
	c.inject(inj, false)
	if _, err := c.write(frame[half:]); err != nil {
		tb.Fatal(err)
	}
	if len(c.pending) != 0 {
		tb.Fatal("the injected frame is still pending")
	}
}

// TestWatcherZeroAllocs: in steady state, relaying a frame allocates
// nothing, in either direction, with every rule on.
func TestWatcherZeroAllocs(t *testing.T) {
	perUser, _ := newHandler(t, &Handler{
		Secrets: []string{testSecret},
		RateLimits: &RateLimits{Messages: &MessageRate{
			Events: 1_000_000_000_000, Window: caddy.Duration(366 * 24 * time.Hour), Per: "user",
		}},
	})
	perUser.logger = zap.NewNop()
	zeroAllocs(t, allRules(t))
	zeroAllocs(t, perUser)
}

// zeroAllocs checks that h's watcher allocates nothing a frame, once warm.
func zeroAllocs(t *testing.T, h *Handler) {
	inj := appendTextFrame(nil, []byte(`{"type":"refresh_token_ok","exp":1700000000}`))
	for _, fr := range watcherFrames() {
		frame := clientFrame(true, fr.op, fr.payload, testMask, 0)
		src := &frameSource{frame: frame}
		c := &liveConn{h: h, src: src, dst: io.Discard, iss: "iss", user: "alice"}
		buf := make([]byte, 32<<10)
		readOne(t, c, src, buf) // warm up
		if a := testing.AllocsPerRun(200, func() { readOne(t, c, src, buf) }); a != 0 {
			t.Errorf("read %s: %v allocations a frame", fr.name, a)
		}
		sframe := clientFrame(true, fr.op, fr.payload, nil, 0)
		wc := &liveConn{h: h, dst: io.Discard}
		writeInjected(t, wc, sframe, len(sframe)/2, inj) // warm up: pending grows once
		if a := testing.AllocsPerRun(200, func() { _, _ = wc.write(sframe) }); a != 0 {
			t.Errorf("write %s: %v allocations a frame", fr.name, a)
		}
		if a := testing.AllocsPerRun(200, func() { writeInjected(t, wc, sframe, len(sframe)/2, inj) }); a != 0 {
			t.Errorf("write %s with an injected frame: %v allocations a frame", fr.name, a)
		}
		if c.closing() {
			t.Errorf("%s: the connection was closed", fr.name)
		}
	}
}

// TestWatcherBadHeaderWhileClosing: once a rule closed the connection,
// nothing more from the client reaches the upstream, whatever it sends:
// not even bytes that are no frame, read in the same buffer as the frame
// that closed it. The upstream gets the module's Close next.
func TestWatcherBadHeaderWhileClosing(t *testing.T) {
	h := watcherHandler(t, func(h *Handler) { h.MaxMessageSize = 4 })
	bad := []byte{0x09, 0x00} // a fragmented ping: not a frame header
	for _, tc := range []struct {
		name   string
		stream []byte
	}{
		{"bad header", cat(cf(true, opText, "too big"), bad, cf(true, opText, "more"))},
		{"bad 64-bit length", cat(cf(true, opText, "too big"), []byte{0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0}, cf(true, opText, "more"))},
	} {
		for _, sizes := range [][]byte{nil, {0}} {
			out, err, c, shut := runRead(t, h, tc.stream, sizes, false, 4096)
			if !shut {
				t.Fatalf("%s: the message over max_message_size did not close the connection", tc.name)
			}
			if !c.in.finished || len(out) != 8 {
				t.Errorf("%s, chunks %v: %v: the upstream got\n% x\nnot the module's Close alone", tc.name, sizes, err, out)
				continue
			}
			stripClose(t, c, out, err)
		}
	}
}

// TestWatcherProtocolError: a client frame that breaks RFC 6455 (no mask,
// an unknown opcode, a bad length, a fragmented or oversized control
// frame) fails the connection: the client gets 1002 "protocol_error", the
// upstream the whole frames before it and then the module's Close 1001,
// and nothing after it passes, whatever the rules.
func TestWatcherProtocolError(t *testing.T) {
	first := cf(true, opText, "first")
	after := cf(true, opText, "after")
	for name, bad := range map[string][]byte{
		"unmasked":          clientFrame(true, opText, []byte("plain"), nil, 0),
		"reserved opcode":   cf(true, 0x3, "r"),
		"reserved control":  cf(true, 0xB, "r"),
		"64-bit top bit":    {0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4},
		"fragmented ping":   cf(false, opPing, "p"),
		"oversized control": clientFrame(true, opPing, make([]byte, 126), testMask, 0),
	} {
		stream := cat(first, bad, after)
		for _, sizes := range [][]byte{nil, {0}} {
			var client bytes.Buffer
			c := &liveConn{h: watcherHandler(t), src: &chunkReader{b: stream, sizes: sizes}, dst: &client}
			out, err := relay(t, c, 4096, 100)
			c.end()
			if out = stripClose(t, c, out, err); !c.in.finished || !bytes.Equal(out, first) {
				t.Errorf("%s, chunks %v: %v: the upstream got\n% x\nnot the first frame and the module's Close", name, sizes, err, out)
			}
			if want := "\x88\x10\x03\xeaprotocol_error"; client.String() != want {
				t.Errorf("%s, chunks %v: the client got %q, want %q", name, sizes, client.String(), want)
			}
		}
	}
}

// TestWatcherPendingBounded: while the upstream is in the middle of a
// frame, answers for the client wait, but no more than maxPending bytes of
// them; the module's Close always gets in, and goes last.
func TestWatcherPendingBounded(t *testing.T) {
	var client bytes.Buffer
	c := &liveConn{h: watcherHandler(t), dst: &client}
	big := clientFrame(true, opBinary, make([]byte, 1000), nil, 0)
	if _, err := c.write(big[:10]); err != nil { // the upstream stops inside a frame
		t.Fatal(err)
	}
	answer := appendTextFrame(nil, []byte(`{"type":"refresh_token_ok","exp":1700000000}`))
	for range 1000 {
		c.inject(answer, false)
	}
	c.inject(appendCloseFrame(nil, 4001, "expired"), true)
	if len(c.pending) > maxPending+maxCloseReason+4 {
		t.Errorf("%d bytes pending, bound %d", len(c.pending), maxPending)
	}
	if _, err := c.write(big[10:]); err != nil {
		t.Fatal(err)
	}
	got := client.Bytes()
	if !bytes.HasPrefix(got, big) || !bytes.HasSuffix(got, appendCloseFrame(nil, 4001, "expired")) {
		t.Errorf("the client got %d bytes, not the frame, answers, then the Close", len(got))
	}
	c.end()
}
