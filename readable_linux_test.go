package wsauth

import (
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRelayIdleWaitsWithoutBuffer: once a client over plain TCP is quiet,
// the relay's loop toward the upstream waits for it without a buffer
// (in the socket waiter, not in a read), whatever its last message was:
// forwarded, or dropped (nothing forwarded), also after one that filled
// the buffer exactly (the read after that one waits with the buffer: a
// client that fills it is most likely streaming).
func TestRelayIdleWaitsWithoutBuffer(t *testing.T) {
	client, front := tcpPair(t)
	back, upstream := tcpPair(t)
	c := &liveConn{h: watcherHandler(t, firstMessageOnly), conn: front, src: front, dst: front}
	done := make(chan error, 1)
	go func() {
		_, err := (*watchedConn)(c).WriteTo(back)
		done <- err
	}()
	go func() { _, _ = io.Copy(io.Discard, upstream) }()

	full := relayBufferSize - 4 - len(testMask) // header (16-bit length) and mask
	for _, step := range []struct {
		name    string
		payload int
	}{
		{"after a forwarded message", 100},
		{"after a dropped message", 100},
		{"after a dropped message that filled the buffer, and another", full},
	} {
		frame := clientFrame(true, opBinary, make([]byte, step.payload), testMask, 0)
		if _, err := client.Write(frame); err != nil {
			t.Fatal(err)
		}
		if step.payload == full {
			time.Sleep(50 * time.Millisecond) // read on its own, filling the buffer
			if _, err := client.Write(clientFrame(true, opBinary, make([]byte, 10), testMask, 0)); err != nil {
				t.Fatal(err)
			}
		}
		if !waitForStack(t, "(*socketWaiter).wait") {
			t.Errorf("%s, the quiet client is read with a buffer:\n%s", step.name, relayStack())
		}
	}
	client.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the client closed its connection: WriteTo returned %v, want nil (the end of its stream)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WriteTo did not end with the client's connection")
	}
}

// TestRelayClientReset: a client that resets its connection ends the relay
// with the reset, as a read would, not with a clean end of stream (after
// which reverse_proxy would only half-close the upstream's connection and
// wait): whether the reset comes while the relay waits for the client, or
// before it looks (as when it was busy writing to a slow upstream).
func TestRelayClientReset(t *testing.T) {
	for _, waiting := range []bool{true, false} {
		t.Run(map[bool]string{true: "while waiting", false: "before the wait"}[waiting], func(t *testing.T) {
			client, front := tcpPair(t)
			back, _ := tcpPair(t)
			c := &liveConn{h: allRules(t), conn: front, src: front, dst: front}
			done := make(chan error, 1)
			relay := func() {
				_, err := (*watchedConn)(c).WriteTo(back)
				done <- err
			}
			reset := func() {
				_ = client.(*net.TCPConn).SetLinger(0)
				client.Close()
			}
			if waiting {
				go relay()
				if !waitForStack(t, "(*socketWaiter).wait") {
					t.Fatalf("the relay does not wait in the socket waiter:\n%s", relayStack())
				}
				reset()
			} else {
				reset()
				time.Sleep(50 * time.Millisecond) // the reset arrives
				go relay()
			}
			select {
			case err := <-done:
				if !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("after the client's reset, WriteTo returned %v, want the reset", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("WriteTo did not end with the client's reset")
			}
		})
	}
}

// waitForStack reports whether the goroutine running WriteTo shows fn
// within 2 seconds.
func waitForStack(t *testing.T, fn string) bool {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if strings.Contains(relayStack(), fn) {
			return true
		}
	}
	return false
}

// relayStack is the stack of the goroutine in (*watchedConn).WriteTo.
func relayStack() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "(*watchedConn).WriteTo") {
			return g
		}
	}
	return "(no goroutine in WriteTo)"
}
