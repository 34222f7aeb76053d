//go:build !linux

package wsauth

import "net"

// newReadWaiter has no waiter off Linux: a read there waits with its
// buffer, as reverse_proxy's own loop does.
func newReadWaiter(net.Conn) readWaiter { return nil }
