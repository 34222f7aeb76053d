package wsauth

import (
	"encoding/binary"
	"errors"
	"io"
)

// WebSocket framing (RFC 6455, section 5), only what the module needs: a
// header reader that rejects bad headers before anything is allocated, and
// a Close frame writer.

const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA

	// maxFrameHeader is 2 fixed bytes, 8 of extended length and 4 of mask.
	maxFrameHeader = 14
	// maxCloseReason keeps a Close frame's payload within the 125 bytes a
	// control frame may carry.
	maxCloseReason = 123
)

var (
	errBadFrame     = errors.New("websocket: malformed frame header")
	errControlFrame = errors.New("websocket: fragmented or oversized control frame")
)

// frameHeader is a parsed WebSocket frame header.
type frameHeader struct {
	fin    bool
	rsv    byte
	opcode byte
	masked bool
	length int64
	mask   [4]byte
}

// readFrameHeader reads one frame header from r into the caller's buffer:
// the 2 fixed bytes, then exactly the extended length and mask bytes.
func readFrameHeader(r io.Reader, buf *[maxFrameHeader]byte) (frameHeader, error) {
	var h frameHeader
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return h, err
	}
	h.fin = buf[0]&0x80 != 0
	h.rsv = buf[0] & 0x70
	h.opcode = buf[0] & 0x0F
	h.masked = buf[1]&0x80 != 0
	length := int64(buf[1] & 0x7F)

	extra := 0
	switch length {
	case 126:
		extra = 2
	case 127:
		extra = 8
	}
	if h.masked {
		extra += 4
	}
	if extra > 0 {
		if _, err := io.ReadFull(r, buf[2:2+extra]); err != nil {
			return h, err
		}
	}
	b := buf[2 : 2+extra]
	switch length {
	case 126:
		length = int64(binary.BigEndian.Uint16(b))
		b = b[2:]
	case 127:
		u := binary.BigEndian.Uint64(b)
		if u>>63 != 0 {
			return h, errBadFrame
		}
		length = int64(u)
		b = b[8:]
	}
	h.length = length
	if h.masked {
		copy(h.mask[:], b)
	}
	if h.opcode >= opClose && (!h.fin || h.length > 125) {
		return h, errControlFrame
	}
	return h, nil
}

// appendCloseFrame appends an unmasked (server to client) Close frame with
// code and reason; the reason is cut to fit a control frame.
func appendCloseFrame(dst []byte, code uint16, reason string) []byte {
	if len(reason) > maxCloseReason {
		reason = reason[:maxCloseReason]
	}
	dst = append(dst, 0x80|opClose, byte(2+len(reason)))
	dst = binary.BigEndian.AppendUint16(dst, code)
	return append(dst, reason...)
}
