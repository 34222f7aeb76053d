package wsauth

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"golang.org/x/net/http2"
)

// TestRelaySizes: messages of every size around the relay's buffers (the
// upstream's idle read of 4 KiB, a TLS client's 16 KiB, the pooled 32 KiB) go through whole and in
// order in both directions, in bursts with idle spells between them, during
// which a direction gives its buffer back; a refresh message sent after an
// idle spell is taken (the upstream never sees it). Over plain TCP,
// where the client's direction waits for bytes without a buffer, and over
// TLS, where it waits with 16 KiB of its own.
func TestRelaySizes(t *testing.T) {
	sizes := []int{1, 125, 126, idleReadSize - 1, idleReadSize, idleReadSize + 1,
		maxTLSPlaintext - 1, maxTLSPlaintext, maxTLSPlaintext + 1,
		relayBufferSize - 1, relayBufferSize, relayBufferSize + 1, 100_000, 700_000}
	const opts = "refresh_message\n\t\tmax_message_size 1MiB"
	for _, secure := range []bool{false, true} {
		name := map[bool]string{false: "tcp", true: "tls"}[secure]
		t.Run(name, func(t *testing.T) {
			up := newLiveUpstream(t)
			tok, _ := shortToken(t, "alice", time.Hour)
			var c *liveClient
			if secure {
				port := startHTTPSCaddy(t, "h1", opts, up.addr())
				waitCertificate(t, port)
				c = dialLive(t, fmt.Sprintf("wss://127.0.0.1:%d/ws?token=%s", port, tok), func(d *websocket.Dialer) {
					d.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
				})
			} else {
				c = dialLive(t, liveURL(startCaddy(t, site(opts), up.addr()), "/ws", tok))
			}
			rng := rand.New(rand.NewPCG(1, 2))
			var sent []string
			for round := range 3 {
				// A burst: every size at once, then their echoes.
				var burst []string
				for _, n := range sizes {
					msg := make([]byte, n)
					for i := range msg {
						msg[i] = byte(rng.Uint32())
					}
					if err := c.conn.WriteMessage(websocket.BinaryMessage, msg); err != nil {
						t.Fatal(err)
					}
					burst = append(burst, string(msg))
				}
				for i, want := range burst {
					ev := c.next(10 * time.Second)
					if ev.err != nil || ev.typ != websocket.BinaryMessage || ev.data != want {
						t.Fatalf("round %d: echo of the %d-byte message: %s (%d bytes)", round, sizes[i], ev, len(ev.data))
					}
				}
				sent = append(sent, burst...)
				time.Sleep(100 * time.Millisecond) // idle: the buffers go back
				if round == 1 {                    // at most one refresh a second
					fresh, exp := shortToken(t, "alice", 2*time.Hour)
					c.refresh(fresh)
					c.expectRefreshOK(exp.Unix())
				}
			}
			if got := up.messages(); !slices.Equal(got, sent) {
				t.Errorf("the upstream got %d messages, want the %d sent and no refresh message", len(got), len(sent))
				for _, m := range got {
					if strings.Contains(m, "refresh_token") {
						t.Errorf("the upstream got a refresh message")
					}
				}
			}
			c.close()
			waitLiveCount(t, 0)
		})
	}
}

// TestRelayEndsWithEither: the relay's loops end as reverse_proxy's do when
// either side ends: a client whose TCP connection closes while idle ends
// the upstream's connection, and an upstream whose TCP connection closes
// ends the client's stream; nothing stays in the registry.
func TestRelayEndsWithEither(t *testing.T) {
	up := newLiveUpstream(t)
	// An upstream that echoes, and drops its TCP connection at "drop".
	dropper := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			typ, msg, err := conn.ReadMessage()
			if err != nil || string(msg) == "drop" {
				return
			}
			if err := conn.WriteMessage(typ, msg); err != nil {
				return
			}
		}
	}))
	t.Cleanup(dropper.Close)
	tok, _ := shortToken(t, "alice", time.Hour)

	t.Run("client", func(t *testing.T) {
		c := dialLive(t, liveURL(startCaddy(t, site(""), up.addr()), "/ws", tok))
		c.echo("one")
		time.Sleep(50 * time.Millisecond) // idle: the client's direction waits without a buffer
		c.conn.UnderlyingConn().Close()
		if code := up.ended(t); code != websocket.CloseAbnormalClosure {
			t.Errorf("after the client's TCP connection closed, the upstream got %d, want 1006 (no Close frame)", code)
		}
		waitLiveCount(t, 0)
	})
	t.Run("upstream", func(t *testing.T) {
		c := dialLive(t, liveURL(startCaddy(t, site(""), strings.TrimPrefix(dropper.URL, "http://")), "/ws", tok))
		c.echo("two")
		time.Sleep(50 * time.Millisecond) // idle: the upstream's direction waits with its small buffer
		c.send("drop")
		if ev := c.next(5 * time.Second); ev.err == nil {
			t.Errorf("after the upstream dropped its connection, the client read %s, want its end", ev)
		}
		// reverse_proxy half-closes the client's connection and waits for
		// the client to close it, as a browser does at the end of its stream.
		c.conn.Close()
		waitLiveCount(t, 0)
	})
}

// waitCertificate waits until the Caddy on port has the certificate that
// tls internal issues it once it runs.
func waitCertificate(t *testing.T, port int) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var c *tls.Conn
		c, err = tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{InsecureSkipVerify: true})
		if err == nil {
			c.Close()
			return
		}
	}
	t.Fatalf("no TLS handshake with Caddy: %v", err)
}

