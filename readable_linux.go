package wsauth

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// newReadWaiter returns a waiter for a plain TCP connection, the only kind
// whose readiness is its socket's: a TLS connection, or a wrapper with a
// buffer of its own, may hold bytes its socket no longer shows. Nil for
// others (and for Caddy's wrapper of a logged connection, which it cannot
// see through).
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
	sw.check = sw.poll
	return sw
}

// socketWaiter waits through Go's network poller, as a blocked Read does:
// it wakes for the same bytes, end of stream, error, deadline (the module's
// interruptRead) and close.
type socketWaiter struct {
	rc     syscall.RawConn
	check  func(fd uintptr) bool // poll, made once rather than at each wait
	waited bool
	fds    [1]unix.PollFd
}

func (sw *socketWaiter) wait() error {
	sw.waited = false
	return sw.rc.Read(sw.check)
}

// poll is called by the poller before it waits, and again once the socket
// became readable: the first time it looks (a poll that does not block),
// the second it takes the poller's word. A message thus costs this poll and
// a read, as a blocked Read costs a read that finds nothing and the read
// that finds the message.
func (sw *socketWaiter) poll(fd uintptr) bool {
	if sw.waited {
		return true
	}
	sw.waited = true
	return sw.pollNow(fd)
}

// pollNow reports whether a read would not block: bytes, the end of the
// stream or an error are there. It neither reads nor clears anything (a
// peek would take the socket's pending error, turning a reset into an end
// of stream).
func (sw *socketWaiter) pollNow(fd uintptr) bool {
	sw.fds[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	n, err := unix.Poll(sw.fds[:], 0)
	return err != nil || n > 0
}
