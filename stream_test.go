package wsauth

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"
)

// Helpers for WebSockets over HTTP/2 and HTTP/3 (extended CONNECT), as the
// HTTP/2 and HTTP/3 tests drive them.

// waitAnswers waits until rt gets an answer from the HTTPS site on port:
// the site's certificate is made when the config loads.
func waitAnswers(t *testing.T, rt http.RoundTripper, port int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		u, _ := url.Parse(fmt.Sprintf("https://127.0.0.1:%d/", port))
		resp, err := rt.RoundTrip(&http.Request{Method: http.MethodGet, URL: u, Host: u.Host, Header: http.Header{}})
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the site on port %d does not answer: %v", port, err)
		}
	}
}

// extendedConnect opens a WebSocket to path with an extended CONNECT: over
// HTTP/3 (RFC 9220) when h3, else over HTTP/2 (RFC 8441). The client's
// frames are written to the pipe.
func extendedConnect(t *testing.T, rt http.RoundTripper, port int, path string, h3 bool) (*http.Response, *io.PipeWriter) {
	t.Helper()
	pr, pw := io.Pipe()
	u, _ := url.Parse(fmt.Sprintf("https://127.0.0.1:%d%s", port, path))
	req := &http.Request{Method: http.MethodConnect, URL: u, Host: u.Host, Body: pr,
		Header: http.Header{"Sec-Websocket-Version": {"13"}}}
	if h3 {
		req.Proto = "websocket"
	} else {
		req.Header.Set(":protocol", "websocket")
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("extended CONNECT %s: %v", path, err)
	}
	return resp, pw
}

// readServerFrame reads one unmasked server frame: opcode and payload.
func readServerFrame(t *testing.T, r io.Reader) (byte, []byte) {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	p := make([]byte, h[1]&0x7f)
	if _, err := io.ReadFull(r, p); err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	return h[0] & 0x0f, p
}

// maskedText is a client text frame (masked, as RFC 6455 requires) holding
// s, at most 64 KiB.
func maskedText(s string) []byte { return maskedFrame(opText, s) }

// maskedFrame is a client frame of opcode op holding s, at most 64 KiB.
func maskedFrame(op byte, s string) []byte {
	mask := [4]byte{1, 2, 3, 4}
	b := []byte{0x80 | op}
	if len(s) < 126 {
		b = append(b, 0x80|byte(len(s)))
	} else {
		b = append(b, 0x80|126, byte(len(s)>>8), byte(len(s)))
	}
	b = append(b, mask[:]...)
	for i := 0; i < len(s); i++ {
		b = append(b, s[i]^mask[i&3])
	}
	return b
}

// closeAndDrain closes a WebSocket over an extended CONNECT stream and
// waits for the stream to end, so that the tunnel is gone before Caddy
// stops (its reverse_proxy cleanup of a live tunnel races with the
// tunnel's own writes).
func closeAndDrain(t *testing.T, pw *io.PipeWriter, body io.Reader) {
	t.Helper()
	if _, err := pw.Write([]byte{0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2}); err != nil {
		t.Fatal(err)
	}
	drained := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, body)
		drained <- err
	}()
	select {
	case <-drained:
	case <-time.After(10 * time.Second):
		t.Fatal("the WebSocket stream did not end after the Close handshake")
	}
}

// checkFirstMessageOverStream runs first_message over an extended CONNECT
// at path: a valid auth message opens the tunnel (the echo of a message
// sent with it comes back, the upstream learns the user), a forged one is
// closed with 1008 on the stream and reaches nobody.
func checkFirstMessageOverStream(t *testing.T, rt http.RoundTripper, port int, path string, h3 bool, up *upstream) {
	t.Helper()
	before := len(up.requests())
	resp, pw := extendedConnect(t, rt, port, path, h3)
	defer pw.Close()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("first_message: status %d", resp.StatusCode)
	}
	// The auth message and the first app message at once.
	auth := maskedText(`{"type":"auth","token":"` + hs256(t, claims("carol")) + `"}`)
	if _, err := pw.Write(append(auth, maskedText("hello")...)); err != nil {
		t.Fatal(err)
	}
	if op, p := readServerFrame(t, resp.Body); op != opText || string(p) != "hello" {
		t.Errorf("first_message echo: op %d %q", op, p)
	}
	if r := up.requests(); len(r) != before+1 || r[before].Header.Get("X-User") != "carol" {
		t.Errorf("upstream requests %v, want one more with X-User carol", r)
	}
	closeAndDrain(t, pw, resp.Body)

	resp, pw = extendedConnect(t, rt, port, path, h3)
	defer pw.Close()
	defer resp.Body.Close()
	if _, err := pw.Write(maskedText(`{"type":"auth","token":"` + hs256(t, claims("carol")) + `x"}`)); err != nil {
		t.Fatal(err)
	}
	if got := closeFrame(readServerFrame(t, resp.Body)); got != "close 1008 invalid" {
		t.Errorf("forged first-message token: %s, want close 1008 invalid", got)
	}
	if n := len(up.requests()); n != before+1 {
		t.Errorf("a forged first-message token reached the upstream (%d requests)", n-before-1)
	}

	// A silent client: the stream's read deadline (through Caddy's
	// response writer) ends the wait after the timeout (1s in the tests'
	// configs), so it holds no pending slot for longer.
	resp, pw = extendedConnect(t, rt, port, path, h3)
	defer pw.Close()
	defer resp.Body.Close()
	if got := closeFrame(readServerFrame(t, resp.Body)); got != "close 1008 missing" {
		t.Errorf("silent first-message client: %s, want close 1008 missing", got)
	}
}

// closeFrame describes a server frame as outcome does: "close <code>
// <reason>", or what else it was.
func closeFrame(op byte, p []byte) string {
	if op != opClose || len(p) < 2 {
		return fmt.Sprintf("frame op %d % x", op, p)
	}
	return fmt.Sprintf("close %d %s", int(p[0])<<8|int(p[1]), p[2:])
}
