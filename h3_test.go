package wsauth

import (
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/quic-go/quic-go/http3"

	"github.com/caddyserver/caddy/v2"
)

// TestHTTP3WebSocket: a WebSocket over HTTP/3 (RFC 9220, an extended
// CONNECT without Upgrade headers, which reverse_proxy turns into an
// upgrade) is authenticated like any other, also with upgrades_only, and
// refused with a Close frame on its stream.
func TestHTTP3WebSocket(t *testing.T) {
	up := newUpstream(t)
	caddyMu.Lock()
	defer caddyMu.Unlock()
	port := freePort(t)
	cfg := fmt.Sprintf(`{
	admin off
	persist_config off
	storage file_system %s
	local_certs
	skip_install_trust
	auto_https disable_redirects
	https_port %d
}

https://127.0.0.1:%d {
	tls internal
	route /only/* {
		ws_auth {
			secret %s
			upgrades_only
		}
		reverse_proxy %s {
			header_up X-User {http.auth.user.id}
		}
	}
	route /status/* {
		ws_auth {
			secret %s
			reject status
		}
		reverse_proxy %s
	}
	route /first/* {
		ws_auth {
			secret %s
			token_source first_message
		}
		reverse_proxy %s {
			header_up X-User {http.auth.user.id}
		}
	}
}`, t.TempDir(), port, port, testSecret, up.addr(), testSecret, up.addr(), testSecret, up.addr())
	if err := loadCaddyfile(cfg); err != nil {
		t.Fatal(err)
	}
	defer caddy.Stop()

	tr := &http3.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h3"}}}
	defer tr.Close()
	// Wait until the HTTP/3 listener answers.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		u, _ := url.Parse(fmt.Sprintf("https://127.0.0.1:%d/", port))
		resp, err := tr.RoundTrip(&http.Request{Method: http.MethodGet, URL: u, Host: u.Host, Header: http.Header{}})
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("HTTP/3 listener: %v", err)
		}
	}
	connect := func(path string) (*http.Response, *io.PipeWriter) {
		t.Helper()
		pr, pw := io.Pipe()
		u, _ := url.Parse(fmt.Sprintf("https://127.0.0.1:%d%s", port, path))
		req := &http.Request{Method: http.MethodConnect, Proto: "websocket", URL: u, Host: u.Host,
			Header: http.Header{"Sec-Websocket-Version": {"13"}}, Body: pr}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("HTTP/3 CONNECT %s: %v", path, err)
		}
		return resp, pw
	}
	// readFrame reads one unmasked server frame: opcode and payload.
	readFrame := func(r io.Reader) (byte, []byte) {
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
	closeOf := func(path string) string {
		resp, pw := connect(path)
		defer pw.Close()
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Sprintf("status %d", resp.StatusCode)
		}
		op, p := readFrame(resp.Body)
		if op != opClose || len(p) < 2 {
			return fmt.Sprintf("frame op %d % x", op, p)
		}
		return fmt.Sprintf("close %d %s", binary.BigEndian.Uint16(p), p[2:])
	}

	if got := closeOf("/only/ws"); got != "close 1008 missing" {
		t.Errorf("upgrades_only, HTTP/3 WebSocket without a token: %s", got)
	}
	expired := hs256(t, claims("alice", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Minute).Unix() }))
	if got := closeOf("/only/ws?token=" + expired); got != "close 4001 expired" {
		t.Errorf("expired token over HTTP/3: %s", got)
	}
	if got := closeOf("/status/ws"); got != "status 401" {
		t.Errorf("reject status over HTTP/3: %s", got)
	}
	if n := len(up.requests()); n != 0 {
		t.Fatalf("refused HTTP/3 WebSockets reached the upstream %d times", n)
	}

	// Accepted: the upstream gets an upgrade with the user, and echoes.
	resp, pw := connect("/only/ws?token=" + hs256(t, claims("alice")))
	defer pw.Close()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("valid token over HTTP/3: status %d", resp.StatusCode)
	}
	if _, err := pw.Write([]byte{0x81, 0x82, 1, 2, 3, 4, 'h' ^ 1, 'i' ^ 2}); err != nil {
		t.Fatal(err)
	}
	if op, p := readFrame(resp.Body); op != opText || string(p) != "hi" {
		t.Errorf("echo over HTTP/3: op %d %q", op, p)
	}
	if r := up.requests(); len(r) != 1 || r[0].Header.Get("X-User") != "alice" {
		t.Errorf("upstream requests %v, want one with X-User alice", r)
	}

	closeAndDrain(t, pw, resp.Body)

	// first_message over HTTP/3: the module answers the CONNECT, reads the
	// auth message from the stream, and hands the stream to reverse_proxy.
	resp, pw = connect("/first/ws")
	defer pw.Close()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("first_message over HTTP/3: status %d", resp.StatusCode)
	}
	// The auth message and the first app message at once.
	auth := maskedText(`{"type":"auth","token":"` + hs256(t, claims("bob")) + `"}`)
	if _, err := pw.Write(append(auth, maskedText("hello")...)); err != nil {
		t.Fatal(err)
	}
	if op, p := readFrame(resp.Body); op != opText || string(p) != "hello" {
		t.Errorf("first_message echo over HTTP/3: op %d %q", op, p)
	}
	if r := up.requests(); len(r) != 2 || r[1].Header.Get("X-User") != "bob" {
		t.Errorf("upstream requests %v, want a second one with X-User bob", r)
	}
	closeAndDrain(t, pw, resp.Body)

	resp, pw = connect("/first/ws")
	defer pw.Close()
	defer resp.Body.Close()
	if _, err := pw.Write(maskedText(`{"type":"auth","token":"` + hs256(t, claims("bob")) + `x"}`)); err != nil {
		t.Fatal(err)
	}
	if op, p := readFrame(resp.Body); op != opClose || len(p) < 2 || binary.BigEndian.Uint16(p) != 1008 {
		t.Errorf("first_message over HTTP/3 with a forged token: op %d % x, want close 1008", op, p)
	}
	if n := len(up.requests()); n != 2 {
		t.Errorf("a forged first-message token reached the upstream (%d requests)", n)
	}
}

// maskedText is a client text frame (masked, as RFC 6455 requires) holding
// s, at most 64 KiB.
func maskedText(s string) []byte {
	mask := [4]byte{1, 2, 3, 4}
	b := []byte{0x81}
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

// closeAndDrain closes a WebSocket over an HTTP/3 stream and waits for the
// stream to end, so that the tunnel is gone before Caddy stops (its
// reverse_proxy cleanup of a live HTTP/3 tunnel races with the tunnel's
// own writes).
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
		t.Fatal("the HTTP/3 WebSocket stream did not end after the Close handshake")
	}
}