// tcpPair is two ends of a loopback TCP connection, closed at the end.
func tcpPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	bc := <-accepted
	if bc == nil {
		tb.Fatal("accept failed")
	}
	tb.Cleanup(func() { a.Close(); bc.Close() })
	return a, bc
}

// TestRefreshLargerThanBuffer: with a max_token_size above the relay's
// buffer, a refresh message larger than that buffer is still taken whole
// (the upstream never sees the token), and a text message of that size that
// is not a refresh still reaches the upstream intact.
func TestRefreshLargerThanBuffer(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("refresh_message\n\t\tmax_token_size 96KiB"), up.addr())
	tok, _ := shortToken(t, "alice", time.Hour)
	// One frame a message, as browsers send them (a refresh message is
	// one unfragmented frame).
	c := dialLive(t, liveURL(addr, "/ws", tok), func(d *websocket.Dialer) { d.WriteBufferSize = 256 << 10 })
	c.echo("before")

	big := claims("alice", func(cl jwt.MapClaims) { cl["pad"] = strings.Repeat("p", 2*relayBufferSize) })
	fresh := hs256(t, big)
	if len(fresh) <= relayBufferSize {
		t.Fatalf("the token is %d bytes, not larger than the relay's buffer", len(fresh))
	}
	c.refresh(fresh)
	c.expectRefreshOK(big["exp"].(int64))
	other := `{"type":"chat","text":"` + strings.Repeat("q", relayBufferSize+100) + `"}`
	c.echo(other)
	c.echo("after")
	want := []string{"before", other, "after"}
	if got := up.messages(); !slices.Equal(got, want) {
		t.Errorf("the upstream got %d messages (%.60q...), want the 3 that are not refresh messages", len(got), got)
	}
}

// TestRefreshLargerThanBufferHTTP2: over HTTP/2, reverse_proxy relays the
// stream with its own buffer (stream_buffer_size); a refresh message larger
// than that buffer, with the default max_token_size, is still taken whole,
// never forwarded.
func TestRefreshLargerThanBufferHTTP2(t *testing.T) {
	if !withExtendedConnect(t) {
		return
	}
	up := newLiveUpstream(t)
	port := startHTTPSCaddy(t, "h1 h2", "refresh_message", up.addr()+" {\n\t\tstream_buffer_size 4KiB\n\t}")
	tr := &http2.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}}
	defer tr.CloseIdleConnections()
	waitAnswers(t, tr, port)

	tok, _ := shortToken(t, "alice", time.Hour)
	resp, pw := extendedConnect(t, tr, port, "/ws?token="+tok, false)
	defer pw.Close()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("valid token over HTTP/2: status %d", resp.StatusCode)
	}
	frames := readFrames(resp.Body)
	big := claims("alice", func(cl jwt.MapClaims) { cl["pad"] = strings.Repeat("p", 6000) })
	msg := `{"type":"refresh_token","token":"` + hs256(t, big) + `"}`
	if len(msg) <= 4<<10 {
		t.Fatalf("the refresh message is %d bytes, not larger than the stream's buffer", len(msg))
	}
	if _, err := pw.Write(maskedText(msg)); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`{"type":"refresh_token_ok","exp":%d}`, big["exp"].(int64))
	if f := nextFrame(t, frames, 5*time.Second); f.op != opText || string(f.payload) != want {
		t.Errorf("after a %d-byte refresh message: op %d %.80q, want %s", len(msg), f.op, f.payload, want)
	}
	if _, err := pw.Write(maskedText("after")); err != nil {
		t.Fatal(err)
	}
	if f := nextFrame(t, frames, 5*time.Second); string(f.payload) != "after" {
		t.Errorf("after the refresh: %.80q, want the echo", f.payload)
	}
	if got := up.messages(); !slices.Equal(got, []string{"after"}) {
		t.Errorf("the upstream got %d messages, want only \"after\" (never the refresh message)", len(got))
	}
}

// TestRelayTLSHeldCandidate: over TLS the client's direction reads with 16
// KiB of its own; a text frame (a refresh candidate) cut by the end of that
// read (one record held a 12 KiB message and the start of an 8 KiB one) is
// completed by the next, and both reach the upstream intact and in order.
func TestRelayTLSHeldCandidate(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	serverConfig := srv.TLS.Clone()
	srv.Close()
	rawClient, rawFront := tcpPair(t)
	client := tls.Client(rawClient, &tls.Config{InsecureSkipVerify: true})
	front := tls.Server(rawFront, serverConfig)
	back, upstream := tcpPair(t)
	c := &liveConn{h: allRules(t), conn: front, src: front, dst: front}
	go func() { _, _ = (*watchedConn)(c).WriteTo(back) }()

	bin := clientFrame(true, opBinary, bytes.Repeat([]byte{7}, 12<<10), testMask, 0)
	text := clientFrame(true, opText, []byte(`{"type":"chat","text":"`+strings.Repeat("t", 8<<10)+`"}`), testMask, 0)
	sent := append(append([]byte(nil), bin...), text...)
	go func() { _, _ = client.Write(sent) }() // records of 16 KiB, then the rest
	got := make([]byte, len(sent))
	_ = upstream.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(upstream, got); err != nil {
		t.Fatalf("the upstream got %v", err)
	}
	if !bytes.Equal(got, sent) {
		t.Error("the upstream got other bytes than the two frames sent")
	}
}
