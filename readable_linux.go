package wsauth

import (
	"net"
	"syscall"
)

// newReadWaiter returns a waiter for a plain TCP connection, the only kind
// whose readiness is its socket's: a TLS connection, or a wrapper with a
// buffer of its own, may hold bytes its socket no longer shows. Nil for
// others.
func newReadWaiter(conn net.Conn) readWaiter {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	sw := &socketWaiter{rc: rc}
	sw.ready = sw.check
	return sw
}

// socketWaiter waits through Go's network poller, as a blocked Read does:
// it wakes for the same bytes, end of stream, error, deadline (the module's
// interruptRead) and close.
type socketWaiter struct {
	rc     syscall.RawConn
	ready  func(fd uintptr) bool // check, made once rather than at each wait
	waited bool
	peek   [1]byte
}

func (sw *socketWaiter) wait() error {
	sw.waited = false
	return sw.rc.Read(sw.ready)
}

// check is called by the poller before it waits, and again once the socket
// became readable: the first time it looks without taking anything (a
// peek that does not block), the second it takes the poller's word, so a
// message costs a read and this peek, as a blocked Read costs a read that
// finds nothing and the read that finds the message.
func (sw *socketWaiter) check(fd uintptr) bool {
	if sw.waited {
		return true
	}
	sw.waited = true
	_, _, err := syscall.Recvfrom(int(fd), sw.peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN
}
